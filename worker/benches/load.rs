//! Bounded load test: 32 concurrent WebSocket clients × 10 questions each against one worker
//! (demo HTC model, loopback). Checks that every answer arrives and that greedy answers equal
//! the single-client answers, then prints latency percentiles and throughput. Then a burst of
//! new images (8 clients, each with its own picture, asking at the same moment) against a
//! worker that compresses new images one by one (`--max-compress-batch 1`) and one that
//! compresses them as a batch: the same answers, and the time until the last one.
//!
//! Run: `cargo bench -p htc-worker --bench load` (scripts/test.sh runs it with the dev
//! profile, for its checks).

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use htc_shared::protocol::ServerMessage;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 32;
const QUESTIONS: usize = 10;
const TOKENS: usize = 8;

#[path = "../tests/common/ws.rs"]
mod ws;
use ws::recv;

/// The allocator and setting `htc serve` runs with (`src/main.rs`), so the figures are the
/// server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One client: hello, upload, then `QUESTIONS` questions in turn; returns answers and latencies.
async fn client(
    addr: std::net::SocketAddr, png: Vec<u8>, questions: Vec<Vec<u32>>,
) -> (Vec<Vec<u32>>, Vec<Duration>) {
    let mut ws = ws::open_with_image(addr, &png).await;
    let (mut answers, mut lat) = (vec![], vec![]);
    for (i, q) in questions.into_iter().enumerate() {
        let rid = i as u32 + 1;
        let t = Instant::now();
        loop {
            ws.send(Message::Text(json!({"type": "ask", "request_id": rid, "image_id": "img", "prompt_ids": q, "max_new_tokens": TOKENS}).to_string().into())).await.unwrap();
            let mut ids = vec![];
            let busy = loop {
                match recv(&mut ws).await {
                    ServerMessage::Token { id, .. } => ids.push(id),
                    ServerMessage::Done { .. } => break false,
                    ServerMessage::Error { code: htc_shared::protocol::ErrorCode::Busy, .. } => break true,
                    ServerMessage::Error { message, .. } => panic!("error: {message}"),
                    _ => {}
                }
            };
            if !busy {
                answers.push(ids);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // back off and retry
        }
        lat.push(t.elapsed());
    }
    (answers, lat)
}

const BURST: usize = 8;

/// `BURST` clients upload their own picture, wait for each other, then ask one question each
/// at once; returns the answers (in client order) and the time from the asks to the last
/// answer.
async fn burst(addr: std::net::SocketAddr, pngs: &[Vec<u8>]) -> (Vec<Vec<u32>>, Duration) {
    let gate = std::sync::Arc::new(tokio::sync::Barrier::new(pngs.len() + 1));
    let handles: Vec<_> = pngs
        .iter()
        .cloned()
        .map(|png| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let mut ws = ws::open_with_image(addr, &png).await;
                gate.wait().await;
                ws.send(Message::Text(json!({"type": "ask", "request_id": 1, "image_id": "img", "prompt_ids": [5, 6, 7], "max_new_tokens": TOKENS}).to_string().into())).await.unwrap();
                let mut ids = vec![];
                loop {
                    match recv(&mut ws).await {
                        ServerMessage::Token { id, .. } => ids.push(id),
                        ServerMessage::Done { cached, .. } => {
                            assert!(!cached, "every picture of the burst is new");
                            return ids;
                        }
                        ServerMessage::Error { message, .. } => panic!("error: {message}"),
                        _ => {}
                    }
                }
            })
        })
        .collect();
    gate.wait().await;
    let t = Instant::now();
    let mut answers = vec![];
    for h in handles {
        answers.push(h.await.expect("client finished"));
    }
    (answers, t.elapsed())
}

fn main() {
    htc_worker::backend::keep_freed_memory();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let addr = ws::serve(|a| a.queue = 64).await;
        let png = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/images/gradient-45x30.png")).unwrap();
        let questions: Vec<Vec<u32>> = (0..QUESTIONS as u32).map(|i| vec![5 + i, 40 + 3 * i, 7]).collect();

        // Reference: one client alone (this also compresses and caches the image).
        let (reference, single) = client(addr, png.clone(), questions.clone()).await;
        let t = Instant::now();
        let handles: Vec<_> = (0..CLIENTS).map(|_| tokio::spawn(client(addr, png.clone(), questions.clone()))).collect();
        let mut lat = vec![];
        let mut answers = 0;
        for h in handles {
            let (a, l) = h.await.expect("client finished");
            assert_eq!(a, reference, "a concurrent greedy answer differs from the single-client answer");
            answers += a.len();
            lat.extend(l);
        }
        let wall = t.elapsed();
        assert_eq!(answers, CLIENTS * QUESTIONS, "answers lost");
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).saturating_sub(1).min(lat.len() - 1)];
        // The first single-client question also compressed the image; the rest hit the cache.
        let mut warm: Vec<Duration> = single[1..].to_vec();
        warm.sort();
        let single_p50 = warm[warm.len() / 2];
        println!("load: {CLIENTS} clients x {QUESTIONS} questions x {TOKENS} tokens, all {answers} answers equal the single-client answers");
        println!("  single client, cached image: p50 {:.1} ms (first question, with compression: {:.1} ms)", single_p50.as_secs_f64() * 1e3, single[0].as_secs_f64() * 1e3);
        println!("  concurrent: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", pct(0.50).as_secs_f64() * 1e3, pct(0.99).as_secs_f64() * 1e3, lat.last().unwrap().as_secs_f64() * 1e3);
        println!("  throughput: {:.1} answers/s over {:.2} s ({:.1}x the single-client rate)", answers as f64 / wall.as_secs_f64(), wall.as_secs_f64(), (answers as f64 / wall.as_secs_f64()) * single_p50.as_secs_f64());

        // The burst of new images, compressed one by one, then as one batch.
        let pngs: Vec<Vec<u8>> = (0..BURST as u32)
            .map(|i| {
                let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([(i * 30) as u8, (x * 4) as u8, (y * 5) as u8]));
                let mut bytes = vec![];
                img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
                bytes
            })
            .collect();
        let mut runs = vec![];
        for limit in [1, BURST] {
            let addr = ws::serve(|a| {
                a.max_compress_batch = limit;
                a.max_batch = BURST;
                a.queue = 64;
            })
            .await;
            runs.push(burst(addr, &pngs).await);
        }
        assert_eq!(runs[0].0, runs[1].0, "batched compression changed an answer");
        let (one, batched) = (runs[0].1.as_secs_f64(), runs[1].1.as_secs_f64());
        println!(
            "  burst of {BURST} new images, one question each: compressed one by one {:.0} ms, as a batch {:.0} ms ({:.2}x), answers equal",
            one * 1e3,
            batched * 1e3,
            one / batched
        );
    });
}
