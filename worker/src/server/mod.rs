//! The server: one port for the WebSocket protocol (`/ws`, see `htc_shared::protocol`), the
//! built web app (static files), `/healthz`, `/api/model` (the model card), the card's sample
//! images (`/api/samples/<i>.png`), Prometheus `/metrics` and an OpenAI-compatible
//! `POST /v1/chat/completions`.
//!
//! - [`args`]: settings and limits; [`auth`]: the token middleware and the Origin allowlist;
//! - [`ws`]: the WebSocket connection, one handler per message; [`upload`]: image uploads;
//! - [`openai`]: the OpenAI endpoint.
//!
//! Both front ends feed the same [`crate::runtime::engine::Engine`] and map its typed
//! errors; no model code here.

pub mod args;
pub mod auth;
pub mod openai;
pub mod upload;
mod ws;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use tokio::sync::Notify;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::{ServeDir, ServeFile};

use crate::formats::encoder::encoder_file;
use crate::runtime::engine::{Engine, EngineConfig};
pub use args::ServeArgs;
use htc_shared::protocol::EncoderManifest;

/// Shared server state.
#[derive(Clone)]
pub struct App {
    pub(crate) engine: Engine,
    pub(crate) args: Arc<ServeArgs>,
    shutdown: Arc<Notify>,
    shutting_down: Arc<AtomicBool>,
    /// The MGVQ encoder for pages, when the model has one and comes from a directory.
    encoder: Option<Arc<(EncoderManifest, axum::body::Bytes)>>,
}

impl App {
    pub fn new(args: ServeArgs) -> Result<Self> {
        match &args.model {
            Some(p) => tracing::info!(model = %p.display(), "loading model"),
            None => tracing::info!("no --model given: using the randomly initialised HTC demo model"),
        }
        let engine = Engine::start(EngineConfig {
            mode: None,
            // The WebSocket protocol and the OpenAI endpoint ask about images.
            require_images: true,
            model: args.model.clone(),
            queue: args.queue,
            cache_capacity: args.cache_capacity,
            verify_client_codes: args.verify_client_codes,
            max_batch: args.max_batch,
            max_compress_batch: args.max_compress_batch,
        })?;
        let encoder = match (&args.model, &engine.card.mgvq) {
            (Some(dir), Some(config)) if dir.is_dir() => encoder_file(dir)?.map(|f| {
                let manifest = EncoderManifest::new(config.clone(), &f.sha256, f.bytes.len() as u64);
                Arc::new((manifest, f.bytes.into()))
            }),
            _ => None,
        };
        Ok(Self {
            encoder,
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

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

pub fn router(app: App) -> Router {
    let index = app.args.static_dir.join("index.html");
    let static_dir = app.args.static_dir.clone();
    let guarded = Router::new()
        .route("/api/model", get(model_card))
        .route("/api/encoder", get(encoder_manifest))
        .route("/api/encoder/{file}", get(encoder_weights))
        .route("/api/samples/{file}", get(sample_image))
        .route("/metrics", get(metrics))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/ws", get(ws_upgrade))
        .route_layer(middleware::from_fn_with_state(app.clone(), auth::require_token));
    // The app's files are public code: any site may load them (the widget's module script,
    // the wasm, the encoder's Web Worker files). The API follows the Origin allowlist.
    let files = if app.args.api_only {
        Router::new().fallback(|| async {
            (StatusCode::NOT_FOUND, "this worker serves the API only (--api-only): no web app here")
        })
    } else {
        Router::new()
            .fallback_service(ServeDir::new(static_dir).fallback(ServeFile::new(index)))
            .layer(CorsLayer::new().allow_origin(AllowOrigin::any()))
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(guarded.layer(api_cors(&app.args)))
        .fallback_service(files)
        .with_state(app)
}

/// Cross-origin reads of `/api/*`, `/metrics` and `/v1/*` for the widget on other sites: the
/// `--allow-origin` list, or any origin when there is none (as for the WebSocket's Origin
/// check).
fn api_cors(args: &ServeArgs) -> CorsLayer {
    use axum::http::{header, HeaderValue, Method};
    let origins = if args.allow_origins.is_empty() || args.allow_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(args.allow_origins.iter().filter_map(|o| o.parse::<HeaderValue>().ok()))
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
}

async fn model_card(State(app): State<App>) -> Response {
    Json(app.engine.card.clone()).into_response()
}

async fn encoder_manifest(State(app): State<App>) -> Response {
    match &app.encoder {
        Some(e) => Json(e.0.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "this model has no MGVQ encoder for the browser: the worker tokenises images",
        )
            .into_response(),
    }
}

/// The weights under their content address; immutable, so a browser caches them for good.
async fn encoder_weights(State(app): State<App>, Path(file): Path<String>) -> Response {
    match &app.encoder {
        Some(e) if file == format!("{}.safetensors", e.0.sha256) => {
            app.engine.metrics.encoder_bytes.inc_by(e.1.len() as u64);
            (
                [
                    ("content-type", "application/octet-stream".to_string()),
                    ("cache-control", "public, max-age=31536000, immutable".to_string()),
                    ("etag", format!("\"{}\"", e.0.sha256)),
                ],
                e.1.clone(),
            )
                .into_response()
        }
        _ => (StatusCode::NOT_FOUND, format!("no encoder weights named {file}")).into_response(),
    }
}

/// Sample `<i>.png` of the model card's `samples` (rendered when the model was opened).
async fn sample_image(State(app): State<App>, Path(file): Path<String>) -> Response {
    let png = file
        .strip_suffix(".png")
        .and_then(|i| i.parse::<usize>().ok())
        .and_then(|i| app.engine.samples.get(i));
    match png {
        // The same model always serves the same bytes, but another model may be served at this
        // address after a restart: the browser asks again each time.
        Some(png) => {
            ([("content-type", "image/png"), ("cache-control", "no-cache")], png.clone()).into_response()
        }
        None => {
            let n = app.engine.samples.len();
            let have = match n {
                0 => "this model has no sample images".to_string(),
                1 => "this model has one sample image: 0.png".to_string(),
                n => format!("this model has sample images 0.png to {}.png", n - 1),
            };
            (StatusCode::NOT_FOUND, format!("no sample image named {file}: {have}")).into_response()
        }
    }
}

async fn metrics(State(app): State<App>) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], app.engine.metrics.render()).into_response()
}

async fn ws_upgrade(ws: WebSocketUpgrade, State(app): State<App>, headers: HeaderMap) -> Response {
    if !auth::origin_allowed(&app.args, &headers) {
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    // Frames up to twice the limit are read and refused with an error frame, keeping the
    // connection; larger ones end it (the memory bound).
    let max = app.args.max_frame_bytes.saturating_mul(2);
    ws.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| ws::connection(socket, app))
}

/// Starts the server on `listener` until `shutdown` resolves, then drains.
pub async fn serve_on(
    listener: tokio::net::TcpListener, app: App,
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
