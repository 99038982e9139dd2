//! OpenAI-compatible `POST /v1/chat/completions`, so existing clients and SDKs work unchanged:
//! the whole conversation counts (system prompt, earlier turns, the last user message as the
//! question, laid out by the model's chat template) and the image is the `image_url` part (a
//! `data:` URL) of whichever user message carries it; `stream: true` answers with server-sent
//! events. Questions go through the same
//! admission (upload decoding, question and sampling checks) and engine as the WebSocket
//! protocol; engine errors map to HTTP statuses.

use std::convert::Infallible;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use htc_shared::protocol::{ErrorCode, ProtocolError, ServerMessage};

use super::upload::decode_upload;
use super::App;
use crate::runtime::engine::{Job, Question};
use crate::runtime::sampling::Sampling;
use crate::text::{Chat, Role};

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default, alias = "max_completion_tokens")]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub seed: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Value,
}

/// An OpenAI-style error body.
pub fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": {"message": message.into(), "type": kind}}))).into_response()
}

/// An engine or admission refusal as an HTTP response.
fn refusal(e: ProtocolError) -> Response {
    let (status, kind) = match e.code {
        ErrorCode::Busy => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        ErrorCode::FrameTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error"),
        ErrorCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
        _ => (StatusCode::BAD_REQUEST, "invalid_request_error"),
    };
    error(status, kind, e.message)
}

/// The image of a `data:` URL.
fn data_url_image(url: &str) -> Result<Vec<u8>, String> {
    let b64 = url
        .strip_prefix("data:")
        .and_then(|r| r.split_once(";base64,"))
        .map(|(_, d)| d)
        .ok_or("only base64 `data:` image URLs are supported (the worker fetches nothing)")?;
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("image data URL is not valid base64: {e}"))
}

/// The whole conversation and the bytes of its image. Every message counts: system (or
/// `developer`) prompts, earlier user and assistant turns, and the last user message, the
/// question. The image may be in any user message; the model compresses one image, so a
/// conversation may carry one (the same image sent again in a later message is the same
/// image: it is kept once).
fn conversation(req: &ChatRequest) -> Result<(Chat, Vec<u8>), String> {
    let mut messages = Vec::with_capacity(req.messages.len());
    let mut image: Option<Vec<u8>> = None;
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(format!(
                    "messages[{i}]: role `{other}` is not supported (system, user, assistant)"
                ))
            }
        };
        let mut text = String::new();
        match &m.content {
            Value::String(s) => text.push_str(s),
            Value::Array(parts) => {
                for p in parts {
                    match p.get("type").and_then(Value::as_str) {
                        Some("text") => text.push_str(p.get("text").and_then(Value::as_str).unwrap_or("")),
                        Some("image_url") if role == Role::User => {
                            let url =
                                p.pointer("/image_url/url").and_then(Value::as_str).ok_or_else(|| {
                                    format!("messages[{i}]: image_url part without image_url.url")
                                })?;
                            let bytes = data_url_image(url).map_err(|e| format!("messages[{i}]: {e}"))?;
                            match &image {
                                Some(prev) if *prev != bytes => {
                                    return Err(format!(
                                    "messages[{i}]: a second, different image; this model answers about one \
                                         image per conversation"
                                ))
                                }
                                _ => image = Some(bytes),
                            }
                        }
                        Some("image_url") => {
                            return Err(format!("messages[{i}]: only user messages may carry an image"))
                        }
                        other => {
                            return Err(format!("messages[{i}]: unsupported content part type {other:?}"))
                        }
                    }
                }
            }
            Value::Null if role == Role::Assistant => {
                return Err(format!(
                    "messages[{i}]: an assistant message without content (tool calls are not supported)"
                ))
            }
            _ => return Err(format!("messages[{i}]: content must be a string or a list of parts")),
        }
        messages.push((role, text));
    }
    let chat = Chat::from_messages(&messages)?;
    let image = image.ok_or("no user message has an image_url part; this model answers about an image")?;
    Ok((chat, image))
}

