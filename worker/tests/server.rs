//! The WebSocket server on loopback with a real tokio-tungstenite client and the demo HTC
//! model: a full exchange, a cached follow-up, cancel, busy, auth and Origin refusal, and an
//! error frame for each kind of bad input, with the connection and the server staying up.

mod common;

use common::ws::{recv, send, Ws};

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use htc_shared::protocol::{encode_binary, BinaryKind, ErrorCode, ServerMessage};
use htc_worker::server::{serve_on, App, ServeArgs};
use serde_json::json;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

async fn start(tweak: impl FnOnce(&mut ServeArgs)) -> std::net::SocketAddr {
    common::ws::serve(tweak).await
}

async fn connect(
    addr: std::net::SocketAddr, headers: &[(&str, &str)], query: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{addr}/ws{query}").into_client_request().unwrap();
    for (k, v) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws)
}

async fn hello(ws: &mut Ws) {
    send(ws, json!({"type": "hello", "version": 1})).await;
    assert!(matches!(recv(ws).await, ServerMessage::Ready { version: 1, .. }));
}

fn png() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/images/gradient-45x30.png")).unwrap()
}

async fn upload(ws: &mut Ws, rid: u32, id: &str, bytes: &[u8]) {
    send(ws, json!({"type": "image", "request_id": rid, "image_id": id, "byte_len": bytes.len()})).await;
    ws.send(Message::Binary(encode_binary(BinaryKind::ImageBytes, rid, bytes).into())).await.unwrap();
}

/// Collects an answer: token ids, whether attention came, and the `done` message.
async fn answer(ws: &mut Ws, rid: u32) -> (Vec<u32>, Option<usize>, ServerMessage) {
    let mut ids = vec![];
    let mut attention = None;
    loop {
        match recv(ws).await {
            ServerMessage::Token { request_id, id, .. } if request_id == rid => ids.push(id),
            ServerMessage::Attention { request_id, layers, n_discrete, n_visual } if request_id == rid => {
                assert_eq!(layers[0].len(), n_discrete + n_visual);
                attention = Some(layers.len());
            }
            m @ ServerMessage::Done { request_id, .. } if request_id == rid => return (ids, attention, m),
            m @ ServerMessage::Error { .. } => panic!("unexpected error {m:?}"),
            _ => {}
        }
    }
}

