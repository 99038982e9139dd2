//! `htc serve`: one port for the WebSocket protocol (`/ws`, see `htc_shared::protocol`), the
//! built web app (static files), `/healthz`, `/api/model` (the model card) and Prometheus
//! `/metrics`, and an OpenAI-compatible `POST /v1/chat/completions` ([`crate::openai`]).
//! Bearer-token auth and an Origin allowlist are checked at the WebSocket
//! handshake; the token also guards `/api`, `/metrics` and `/v1`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, Notify};
use tower_http::services::{ServeDir, ServeFile};

use htc_shared::preprocess::{decode_image, DecodeLimits};
use htc_shared::protocol::{
    self, BinaryKind, ClientMessage, CodesShape, ErrorCode, ServerMessage, PROTOCOL_VERSION,
};

use crate::engine::{Engine, EngineConfig, ImageData, Job, Question};
use crate::generate::Sampling;

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Model snapshot directory (HTC or LLaVA); without it a small randomly initialised
    /// HTC-shaped demo model is used.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// The built web app (trunk's dist/).
    #[arg(long, default_value = "dist")]
    pub static_dir: PathBuf,
    /// Require `Authorization: Bearer TOKEN` (or `?token=TOKEN` on /ws) on /ws and /api.
    #[arg(long, env = "HTC_AUTH_TOKEN")]
    pub auth_token: Option<String>,
    /// Origins allowed to open /ws from a browser (repeatable); none means any.
    #[arg(long = "allow-origin")]
    pub allow_origins: Vec<String>,
    /// Use client-sent MGVQ codes without recomputing them.
    #[arg(long)]
    pub trust_client_codes: bool,
    /// Compressed images kept in the LRU cache.
    #[arg(long, default_value_t = 64)]
    pub cache_capacity: usize,
    /// Questions waiting for the model before new ones get `busy`.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// Answers decoded together in one batched step (micro-batching).
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Questions one connection may have queued or running.
    #[arg(long, default_value_t = 4)]
    pub max_inflight_per_connection: usize,
    /// Largest WebSocket message, bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_frame_bytes: usize,
    /// Largest encoded image, bytes.
    #[arg(long, default_value_t = 12 << 20)]
    pub max_image_bytes: usize,
    /// Largest image side, pixels.
    #[arg(long, default_value_t = 8192)]
    pub max_image_side: u32,
    /// Longest question, characters.
    #[arg(long, default_value_t = 4096)]
    pub max_question_chars: usize,
}

impl ServeArgs {
    /// Defaults for tests and embedding: the demo model on an ephemeral loopback port.
    pub fn local(static_dir: PathBuf) -> Self {
        Self {
            model: None,
            addr: "127.0.0.1:0".parse().expect("literal"),
            static_dir,
            auth_token: None,
            allow_origins: vec![],
            trust_client_codes: false,
            cache_capacity: 64,
            queue: 16,
            max_batch: 8,
            max_inflight_per_connection: 4,
            max_frame_bytes: 16 << 20,
            max_image_bytes: 12 << 20,
            max_image_side: 8192,
            max_question_chars: 4096,
        }
    }
}

/// Shared server state.
#[derive(Clone)]
pub struct App {
    pub(crate) engine: Engine,
    pub(crate) args: Arc<ServeArgs>,
    shutdown: Arc<Notify>,
    shutting_down: Arc<AtomicBool>,
}

impl App {
    pub fn new(args: ServeArgs) -> Result<Self> {
        let engine = Engine::start(EngineConfig {
            model: args.model.clone(),
            queue: args.queue,
            cache_capacity: args.cache_capacity,
            trust_client_codes: args.trust_client_codes,
            max_batch: args.max_batch,
        })?;
        Ok(Self {
            engine,
            args: Arc::new(args),
            shutdown: Arc::new(Notify::new()),
            shutting_down: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Starts draining: no new questions; connections close once their answers are done.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.shutdown.notify_waiters();
    }
}

pub(crate) fn authorized(args: &ServeArgs, headers: &HeaderMap, query: &HashMap<String, String>) -> bool {
    let Some(want) = &args.auth_token else { return true };
    let header =
        headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    header == Some(want.as_str()) || query.get("token") == Some(want)
}

fn origin_allowed(args: &ServeArgs, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else { return true };
    if args.allow_origins.is_empty() {
        return true;
    }
    let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("");
    let same = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host);
    same || args.allow_origins.iter().any(|o| o == origin || o == "*")
}

pub fn router(app: App) -> Router {
    let index = app.args.static_dir.join("index.html");
    let static_dir = app.args.static_dir.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/model", get(model_card))
        .route("/metrics", get(metrics))
        .route("/v1/chat/completions", axum::routing::post(crate::openai::chat_completions))
        .route("/ws", get(ws_upgrade))
        .fallback_service(ServeDir::new(static_dir).fallback(ServeFile::new(index)))
        .with_state(app)
}

async fn model_card(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&app.args, &headers, &q) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
    }
    Json(app.engine.card.clone()).into_response()
}