pub async fn chat_completions(State(app): State<App>, body: axum::body::Bytes) -> Response {
    let req: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, "invalid_request_error", format!("malformed request: {e}"))
        }
    };
    if !app.engine.card.has_tokenizer {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "this model has no tokenizer; use the WebSocket protocol with prompt_ids",
        );
    }
    let (chat, bytes) = match conversation(&req) {
        Ok(x) => x,
        Err(m) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", m),
    };
    let question = match Question::chat(chat, app.args.max_question_chars) {
        Ok(q) => q,
        Err(e) => return refusal(e),
    };
    let max_new_tokens = req.max_tokens.unwrap_or(256);
    let sampling = Sampling {
        max_new_tokens,
        temperature: req.temperature.unwrap_or(0.0),
        top_p: req.top_p.unwrap_or(1.0),
        seed: req.seed.unwrap_or(0),
    };
    if let Err(m) = sampling.validate() {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", m);
    }
    let image = match decode_upload(&app.engine, &app.args, bytes, None).await {
        Ok(img) => img,
        Err(e) => return refusal(e),
    };
    let key = image.key;
    let (tx, mut rx) = mpsc::unbounded_channel::<ServerMessage>();
    let cancel = Arc::new(AtomicBool::new(false));
    let image = Some(image);
    let job = Job { request_id: 0, image, question, sampling, mode: None, cancel: cancel.clone(), reply: tx };
    if app.engine.submit(job).is_err() {
        return refusal(ProtocolError::new(ErrorCode::Busy, "the request queue is full; try again shortly"));
    }
    let model = req.model.clone().unwrap_or_else(|| app.engine.card.name.clone());
    let id = format!(
        "chatcmpl-{:x}",
        u64::from_le_bytes(key[..8].try_into().expect("8 bytes")) ^ rand::random::<u64>()
    );
    let created =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if req.stream {
        // Engine messages become SSE events on a task; the response stream owns a guard that
        // cancels the answer when the client goes away and the stream is dropped.
        struct CancelOnDrop(Arc<AtomicBool>);
        impl Drop for CancelOnDrop {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let (ev_tx, ev_rx) = mpsc::unbounded_channel::<Event>();
        tokio::spawn(async move {
            let emit = |v: Value| {
                let _ = ev_tx.send(Event::default().data(v.to_string()));
            };
            let chunk = |delta: Value, finish: Option<&str>| {
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            emit(chunk(json!({"role": "assistant", "content": ""}), None));
            let mut n = 0;
            while let Some(m) = rx.recv().await {
                match m {
                    ServerMessage::Token { text, .. } => {
                        n += 1;
                        if !text.is_empty() {
                            emit(chunk(json!({"content": text}), None));
                        }
                    }
                    ServerMessage::Done { .. } => {
                        emit(chunk(json!({}), Some(if n >= max_new_tokens { "length" } else { "stop" })));
                        break;
                    }
                    ServerMessage::Error { message, code, .. } => {
                        emit(json!({"error": {"message": message, "type": format!("{code:?}")}}));
                        break;
                    }
                    _ => {}
                }
            }
            let _ = ev_tx.send(Event::default().data("[DONE]"));
        });
        let stream =
            futures_util::stream::unfold((ev_rx, CancelOnDrop(cancel)), |(mut rx, guard)| async move {
                rx.recv().await.map(|e| (Ok::<_, Infallible>(e), (rx, guard)))
            });
        return Sse::new(stream).into_response();
    }
    let mut text = String::new();
    let (mut n, mut prompt) = (0, 0);
    while let Some(m) = rx.recv().await {
        match m {
            ServerMessage::Token { text: t, .. } => {
                n += 1;
                text.push_str(&t);
            }
            ServerMessage::Done { prompt_tokens, .. } => {
                prompt = prompt_tokens;
                break;
            }
            ServerMessage::Error { message, code, .. } => return refusal(ProtocolError::new(code, message)),
            _ => {}
        }
    }
    Json(json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": if n >= max_new_tokens { "length" } else { "stop" }}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n},
    }))
    .into_response()
}