async fn expect_error(ws: &mut Ws, code: ErrorCode, needle: &str) {
    match recv(ws).await {
        ServerMessage::Error { code: c, message, .. } => {
            assert_eq!(c, code, "{message}");
            assert!(message.contains(needle), "`{needle}` not in `{message}`");
        }
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_exchange_then_a_cached_follow_up() {
    let addr = start(|_| {}).await;
    let mut ws = connect(addr, &[], "").await.unwrap();
    hello(&mut ws).await;
    upload(&mut ws, 1, "img", &png()).await;
    send(&mut ws, json!({"type": "ask", "request_id": 2, "image_id": "img", "prompt_ids": [5, 6, 7], "max_new_tokens": 6})).await;
    let (first, att, done) = answer(&mut ws, 2).await;
    assert_eq!(att, Some(2), "one attention row per layer");
    let ServerMessage::Done { cached, tokens, timings, .. } = done else { unreachable!() };
    assert!(!cached);
    assert_eq!(tokens, first.len());
    assert!(timings.compress_ms > 0.0 && timings.total_ms >= timings.first_token_ms);
    // Same image again: no ViT, MGVQ or compression, and the same greedy answer.
    send(&mut ws, json!({"type": "ask", "request_id": 3, "image_id": "img", "prompt_ids": [5, 6, 7], "max_new_tokens": 6})).await;
    let (second, _, done) = answer(&mut ws, 3).await;
    let ServerMessage::Done { cached, timings, .. } = done else { unreachable!() };
    assert!(cached, "follow-up must hit the compressed-image cache");
    assert_eq!(timings.compress_ms, 0.0);
    assert_eq!(first, second);
    // The same bytes under another id, on another connection, also hit the cache.
    let mut ws2 = connect(addr, &[], "").await.unwrap();
    hello(&mut ws2).await;
    upload(&mut ws2, 1, "again", &png()).await;
    let m = common::http::http_get(addr, "/metrics").await;
    assert!(m.contains("htc_cache_hits_total 1") && m.contains("htc_compressions_total 1"), "{m}");
    assert!(m.contains("htc_open_connections 2"), "{m}");
    send(&mut ws2, json!({"type": "ask", "request_id": 9, "image_id": "again", "prompt_ids": [5, 6, 7], "max_new_tokens": 6})).await;
    let (third, _, done) = answer(&mut ws2, 9).await;
    assert!(matches!(done, ServerMessage::Done { cached: true, .. }));
    assert_eq!(third, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_an_answer_and_a_full_queue_says_busy() {
    // One answer decoding at a time and one waiting: the rest must be refused, not stall.
    let addr = start(|a| {
        a.queue = 1;
        a.max_batch = 1;
        a.max_inflight_per_connection = 8;
    })
    .await;
    let mut ws = connect(addr, &[], "").await.unwrap();
    hello(&mut ws).await;
    upload(&mut ws, 1, "img", &png()).await;
    for rid in 10..18 {
        send(&mut ws, json!({"type": "ask", "request_id": rid, "image_id": "img", "prompt_ids": [5], "max_new_tokens": 4000})).await;
    }
    // What an autoscaler watches: one answer decoding, one question waiting. (Whether one of
    // the eight waits depends on how soon the engine took the first; once it decodes, one more
    // question either waits or is refused because one already does.)
    let gauges = |want: &'static str| async move {
        let mut got = String::new();
        for _ in 0..400 {
            let m = common::http::http_get(addr, "/metrics").await;
            got = m
                .lines()
                .filter(|l| l.starts_with("htc_queue_depth ") || l.starts_with("htc_active_answers "))
                .collect::<Vec<_>>()
                .join(",");
            if got.starts_with(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("gauges read {got}, never {want}");
    };
    gauges("htc_active_answers 1,").await;
    send(&mut ws, json!({"type": "ask", "request_id": 18, "image_id": "img", "prompt_ids": [5], "max_new_tokens": 4000})).await;
    gauges("htc_active_answers 1,htc_queue_depth 1").await;
    for rid in 10..19 {
        send(&mut ws, json!({"type": "cancel", "request_id": rid})).await;
    }
    let (mut busy, mut done) = (0, vec![]);
    while done.len() + busy < 9 {
        match recv(&mut ws).await {
            ServerMessage::Error { code: ErrorCode::Busy, .. } => busy += 1,
            ServerMessage::Done { request_id, tokens, cancelled, .. } => {
                assert!(cancelled && tokens < 4000, "request {request_id} ran {tokens} tokens");
                done.push(request_id);
            }
            _ => {}
        }
    }
    assert!(busy >= 1, "one answer decoding and one queued: some of 9 questions must be refused");
    assert!(done.contains(&10), "the first question is accepted and then cancelled");
    gauges("htc_active_answers 0,htc_queue_depth 0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_origin_are_checked_at_the_handshake() {
    let addr = start(|a| {
        a.auth_token = Some("s3cret".into());
        a.allow_origins = vec!["https://good.example".into()];
    })
    .await;
    let e = connect(addr, &[], "").await.unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
    let e = connect(addr, &[("Authorization", "Bearer wrong")], "").await.unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
    let e = connect(addr, &[("Authorization", "Bearer s3cret"), ("Origin", "https://evil.example")], "")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
    let mut ws = connect(addr, &[("Origin", "https://good.example")], "?token=s3cret").await.unwrap();
    hello(&mut ws).await;
    let mut ws = connect(addr, &[("Authorization", "Bearer s3cret")], "").await.unwrap();
    hello(&mut ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_an_error_frame_and_the_connection_stays_up() {
    let addr = start(|a| a.max_frame_bytes = 64 * 1024).await;
    let mut ws = connect(addr, &[], "").await.unwrap();
    ws.send(Message::Text("{not json".into())).await.unwrap();
    expect_error(&mut ws, ErrorCode::BadJson, "malformed JSON").await;
    send(&mut ws, json!({"type": "ask", "request_id": 1, "image_id": "x", "prompt_ids": [1]})).await;
    expect_error(&mut ws, ErrorCode::NotReady, "hello").await;
    send(&mut ws, json!({"type": "hello", "version": 99})).await;
    expect_error(&mut ws, ErrorCode::WrongVersion, "version 99").await;
    hello(&mut ws).await;
    send(&mut ws, json!({"type": "teleport"})).await;
    expect_error(&mut ws, ErrorCode::UnknownMessage, "teleport").await;
    send(&mut ws, json!({"type": "ask", "request_id": 2, "image_id": "nope", "prompt_ids": [1]})).await;
    expect_error(&mut ws, ErrorCode::UnknownImage, "nope").await;
    upload(&mut ws, 3, "bad", b"\x89PNG\r\n\x1a\nnot a png at all").await;
    expect_error(&mut ws, ErrorCode::BadImage, "corrupt").await;
    // Codes: wrong shape, then out of range.
    send(&mut ws, json!({"type": "image", "request_id": 4, "image_id": "c", "byte_len": 10, "codes": {"positions": 3, "groups": 8}})).await;
    expect_error(&mut ws, ErrorCode::BadCodes, "does not match").await;
    let p = png();
    send(&mut ws, json!({"type": "image", "request_id": 5, "image_id": "c", "byte_len": p.len(), "codes": {"positions": 441, "groups": 8}})).await;
    ws.send(Message::Binary(encode_binary(BinaryKind::ImageBytes, 5, &p).into())).await.unwrap();
    let codes: Vec<u8> = (0..441 * 8).flat_map(|i| if i == 17 { 5000u16 } else { 0 }.to_le_bytes()).collect();
    ws.send(Message::Binary(encode_binary(BinaryKind::Codes, 5, &codes).into())).await.unwrap();
    expect_error(&mut ws, ErrorCode::BadCodes, "out of range").await;
    // In-range codes that are not the image's are used as sent (by default nothing checks
    // them): they shape only this client's compression (see `client_codes_*` below).
    send(&mut ws, json!({"type": "image", "request_id": 6, "image_id": "c", "byte_len": p.len(), "codes": {"positions": 441, "groups": 8}})).await;
    ws.send(Message::Binary(encode_binary(BinaryKind::ImageBytes, 6, &p).into())).await.unwrap();
    ws.send(Message::Binary(encode_binary(BinaryKind::Codes, 6, &vec![0u8; 441 * 8 * 2]).into()))
        .await
        .unwrap();
    send(
        &mut ws,
        json!({"type": "ask", "request_id": 7, "image_id": "c", "prompt_ids": [1], "max_new_tokens": 2}),
    )
    .await;
    let (ids, _, _) = answer(&mut ws, 7).await;
    assert!(!ids.is_empty());
    // Oversized frame, bad binary header, a question without a tokenizer, bad sampling.
    ws.send(Message::Binary(vec![1u8; 100 * 1024].into())).await.unwrap();
    expect_error(&mut ws, ErrorCode::FrameTooLarge, "exceeds the limit").await;
    ws.send(Message::Binary(vec![7u8, 0, 0].into())).await.unwrap();
    expect_error(&mut ws, ErrorCode::BadFrame, "shorter than its 5-byte header").await;
    upload(&mut ws, 8, "ok", &p).await;
    send(&mut ws, json!({"type": "ask", "request_id": 9, "image_id": "ok", "question": "what is it?"})).await;
    expect_error(&mut ws, ErrorCode::BadRequest, "no tokenizer").await;
    send(
        &mut ws,
        json!({"type": "ask", "request_id": 10, "image_id": "ok", "prompt_ids": [1], "top_p": 0.0}),
    )
    .await;
    expect_error(&mut ws, ErrorCode::BadRequest, "top_p").await;
    send(&mut ws, json!({"type": "ask", "request_id": 11, "image_id": "ok", "prompt_ids": [100000]})).await;
    expect_error(&mut ws, ErrorCode::BadRequest, "token ids below").await;
    // Still up: the same connection answers, and so does a new one.
    send(
        &mut ws,
        json!({"type": "ask", "request_id": 12, "image_id": "ok", "prompt_ids": [5], "max_new_tokens": 2}),
    )
    .await;
    let (ids, _, _) = answer(&mut ws, 12).await;
    assert_eq!(ids.len(), 2);
    let mut ws2 = connect(addr, &[], "").await.unwrap();
    hello(&mut ws2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_answers_then_closes() {
    let args = ServeArgs::local(std::env::temp_dir());
    let app = tokio::task::spawn_blocking(move || App::new(args)).await.unwrap().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        serve_on(listener, app, async {
            stop_rx.await.ok();
        })
        .await
    });
    // Wait for the first token, then ask the server to stop.
    let mut ws = long_answer_started(addr, 300).await;
    stop_tx.send(()).unwrap();
    let mut tokens = 1;
    let done = loop {
        match recv(&mut ws).await {
            ServerMessage::Token { .. } => tokens += 1,
            m @ ServerMessage::Done { .. } => break m,
            _ => {}
        }
    };
    let ServerMessage::Done { cancelled, tokens: n, .. } = done else { unreachable!() };
    assert!(!cancelled, "shutdown must drain, not cancel");
    assert_eq!(n, tokens);
    // The drained connection closes and the server exits.
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(rest.is_ok(), "connection closes after draining");
    tokio::time::timeout(Duration::from_secs(30), server).await.expect("server exits").unwrap().unwrap();
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_frees_its_work_at_once() {
    let addr = start(|_| {}).await;
    let ws = long_answer_started(addr, 4000).await;
    drop(ws);
    // The answer is cancelled (not finished) and generation stops.
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let m = common::http::http_get(addr, "/metrics").await;
        if metric(&m, "htc_cancelled_total ") == 1.0 {
            let a = metric(&m, "htc_generated_tokens_total ");
            tokio::time::sleep(Duration::from_millis(300)).await;
            let b = metric(&common::http::http_get(addr, "/metrics").await, "htc_generated_tokens_total ");
            assert_eq!(a, b, "tokens still being generated after the disconnect");
            assert!(a < 4000.0, "{a}");
            return;
        }
    }
    panic!("generation did not stop after the disconnect");
}

/// Uploads the test image as `id` with `codes` (none: the worker encodes it) and asks about it;
/// returns whether the compressed image came from the cache, and the answer's ids.
async fn ask_with_codes(ws: &mut Ws, rid: u32, id: &str, codes: Option<&[u16]>) -> (bool, Vec<u32>) {
    let p = png();
    let mut frame = json!({"type": "image", "request_id": rid, "image_id": id, "byte_len": p.len()});
    if codes.is_some() {
        frame["codes"] = json!({"positions": 441, "groups": 8});
    }
    send(ws, frame).await;
    ws.send(Message::Binary(encode_binary(BinaryKind::ImageBytes, rid, &p).into())).await.unwrap();
    if let Some(c) = codes {
        let payload: Vec<u8> = c.iter().flat_map(|c| c.to_le_bytes()).collect();
        ws.send(Message::Binary(encode_binary(BinaryKind::Codes, rid, &payload).into())).await.unwrap();
    }
    send(
        ws,
        json!({"type": "ask", "request_id": rid + 1, "image_id": id, "prompt_ids": [5], "max_new_tokens": 3}),
    )
    .await;
    let (ids, att, done) = answer(ws, rid + 1).await;
    assert!(!ids.is_empty() && att.is_some());
    let ServerMessage::Done { cached, .. } = done else { panic!("{done:?}") };
    (cached, ids)
}

/// A page's codes are used as sent by default, and the compression made from them is cached
/// under a key that covers them: a second client sending other codes for the same image gets
/// its own compression, never the first client's; the first client's codes find theirs again.
/// The worker runs its encoder only for the image sent without codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_codes_are_used_as_sent_and_shape_only_their_senders_compression() {
    let addr = start(|_| {}).await;
    let zeros = vec![0u16; 441 * 8];
    let ones = vec![1u16; 441 * 8];
    let mut a = connect(addr, &[], "").await.unwrap();
    hello(&mut a).await;
    let mut b = connect(addr, &[], "").await.unwrap();
    hello(&mut b).await;
    let (cached, first) = ask_with_codes(&mut a, 1, "img", Some(&zeros)).await;
    assert!(!cached);
    let (cached, _) = ask_with_codes(&mut b, 1, "img", Some(&ones)).await;
    assert!(!cached, "other codes for the same image: a compression of their own");
    let (cached, again) = ask_with_codes(&mut b, 3, "img2", Some(&zeros)).await;
    assert!(cached, "the same image with the same codes is the same compression");
    assert_eq!(again, first);
    let (cached, _) = ask_with_codes(&mut a, 3, "img3", None).await;
    assert!(!cached, "the worker-encoded image is not any client's");
    let m = common::http::http_get(addr, "/metrics").await;
    assert_eq!(metric(&m, "htc_client_codes_used_total "), 2.0, "{m}");
    assert_eq!(metric(&m, "htc_mgvq_encodes_total "), 1.0, "only the image sent without codes: {m}");
    assert_eq!(metric(&m, "htc_client_codes_verified_total "), 0.0);
    // A mask layout that does not fit the model is refused.
    let p = png();
    let bad = json!({"bos": true, "n_discrete": 2, "n_visual": 576, "n_voco": 1, "n_text": 0});
    send(
        &mut a,
        json!({"type": "image", "request_id": 9, "image_id": "d", "byte_len": p.len(), "mask_layout": bad}),
    )
    .await;
    expect_error(&mut a, ErrorCode::BadRequest, "mask layout").await;
}

/// `--verify-client-codes all`: the worker's own codes pass, a flipped code is refused with
/// its position named and counted in /metrics; `sample:0` checks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_client_codes_pass_or_are_refused_with_positions_named() {
    use htc_worker::backend::Backend;
    let addr = start(|a| a.verify_client_codes = htc_worker::runtime::engine::VerifyCodes::All).await;
    // The worker's own codes for the test image (the random demo model, seeded as served).
    let (model, _) =
        htc_worker::formats::random::demo_model::<Backend>(&htc_worker::backend::device()).unwrap();
    let img = htc_shared::preprocess::decode_image(&png(), Default::default()).unwrap();
    let ours: Vec<u16> = model.mgvq.as_ref().unwrap().codes_of(&img).unwrap().concat();
    let mut ws = connect(addr, &[], "").await.unwrap();
    hello(&mut ws).await;
    let (cached, _) = ask_with_codes(&mut ws, 1, "mine", Some(&ours)).await;
    assert!(!cached);
    let mut flipped = ours.clone();
    flipped[17 * 8 + 3] = (flipped[17 * 8 + 3] + 1) % 2;
    let p = png();
    send(&mut ws, json!({"type": "image", "request_id": 3, "image_id": "f", "byte_len": p.len(), "codes": {"positions": 441, "groups": 8}})).await;
    ws.send(Message::Binary(encode_binary(BinaryKind::ImageBytes, 3, &p).into())).await.unwrap();
    let payload: Vec<u8> = flipped.iter().flat_map(|c| c.to_le_bytes()).collect();
    ws.send(Message::Binary(encode_binary(BinaryKind::Codes, 3, &payload).into())).await.unwrap();
    send(
        &mut ws,
        json!({"type": "ask", "request_id": 4, "image_id": "f", "prompt_ids": [5], "max_new_tokens": 2}),
    )
    .await;
    expect_error(&mut ws, ErrorCode::CodesMismatch, "position 17 group 3").await;
    let m = common::http::http_get(addr, "/metrics").await;
    assert_eq!(metric(&m, "htc_client_codes_verified_total "), 2.0, "{m}");
    assert_eq!(metric(&m, "htc_client_codes_refused_total "), 1.0, "{m}");
    assert_eq!(metric(&m, "htc_client_codes_used_total "), 1.0, "{m}");

    let addr = start(|a| a.verify_client_codes = htc_worker::runtime::engine::VerifyCodes::Sample(0.0)).await;
    let mut ws = connect(addr, &[], "").await.unwrap();
    hello(&mut ws).await;
    ask_with_codes(&mut ws, 1, "f", Some(&flipped)).await;
    let m = common::http::http_get(addr, "/metrics").await;
    assert_eq!(metric(&m, "htc_client_codes_verified_total "), 0.0, "{m}");
}

/// Connects, uploads the test image and asks request 2 for `tokens` tokens; returns once the
/// first token has arrived.
async fn long_answer_started(addr: std::net::SocketAddr, tokens: usize) -> Ws {
    let mut ws = connect(addr, &[], "").await.unwrap();
    hello(&mut ws).await;
    upload(&mut ws, 1, "img", &png()).await;
    send(&mut ws, json!({"type": "ask", "request_id": 2, "image_id": "img", "prompt_ids": [5], "max_new_tokens": tokens})).await;
    loop {
        if let ServerMessage::Token { .. } = recv(&mut ws).await {
            return ws;
        }
    }
}

/// A page can run the model's MGVQ encoder itself: `/api/encoder` names the weights by their
/// SHA-256; the weights are served immutable and hold exactly the checkpoint's `mgvq.*`
/// tensors; the encoder built from them gives the worker's own codes for the demo picture;
/// the worker takes those codes with the image, counts the bytes it served, and answers 404
/// in words for other names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_encoder_is_served_to_pages_and_gives_the_workers_codes() {
    use common::http::http_get_bytes;
    use htc_shared::loader::{Loader, SafetensorsBytes};
    use htc_shared::mgvq::Mgvq;
    use htc_shared::protocol::EncoderManifest;
    use htc_worker::backend::{self, Backend};
    use htc_worker::formats::checkpoint::{AnyModel, Snapshot};
    use sha2::Digest;

    let demo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-demo");
    let addr = start(|a| a.model = Some(demo.clone())).await;
    let (head, body) = http_get_bytes(addr, "/api/encoder").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let m: EncoderManifest = serde_json::from_slice(&body).unwrap();
    assert_eq!(m.path, format!("/api/encoder/{}.safetensors", m.sha256));
    let (head, weights) = http_get_bytes(addr, &m.path).await;
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("immutable"), "{head}");
    assert_eq!(weights.len() as u64, m.bytes);
    let digest: String = sha2::Sha256::digest(&weights).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(digest, m.sha256);
    let metrics = common::http::http_get(addr, "/metrics").await;
    assert!(metrics.contains(&format!("htc_encoder_weight_bytes_total {}", m.bytes)), "{metrics}");

    let src = SafetensorsBytes::new(weights, "served").unwrap();
    let mut names: Vec<&str> = src.names().collect();
    names.sort();
    let ckpt = htc_worker::formats::WeightSource::open_dir(&demo).unwrap();
    let mut want: Vec<String> = ckpt.names().into_iter().filter(|n| n.starts_with("mgvq.")).collect();
    want.sort();
    assert_eq!(names, want.iter().map(String::as_str).collect::<Vec<_>>(), "exactly the mgvq.* tensors");

    let dev = backend::device();
    let served = Mgvq::<Backend>::load(&Loader::new(&src, &dev).pp(&m.prefix), &m.config).unwrap();
    let png = std::fs::read(demo.join("../../docs/demo-star.png")).unwrap();
    let img = htc_shared::preprocess::decode_image(&png, Default::default()).unwrap();
    let codes = served.codes_of(&img).unwrap();
    let snap = Snapshot::<Backend>::open(&demo, &dev).unwrap();
    let AnyModel::Htc { model, .. } = snap.model else { panic!("the demo model is an HTC model") };
    assert_eq!(codes, model.mgvq.as_ref().unwrap().codes_of(&img).unwrap(), "the served encoder's codes");

    // The worker checks the page's codes against its own and answers with them.
    let mut ws = connect(addr, &[], "").await.unwrap();
    hello(&mut ws).await;
    let shape = json!({"positions": codes.len(), "groups": codes[0].len()});
    send(
        &mut ws,
        json!({"type": "image", "request_id": 1, "image_id": "star", "byte_len": png.len(), "codes": shape}),
    )
    .await;
    ws.send(Message::Binary(encode_binary(BinaryKind::ImageBytes, 1, &png).into())).await.unwrap();
    let payload: Vec<u8> = codes.iter().flatten().flat_map(|c| c.to_le_bytes()).collect();
    ws.send(Message::Binary(encode_binary(BinaryKind::Codes, 1, &payload).into())).await.unwrap();
    send(&mut ws, json!({"type": "ask", "request_id": 2, "image_id": "star", "question": "What color is the star?", "max_new_tokens": 4})).await;
    let (ids, _, _) = answer(&mut ws, 2).await;
    assert!(!ids.is_empty());

    let (head, body) = http_get_bytes(addr, "/api/encoder/0000.safetensors").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("no encoder weights named 0000.safetensors"));
}

/// A model without encoder weights on disk (the random default) has nothing for pages: 404,
/// in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_encoder_for_pages_without_weights_on_disk() {
    let addr = start(|_| {}).await;
    let r = common::http::http_get(addr, "/api/encoder").await;
    assert!(r.starts_with("HTTP/1.1 404") && r.contains("the worker tokenises images"), "{r}");
}

/// A client that lists `attention-f16` in `hello` gets the attention maps as one binary frame
/// of f16 weights: the same maps as the JSON a plain client gets (to f16 precision), in a
/// fraction of the bytes; a client may not send such a frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attention_maps_come_as_f16_frames_when_asked() {
    use htc_shared::protocol::{decode_attention_f16, decode_binary};
    let addr = start(|_| {}).await;
    let ask = json!({"type": "ask", "request_id": 2, "image_id": "img", "prompt_ids": [5, 6, 7], "max_new_tokens": 3});

    let mut plain = connect(addr, &[], "").await.unwrap();
    hello(&mut plain).await;
    upload(&mut plain, 1, "img", &png()).await;
    send(&mut plain, ask.clone()).await;
    let (json_maps, json_bytes) = loop {
        let Message::Text(t) = plain.next().await.unwrap().unwrap() else { continue };
        if let ServerMessage::Attention { layers, .. } = serde_json::from_str(t.as_str()).unwrap() {
            break (layers, t.len());
        }
    };

    let mut f16 = connect(addr, &[], "").await.unwrap();
    send(&mut f16, json!({"type": "hello", "version": 1, "capabilities": ["attention-f16"]})).await;
    assert!(matches!(recv(&mut f16).await, ServerMessage::Ready { .. }));
    upload(&mut f16, 1, "img", &png()).await;
    send(&mut f16, ask).await;
    let (maps, frame_bytes) = loop {
        match f16.next().await.unwrap().unwrap() {
            Message::Binary(b) => {
                let f = decode_binary(&b).unwrap();
                assert_eq!((f.kind, f.request_id), (BinaryKind::AttentionF16, 2));
                let (d, v, layers) = decode_attention_f16(f.payload).unwrap();
                assert_eq!(layers[0].len(), d + v);
                break (layers, b.len());
            }
            Message::Text(t) => {
                let m: ServerMessage = serde_json::from_str(t.as_str()).unwrap();
                assert!(!matches!(m, ServerMessage::Attention { .. } | ServerMessage::Done { .. }), "{m:?}");
            }
            _ => {}
        }
    };
    assert_eq!(maps.len(), json_maps.len());
    for (a, b) in maps.iter().flatten().zip(json_maps.iter().flatten()) {
        assert!((a - b).abs() <= b.abs() * 2f32.powi(-11) + 2f32.powi(-25), "{a} vs {b}");
    }
    eprintln!("attention maps: {json_bytes} bytes as JSON, {frame_bytes} as an f16 frame");
    assert!(frame_bytes * 4 <= json_bytes, "{frame_bytes} vs {json_bytes}");
    // The `done` still comes as JSON.
    assert!(matches!(recv(&mut f16).await, ServerMessage::Done { request_id: 2, .. }));
    // A client may not send attention frames.
    send(&mut f16, json!({"type": "image", "request_id": 5, "image_id": "x", "byte_len": 10})).await;
    f16.send(Message::Binary(encode_binary(BinaryKind::AttentionF16, 5, &[0; 8]).into())).await.unwrap();
    expect_error(&mut f16, ErrorCode::BadFrame, "from the worker to the page").await;
}

/// An HTC model also answers in mode `none` (all patches, the upper bound) when a question
/// asks for it, for side-by-side comparison: the card lists the modes, each mode compresses
/// the image once and caches it apart, and a mode the model does not offer is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_may_ask_for_mode_none_beside_the_compressed_mode() {
    let demo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-demo");
    let addr = start(|a| a.model = Some(demo.clone())).await;
    let mut ws = connect(addr, &[], "").await.unwrap();
    send(&mut ws, json!({"type": "hello", "version": 1})).await;
    let ServerMessage::Ready { model, .. } = recv(&mut ws).await else { panic!("ready") };
    use htc_shared::config::HtcMode;
    assert_eq!(model.modes, vec![HtcMode::Htc, HtcMode::None]);
    let png = std::fs::read(demo.join("../../docs/demo-star.png")).unwrap();
    upload(&mut ws, 1, "star", &png).await;
    let ask = |rid: u32, mode: Option<&str>| {
        let mut m = json!({"type": "ask", "request_id": rid, "image_id": "star", "question": "What color is the star?", "max_new_tokens": 4});
        if let Some(mode) = mode {
            m["mode"] = json!(mode);
        }
        m
    };
    let mut cached = vec![];
    for (rid, mode) in [(2, Some("none")), (3, None), (4, Some("none")), (5, Some("htc"))] {
        send(&mut ws, ask(rid, mode)).await;
        let (ids, attention, done) = answer(&mut ws, rid).await;
        assert!(!ids.is_empty());
        let ServerMessage::Done { cached: c, .. } = done else { unreachable!() };
        eprintln!("mode {mode:?}: {} tokens, attention {attention:?}, cached {c}", ids.len());
        cached.push(c);
    }
    // Each mode compresses once: `none` first, then `htc`; the repeats come from the cache.
    assert_eq!(cached, vec![false, false, true, true]);
    send(&mut ws, ask(6, Some("voco"))).await;
    expect_error(&mut ws, ErrorCode::BadRequest, "not offered").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_new_images_answers_as_asked_one_at_a_time() {
    // Four different pictures, the first one asked about twice.
    let pngs: Vec<Vec<u8>> = (0..4u8)
        .map(|i| {
            let img =
                image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([60 * i, (x * 6) as u8, (y * 8) as u8]));
            let mut bytes = vec![];
            img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
            bytes
        })
        .collect();
    let order = [0usize, 1, 2, 3, 0];
    let ask = |rid: u32| json!({"type": "ask", "request_id": rid, "image_id": "img", "prompt_ids": [5, 6, 7], "max_new_tokens": 6});
    // One at a time on a fresh server: the answers the burst must give.
    let addr = start(|_| {}).await;
    let mut want = vec![];
    for &k in &order {
        let mut ws = common::ws::open_with_image(addr, &pngs[k]).await;
        send(&mut ws, ask(2)).await;
        want.push(answer(&mut ws, 2).await.0);
    }
    // All at once on another fresh server: every question sent before any answer is read, so
    // the engine admits them together and compresses the new images as a batch.
    let addr = start(|a| a.max_compress_batch = 8).await;
    let mut conns = vec![];
    for &k in &order {
        conns.push(common::ws::open_with_image(addr, &pngs[k]).await);
    }
    for ws in conns.iter_mut() {
        send(ws, ask(2)).await;
    }
    for (i, ws) in conns.iter_mut().enumerate() {
        let (got, _, done) = answer(ws, 2).await;
        assert_eq!(got, want[i], "question {i}");
        assert!(matches!(done, ServerMessage::Done { .. }));
    }
    let m = common::http::http_get(addr, "/metrics").await;
    assert_eq!(metric(&m, "htc_compressions_total "), 4.0, "each new image compressed once: {m}");
    assert_eq!(metric(&m, "htc_cache_hits_total "), 1.0, "the repeated image is a cache hit: {m}");
    // However the questions fell into batches, the batches hold the 4 images.
    assert_eq!(metric(&m, "htc_compression_batch_images_sum "), 4.0, "{m}");
}

