//! The OpenAI-compatible endpoint on loopback: a plain and a streamed (SSE) chat completion
//! about an image given as a `data:` URL, and clear 4xx answers for what it cannot do.

mod common;

use base64::Engine as _;
use common::{fixtures, htc, s, tmp};
use htc_worker::server::{serve_on, App, ServeArgs};
use serde_json::json;

/// An untrained HTC checkpoint from the tiny LLaVA, with a word-level tokenizer (`w0`..`w127`).
fn checkpoint() -> std::path::PathBuf {
    let out = tmp("openai", "ckpt");
    let mgvq = fixtures().join("mgvq-tiny/model.safetensors");
    let mcfg = fixtures().join("mgvq-tiny/config.json");
    let r = htc(&[
        "init",
        "--llava",
        s(&fixtures().join("llava-hf-tiny")),
        "--mgvq",
        s(&mgvq),
        "--mgvq-config",
        s(&mcfg),
        "--out",
        s(&out),
        "--discrete-hidden",
        "32",
        "--dtype",
        "f32",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), json!(0));
    vocab.insert("<s>".into(), json!(1));
    vocab.insert("</s>".into(), json!(2));
    for i in 3..128 {
        vocab.insert(format!("w{i}"), json!(i));
    }
    let tok = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}});
    std::fs::write(out.join("tokenizer.json"), tok.to_string()).unwrap();
    out
}

async fn post(addr: std::net::SocketAddr, body: &serde_json::Value) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.to_string();
    let mut st = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    st.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    st.read_to_string(&mut buf).await.unwrap();
    let status = buf[9..12].parse().unwrap();
    let body = buf.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    (status, body)
}

fn data_url() -> String {
    let png = std::fs::read(fixtures().join("images/gradient-45x30.png")).unwrap();
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png))
}

fn request(stream: bool, url: &str) -> serde_json::Value {
    json!({"model": "htc", "stream": stream, "max_tokens": 4, "messages": [
        {"role": "system", "content": "ignored"},
        {"role": "user", "content": [{"type": "text", "text": "w5 w6 w7"}, {"type": "image_url", "image_url": {"url": url}}]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_plain_and_streamed() {
    let dir = checkpoint();
    let mut args = ServeArgs::local(std::env::temp_dir());
    args.model = Some(dir);
    let app = tokio::task::spawn_blocking(move || App::new(args)).await.unwrap().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { serve_on(listener, app, std::future::pending()).await.unwrap() });
    let url = data_url();

    let (status, body) = post(addr, &request(false, &url)).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    let n = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=4).contains(&n), "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.split_whitespace().all(|w| w.starts_with('w') || w.starts_with('<')), "{content}");

    let (status, body) = post(addr, &request(true, &url)).await;
    assert_eq!(status, 200, "{body}");
    let chunks: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(chunks.last(), Some(&"[DONE]"), "{body}");
    let streamed: String = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| serde_json::from_str::<serde_json::Value>(c).unwrap())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(streamed, content, "streamed and plain greedy answers agree");

    let (status, body) = post(addr, &request(false, "https://example.com/cat.png")).await;
    assert_eq!(status, 400);
    assert!(body.contains("only base64 `data:` image URLs"), "{body}");
    let (status, body) =
        post(addr, &json!({"messages": [{"role": "user", "content": "no image here"}]})).await;
    assert_eq!(status, 400);
    assert!(body.contains("no image_url part"), "{body}");
    let (status, body) = post(addr, &json!({"messages": "nope"})).await;
    assert_eq!(status, 400);
    assert!(body.contains("malformed request"), "{body}");

    // A streaming client that goes away cancels its answer.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut long = request(true, &url);
        long["max_tokens"] = json!(4000);
        let body = long.to_string();
        let mut st = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        st.write_all(req.as_bytes()).await.unwrap();
        let mut buf = [0u8; 512];
        let n = st.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let m = common::http::http_get(addr, "/metrics").await;
        if m.lines().any(|l| l == "htc_cancelled_total 1") {
            return;
        }
    }
    panic!(
        "the streamed answer was not cancelled after the client left: {}",
        common::http::http_get(addr, "/metrics")
            .await
            .lines()
            .filter(|l| l.starts_with("htc_"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
}