async fn metrics(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&app.args, &headers, &q) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
    }
    ([("content-type", "text/plain; version=0.0.4")], app.engine.metrics.render()).into_response()
}

async fn ws_upgrade(
    ws: WebSocketUpgrade,
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&app.args, &headers, &q) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
    }
    if !origin_allowed(&app.args, &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    // Frames up to twice the limit are read and refused with an error frame, keeping the
    // connection; larger ones end it (the memory bound).
    let max = app.args.max_frame_bytes.saturating_mul(2);
    ws.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| connection(socket, app))
}

/// An image announced by an `image` message, waiting for its binary frames.
struct Pending {
    image_id: String,
    byte_len: usize,
    codes: Option<CodesShape>,
    bytes: Option<Vec<u8>>,
    decoded_codes: Option<Vec<Vec<u16>>>,
}

/// Requests in flight on one connection, with their cancel flags.
type Inflight = Arc<Mutex<HashMap<u32, Arc<AtomicBool>>>>;

fn err(request_id: Option<u32>, code: ErrorCode, message: impl Into<String>) -> ServerMessage {
    ServerMessage::Error { request_id, code, message: message.into() }
}

async fn connection(socket: WebSocket, app: App) {
    app.engine.metrics.connections.inc();
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<ServerMessage>();
    let inflight: Inflight = Arc::default();
    let writer_inflight = inflight.clone();
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if let ServerMessage::Done { request_id, .. }
            | ServerMessage::Error { request_id: Some(request_id), .. } = &msg
            {
                writer_inflight.lock().expect("inflight lock").remove(request_id);
            }
            let text = serde_json::to_string(&msg).expect("server messages serialise");
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut state = Conn {
        app: app.clone(),
        tx: tx.clone(),
        inflight: inflight.clone(),
        hello: false,
        pending: HashMap::new(),
        images: HashMap::new(),
    };
    let mut draining = app.shutting_down.load(Ordering::SeqCst);
    loop {
        if draining && inflight.lock().expect("inflight lock").is_empty() {
            break;
        }
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) if b.len() > app.args.max_frame_bytes => {
                    let _ = tx.send(err(None, ErrorCode::FrameTooLarge, format!("binary frame of {} bytes exceeds the limit of {}", b.len(), app.args.max_frame_bytes)));
                }
                Some(Ok(Message::Text(t))) if t.len() > app.args.max_frame_bytes => {
                    let _ = tx.send(err(None, ErrorCode::FrameTooLarge, format!("text frame of {} bytes exceeds the limit of {}", t.len(), app.args.max_frame_bytes)));
                }
                Some(Ok(Message::Text(t))) => state.on_text(t.as_str()).await,
                Some(Ok(Message::Binary(b))) => state.on_binary(&b).await,
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = tx.send(err(None, ErrorCode::FrameTooLarge, format!("frame refused: {e}")));
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

struct Conn {
    app: App,
    tx: mpsc::UnboundedSender<ServerMessage>,
    inflight: Inflight,
    hello: bool,
    pending: HashMap<u32, Pending>,
    images: HashMap<String, ImageData>,
}

const MAX_IMAGES_PER_CONNECTION: usize = 32;

impl Conn {
    fn send(&self, m: ServerMessage) {
        if let ServerMessage::Error { code, .. } = &m {
            self.app.engine.metrics.errors.with_label_values(&[&format!("{code:?}")]).inc();
        }
        let _ = self.tx.send(m);
    }

    async fn on_text(&mut self, text: &str) {
        let msg = match protocol::decode_client(text) {
            Ok(m) => m,
            Err(e) => return self.send(err(None, e.code, e.message)),
        };
        match msg {
            ClientMessage::Hello { version, .. } => {
                if version != PROTOCOL_VERSION {
                    return self.send(err(None, ErrorCode::WrongVersion, format!("protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}")));
                }
                self.hello = true;
                self.send(ServerMessage::Ready {
                    version: PROTOCOL_VERSION,
                    model: self.app.engine.card.clone(),
                });
            }
            _ if !self.hello => self.send(err(None, ErrorCode::NotReady, "send `hello` first")),
            ClientMessage::Image { request_id, image_id, byte_len, codes, mask_layout } => {
                let a = &self.app.args;
                if byte_len == 0 || byte_len > a.max_image_bytes {
                    return self.send(err(
                        Some(request_id),
                        ErrorCode::BadImage,
                        format!("image of {byte_len} bytes is outside 1..={} bytes", a.max_image_bytes),
                    ));
                }
                if let Some(shape) = codes {
                    let card = &self.app.engine.card;
                    let Some(m) = &card.mgvq else {
                        return self.send(err(
                            Some(request_id),
                            ErrorCode::BadCodes,
                            "this model uses no MGVQ codes",
                        ));
                    };
                    let want = CodesShape { positions: m.latent_side().pow(2), groups: m.groups };
                    if shape != want {
                        return self.send(err(
                            Some(request_id),
                            ErrorCode::BadCodes,
                            format!(
                                "codes shape {}x{} does not match the model's {}x{}",
                                shape.positions, shape.groups, want.positions, want.groups
                            ),
                        ));
                    }
                }
                if let Some(l) = mask_layout {
                    let card = &self.app.engine.card;
                    if (l.n_discrete, l.n_visual, l.n_voco)
                        != (card.n_discrete, card.image_tokens, card.n_voco)
                    {
                        return self.send(err(Some(request_id), ErrorCode::BadRequest, format!("mask layout ({}, {}, {}) does not match the model's (n_discrete {}, n_visual {}, n_voco {})", l.n_discrete, l.n_visual, l.n_voco, card.n_discrete, card.image_tokens, card.n_voco)));
                    }
                }
                self.pending.insert(
                    request_id,
                    Pending { image_id, byte_len, codes, bytes: None, decoded_codes: None },
                );
            }
            ClientMessage::Ask {
                request_id,
                image_id,
                question,
                prompt_ids,
                max_new_tokens,
                temperature,
                top_p,
                seed,
            } => {
                let a = &self.app.args;
                if self.app.shutting_down.load(Ordering::SeqCst) {
                    return self.send(err(Some(request_id), ErrorCode::Busy, "the server is shutting down"));
                }
                let Some(image) = self.images.get(&image_id).cloned() else {
                    return self.send(err(
                        Some(request_id),
                        ErrorCode::UnknownImage,
                        format!(
                            "unknown image id `{image_id}` (send an `image` message and its bytes first)"
                        ),
                    ));
                };
                let q = match (question, prompt_ids) {
                    (Some(q), None) if q.chars().count() <= a.max_question_chars && !q.is_empty() => {
                        Question::Text(q)
                    }
                    (Some(q), None) => {
                        return self.send(err(
                            Some(request_id),
                            ErrorCode::BadRequest,
                            format!(
                                "question of {} characters is outside 1..={}",
                                q.chars().count(),
                                a.max_question_chars
                            ),
                        ))
                    }
                    (None, Some(ids)) if !ids.is_empty() && ids.len() <= a.max_question_chars => {
                        Question::Ids(ids)
                    }
                    _ => {
                        return self.send(err(
                            Some(request_id),
                            ErrorCode::BadRequest,
                            "give exactly one of `question` or `prompt_ids` (non-empty)",
                        ))
                    }
                };
                if !(top_p > 0.0 && top_p <= 1.0)
                    || !(0.0..=100.0).contains(&temperature)
                    || max_new_tokens == 0
                    || max_new_tokens > 4096
                {
                    return self.send(err(Some(request_id), ErrorCode::BadRequest, "sampling out of range: top_p in (0, 1], temperature in [0, 100], max_new_tokens in 1..=4096"));
                }
                let cancel = Arc::new(AtomicBool::new(false));
                {
                    let mut inflight = self.inflight.lock().expect("inflight lock");
                    if inflight.contains_key(&request_id) {
                        // No request id on this error: it must not end the running request.
                        return self.send(err(
                            None,
                            ErrorCode::BadRequest,
                            format!("request id {request_id} is already in flight"),
                        ));
                    }
                    if inflight.len() >= a.max_inflight_per_connection {
                        drop(inflight);
                        return self.send(err(
                            Some(request_id),
                            ErrorCode::Busy,
                            format!(
                                "this connection already has {} questions in flight",
                                a.max_inflight_per_connection
                            ),
                        ));
                    }
                    inflight.insert(request_id, cancel.clone());
                }
                let job = Job {
                    request_id,
                    image,
                    question: q,
                    sampling: Sampling { max_new_tokens, temperature, top_p, seed },
                    cancel,
                    reply: self.tx.clone(),
                };
                if self.app.engine.submit(job).is_err() {
                    self.inflight.lock().expect("inflight lock").remove(&request_id);
                    self.send(err(
                        Some(request_id),
                        ErrorCode::Busy,
                        "the request queue is full; try again shortly",
                    ));
                }
            }
            ClientMessage::Cancel { request_id } => {
                if let Some(flag) = self.inflight.lock().expect("inflight lock").get(&request_id) {
                    flag.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    async fn on_binary(&mut self, frame: &[u8]) {
        let f = match protocol::decode_binary(frame) {
            Ok(f) => f,
            Err(e) => return self.send(err(None, e.code, e.message)),
        };
        let rid = f.request_id;
        let Some(p) = self.pending.get_mut(&rid) else {
            return self.send(err(
                Some(rid),
                ErrorCode::BadFrame,
                format!("binary frame for request {rid}, which announced no image"),
            ));
        };
        match f.kind {
            BinaryKind::ImageBytes => {
                if f.payload.len() != p.byte_len {
                    let announced = p.byte_len;
                    self.pending.remove(&rid);
                    return self.send(err(
                        Some(rid),
                        ErrorCode::BadImage,
                        format!(
                            "image frame has {} bytes; the `image` message announced {announced}",
                            f.payload.len()
                        ),
                    ));
                }
                p.bytes = Some(f.payload.to_vec());
            }
            BinaryKind::Codes => {
                let Some(shape) = p.codes else {
                    self.pending.remove(&rid);
                    return self.send(err(
                        Some(rid),
                        ErrorCode::BadCodes,
                        "codes frame for an image that announced no codes",
                    ));
                };
                let per = self.app.engine.card.mgvq.as_ref().map(|m| m.codes_per_group()).unwrap_or(0);
                match protocol::decode_codes(f.payload, shape, per) {
                    Ok(c) => p.decoded_codes = Some(c),
                    Err(e) => {
                        self.pending.remove(&rid);
                        return self.send(err(Some(rid), e.code, e.message));
                    }
                }
            }
        }
        let complete = p.bytes.is_some() && (p.codes.is_none() || p.decoded_codes.is_some());
        if !complete {
            return;
        }
        let p = self.pending.remove(&rid).expect("present");
        let bytes = p.bytes.expect("complete");
        let side = self.app.args.max_image_side;
        let limits = DecodeLimits {
            max_width: side,
            max_height: side,
            max_alloc_bytes: (side as u64) * (side as u64) * 4,
        };
        let key = self.app.engine.image_key(&bytes);
        let decoded = tokio::task::spawn_blocking(move || decode_image(&bytes, limits)).await;
        match decoded {
            Ok(Ok(img)) => {
                if self.images.len() >= MAX_IMAGES_PER_CONNECTION && !self.images.contains_key(&p.image_id) {
                    let oldest = self.images.keys().next().cloned();
                    if let Some(k) = oldest {
                        self.images.remove(&k);
                    }
                }
                self.images.insert(
                    p.image_id,
                    ImageData { image: Arc::new(img), codes: p.decoded_codes.map(Arc::new), key },
                );
            }
            Ok(Err(e)) => self.send(err(Some(rid), ErrorCode::BadImage, e.to_string())),
            Err(e) => self.send(err(Some(rid), ErrorCode::Internal, format!("image decoding failed: {e}"))),
        }
    }
}

/// Starts the server on `listener` until `shutdown` resolves, then drains.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    use axum::serve::ListenerExt;
    let drain = app.clone();
    // Tokens are small frames: without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms each.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!("cannot set TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight answers");
            drain.begin_shutdown();
        })
        .await?;
    Ok(())
}

pub fn run(args: ServeArgs) -> Result<()> {
    if !args.static_dir.join("index.html").is_file() {
        bail!(
            "no built web app at {} (run scripts/build-web.sh first, or pass --static-dir)",
            args.static_dir.display()
        );
    }
    let addr = args.addr;
    let app = App::new(args)?;
    tracing::info!(card = ?app.engine.card, "model ready");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!("serving http://{}", listener.local_addr()?);
        serve_on(listener, app, async {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
                tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            }
            #[cfg(not(unix))]
            let _ = ctrl_c.await;
        })
        .await
    })
}