/// `htc load --page-codes 0.5`: half the images go with codes computed as a page computes them
/// (the served model's encoder), the other half without; every answer is checked as usual, and
/// the report gives the worker's compression time both ways. The worker used the sent codes for
/// the first half and ran its encoder for the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_test_sends_page_codes_for_half_its_images() {
    let demo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/shapes-demo");
    let addr = start(|a| a.model = Some(demo.clone())).await;
    let data = common::tmp("load-codes", "data");
    let _ = std::fs::remove_dir_all(&data);
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let o = std::process::Command::new(env!("CARGO_BIN_EXE_htc")).args(&args).output().unwrap();
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).to_string(),
                String::from_utf8_lossy(&o.stderr).to_string(),
            )
        })
    };
    let s = |p: &std::path::Path| p.display().to_string();
    let (ok, _, err) = run(vec![
        "data".into(),
        "shapes".into(),
        "--out".into(),
        s(&data),
        "--split".into(),
        "test".into(),
        "--images".into(),
        "4".into(),
        "--seed".into(),
        "3".into(),
        "--questions-per-image".into(),
        "2".into(),
    ])
    .await
    .unwrap();
    assert!(ok, "{err}");
    let (ok, out, err) = run(vec![
        "load".into(),
        "--url".into(),
        format!("ws://{addr}"),
        "--data".into(),
        s(&data.join("test.json")),
        "--images".into(),
        s(&data),
        "--clients".into(),
        "2".into(),
        "--questions".into(),
        "4".into(),
        "--per-image".into(),
        "2".into(),
        "--revisits".into(),
        "1".into(),
        "--max-new-tokens".into(),
        "4".into(),
        "--page-codes".into(),
        "0.5".into(),
        "--encoder-model".into(),
        s(&demo),
    ])
    .await
    .unwrap();
    assert!(ok, "{out}\n{err}");
    assert!(err.contains("2 images go with MGVQ codes computed here"), "{err}");
    assert!(out.contains("compressing a new image, with the page's codes:"), "{out}");
    assert!(out.contains("compressing a new image, worker-encoded:"), "{out}");
    let m = common::http::http_get(addr, "/metrics").await;
    assert!(metric(&m, "htc_client_codes_used_total ") >= 2.0, "{m}");
    assert!(metric(&m, "htc_mgvq_encodes_total ") >= 2.0, "{m}");
    assert!(!m.contains("codes_mismatch"), "no codes refused: {m}");
}
