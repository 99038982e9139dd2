//! The WebSocket protocol at `/ws` (see `htc_shared::protocol`): the connection loop here, one
//! handler per client message in [`conn`].

mod conn;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use htc_shared::protocol::{encode_attention_f16, encode_binary, BinaryKind, ErrorCode, ServerMessage};

use super::App;
use conn::Conn;

/// Requests in flight on one connection, with their cancel flags.
type Inflight = Arc<Mutex<HashMap<u32, Arc<AtomicBool>>>>;

/// Runs one WebSocket connection: a writer task for outgoing messages, and the read loop that
/// hands each frame to [`Conn`] until the client leaves or a drain finishes.
pub(super) async fn connection(socket: WebSocket, app: App) {
    app.engine.metrics.connections.inc();
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<ServerMessage>();
    let inflight: Inflight = Arc::default();
    let writer_inflight = inflight.clone();
    // Set by `hello` when the client asks for attention maps as f16 binary frames.
    let attention_f16 = Arc::new(AtomicBool::new(false));
    let writer_f16 = attention_f16.clone();
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if let ServerMessage::Done { request_id, .. }
            | ServerMessage::Error { request_id: Some(request_id), .. } = &msg
            {
                writer_inflight.lock().expect("inflight lock").remove(request_id);
            }
            let binary = match &msg {
                ServerMessage::Attention { request_id, n_discrete, n_visual, layers }
                    if writer_f16.load(Ordering::Relaxed) =>
                {
                    // Maps that do not fit the frame go as JSON.
                    encode_attention_f16(*n_discrete, *n_visual, layers)
                        .ok()
                        .map(|p| encode_binary(BinaryKind::AttentionF16, *request_id, &p))
                }
                _ => None,
            };
            let frame = match binary {
                Some(b) => Message::Binary(b.into()),
                None => Message::Text(serde_json::to_string(&msg).expect("server messages serialise").into()),
            };
            if sink.send(frame).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut state = Conn::new(app.clone(), tx.clone(), inflight.clone(), attention_f16);
    let mut draining = app.shutting_down.load(Ordering::SeqCst);
    loop {
        if draining && inflight.lock().expect("inflight lock").is_empty() {
            break;
        }
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) if b.len() > app.args.max_frame_bytes => {
                    state.refuse(None, ErrorCode::FrameTooLarge, format!("binary frame of {} bytes exceeds the limit of {}", b.len(), app.args.max_frame_bytes));
                }
                Some(Ok(Message::Text(t))) if t.len() > app.args.max_frame_bytes => {
                    state.refuse(None, ErrorCode::FrameTooLarge, format!("text frame of {} bytes exceeds the limit of {}", t.len(), app.args.max_frame_bytes));
                }
                Some(Ok(Message::Text(t))) => state.on_text(t.as_str()).await,
                Some(Ok(Message::Binary(b))) => state.on_binary(&b).await,
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    state.refuse(None, ErrorCode::FrameTooLarge, format!("frame refused: {e}"));
                    break;
                }
            },
            _ = app.shutdown.notified(), if !draining => draining = true,
            _ = tokio::time::sleep(Duration::from_millis(50)), if draining => {}
        }
    }
    // A disconnect frees its work at once.
    for flag in inflight.lock().expect("inflight lock").values() {
        flag.store(true, Ordering::Relaxed);
    }
    drop(state);
    drop(tx);
    let _ = writer.await;
    app.engine.metrics.connections.dec();
}
