//! The OpenAI-compatible endpoint on loopback: a plain and a streamed (SSE) chat completion
//! about an image given as a `data:` URL, a whole conversation (system prompt, earlier turns,
//! the image in any user message) answered as the model's chat template lays it out, and clear
//! 4xx answers for what it cannot do.

mod common;

use base64::Engine as _;
use common::{fixtures, htc, s, tmp};
use htc_worker::server::{serve_on, App, ServeArgs};
use serde_json::json;

/// An untrained HTC checkpoint from the tiny LLaVA, with a word-level tokenizer (`w0`..`w127`),
/// in a folder of its own (`name`: tests run in parallel and the server maps the weights).
fn checkpoint(name: &str) -> std::path::PathBuf {
    let out = tmp("openai", name);
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
    let dir = checkpoint("plain");
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
    assert!(body.contains("no user message has an image_url part"), "{body}");
    let (status, body) = post(addr, &json!({"messages": "nope"})).await;
    assert_eq!(status, 400);
    assert!(body.contains("malformed request"), "{body}");
    let image = |text: &str, url: &str| json!([{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]);
    let other = {
        let mut png = Vec::new();
        image::RgbImage::from_pixel(16, 16, image::Rgb([200, 30, 30]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png))
    };
    for (messages, needle) in [
        (
            json!([{"role": "user", "content": image("w5", &url)}, {"role": "assistant", "content": "w6"}]),
            "must end with a user message",
        ),
        (
            json!([{"role": "user", "content": image("w5", &url)}, {"role": "user", "content": image("w6", &other)}]),
            "a second, different image",
        ),
        (
            json!([{"role": "tool", "content": "x"}, {"role": "user", "content": image("w5", &url)}]),
            "role `tool` is not supported",
        ),
        (
            json!([{"role": "user", "content": image("w5", &url)}, {"role": "assistant", "content": null},
                {"role": "user", "content": "w6"}]),
            "tool calls are not supported",
        ),
        (
            json!([{"role": "user", "content": "w5"}, {"role": "system", "content": "late"},
                {"role": "user", "content": image("w6", &url)}]),
            "system message may only come before",
        ),
        (
            json!([{"role": "user", "content": image("w5", &url)}, {"role": "assistant", "content": image("w6", &url)},
                {"role": "user", "content": "w7"}]),
            "only user messages may carry an image",
        ),
        (
            json!([{"role": "user", "content": image(&"w5 ".repeat(2000), &url)}]),
            "characters of text, more than",
        ),
    ] {
        let (status, body) = post(addr, &json!({"messages": messages})).await;
        assert_eq!(status, 400, "{messages}: {body}");
        assert!(body.contains(needle), "{needle:?} not in {body}");
    }

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

/// A whole conversation reaches the model: system prompt, earlier turns and the question, with
/// the image in a later user message, gives the answer the WebSocket protocol gives for the
/// token ids the model's chat template lays out for that conversation (the layout training
/// uses; see the unit test beside `Chat`), and usage counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_conversation_is_answered() {
    use common::ws::{recv, send};
    use futures_util::SinkExt;
    use htc_shared::protocol::{encode_binary, BinaryKind, ServerMessage};
    use htc_worker::text::Chat;
    use tokio_tungstenite::tungstenite::Message;

    let dir = checkpoint("conversation");
    let snap = htc_worker::formats::checkpoint::Snapshot::<htc_worker::backend::Backend>::open(
        &dir,
        &Default::default(),
    )
    .unwrap();
    let tok = snap.tokenizer.as_ref().unwrap();
    let mut args = ServeArgs::local(std::env::temp_dir());
    args.model = Some(dir.clone());
    let app = tokio::task::spawn_blocking(move || App::new(args)).await.unwrap().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { serve_on(listener, app, std::future::pending()).await.unwrap() });
    let url = data_url();

    let messages = json!([
        {"role": "system", "content": "w9 w10"},
        {"role": "user", "content": "w5 w6"},
        {"role": "assistant", "content": "w7 w8"},
        {"role": "user", "content": [{"type": "text", "text": "w11 w12"}, {"type": "image_url", "image_url": {"url": url}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "w13"}]},
        {"role": "user", "content": [{"type": "text", "text": "w14"}, {"type": "image_url", "image_url": {"url": url}}]},
    ]);
    let (status, body) = post(addr, &json!({"max_tokens": 6, "messages": messages})).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();

    let chat = Chat {
        system: Some("w9 w10".into()),
        exchanges: vec![("w5 w6".into(), "w7 w8".into()), ("w11 w12".into(), "w13".into())],
        question: "w14".into(),
    };
    let ids = tok.chat_ids(&chat).unwrap();
    let alone = tok.chat_ids(&Chat { exchanges: Vec::new(), ..chat.clone() }).unwrap();
    assert!(ids.len() > alone.len() + 8, "the history is in the prompt: {ids:?} vs {alone:?}");
    // BOS and the one <voco> token are what is kept of the image.
    assert_eq!(v["usage"]["prompt_tokens"].as_u64(), Some(2 + ids.len() as u64), "{v}");
    let n = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(v["usage"]["total_tokens"].as_u64(), Some(2 + ids.len() as u64 + n));

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap();
    send(&mut ws, json!({"type": "hello", "version": 1})).await;
    assert!(matches!(recv(&mut ws).await, ServerMessage::Ready { .. }));
    let png = std::fs::read(fixtures().join("images/gradient-45x30.png")).unwrap();
    send(&mut ws, json!({"type": "image", "request_id": 1, "image_id": "img", "byte_len": png.len()})).await;
    ws.send(Message::Binary(encode_binary(BinaryKind::ImageBytes, 1, &png).into())).await.unwrap();
    send(
        &mut ws,
        json!({"type": "ask", "request_id": 2, "image_id": "img", "prompt_ids": ids, "max_new_tokens": 6}),
    )
    .await;
    let mut text = String::new();
    loop {
        match recv(&mut ws).await {
            ServerMessage::Token { request_id: 2, text: t, .. } => text.push_str(&t),
            ServerMessage::Done { request_id: 2, cached, prompt_tokens, .. } => {
                assert!(cached, "the conversation's image was compressed once, by the first request");
                assert_eq!(prompt_tokens, 2 + ids.len());
                break;
            }
            m @ ServerMessage::Error { .. } => panic!("{m:?}"),
            _ => {}
        }
    }
    assert_eq!(text, content, "the endpoint answers the conversation the template lays out");
}
