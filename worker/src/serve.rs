//! The worker's HTTP side: the built web app as static files, `/healthz` and `/api/model`
//! (the model card). The WebSocket protocol is layered on this router.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::{routing::get, Json, Router};
use serde::Serialize;
use tower_http::services::{ServeDir, ServeFile};

use crate::backend::{self, Backend};
use crate::models::llava::Llava;
use crate::snapshot::{AnyModel, Snapshot};
use crate::weights::Loader;

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Model snapshot directory or .gguf file; without it a small randomly initialised
    /// LLaVA-shaped demo model is used.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// The built web app (trunk's dist/).
    #[arg(long, default_value = "dist")]
    pub static_dir: PathBuf,
}

/// What the server says about its model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    pub name: String,
    pub architecture: String,
    pub random_init: bool,
    pub backend: String,
    pub image_size: Option<usize>,
    pub image_tokens: Option<usize>,
    pub hidden_size: usize,
    pub layers: usize,
    pub vocab_size: usize,
}

fn card(model: &AnyModel<Backend>, name: String, random_init: bool) -> ModelCard {
    let c = model.llm().config();
    let (image_size, image_tokens) = match model {
        AnyModel::Llava { config, .. } => (Some(config.vision.image_size), Some(config.num_image_tokens())),
        AnyModel::Htc { config, model, .. } => (Some(config.vision.image_size), Some(model.layout(0).n_voco)),
        AnyModel::Llama(_) => (None, None),
    };
    ModelCard {
        name,
        architecture: model.architecture().into(),
        random_init,
        backend: backend::name().into(),
        image_size,
        image_tokens,
        hidden_size: c.hidden_size,
        layers: c.num_hidden_layers,
        vocab_size: c.vocab_size,
    }
}

/// Loads the model named by `args` (or the random demo model).
pub fn load_model(args: &ServeArgs) -> Result<(Snapshot<Backend>, ModelCard)> {
    let device = backend::device();
    match &args.model {
        Some(p) => {
            tracing::info!(model = %p.display(), "loading model");
            let snap = Snapshot::<Backend>::open(p, &device)?;
            let card = card(&snap.model, p.display().to_string(), false);
            Ok((snap, card))
        }
        None => {
            tracing::info!("no --model given: using the randomly initialised demo model");
            let config = crate::demo::tiny_llava_config();
            let src = crate::demo::random_llava(&config, 0);
            let model = Llava::load(&Loader::<Backend>::new(&src, &device), &config)?;
            let preprocess = htc_shared::preprocess::ClipPreprocess::llava(config.vision.image_size as u32);
            let snap = Snapshot { model: AnyModel::Llava { model, config, preprocess }, tokenizer: None };
            let card = card(&snap.model, "htc-demo-random".into(), true);
            Ok((snap, card))
        }
    }
}

pub fn router(card: ModelCard, static_dir: PathBuf) -> Router {
    let card = Arc::new(card);
    let index = static_dir.join("index.html");
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/model", get(move || { let c = card.clone(); async move { Json((*c).clone()) } }))
        .fallback_service(ServeDir::new(&static_dir).fallback(ServeFile::new(index)))
}

pub fn run(args: ServeArgs) -> Result<()> {
    if !args.static_dir.join("index.html").is_file() {
        bail!("no built web app at {} (run `trunk build` in web/ first, or pass --static-dir)", args.static_dir.display());
    }
    let (_snap, card) = load_model(&args)?;
    tracing::info!(?card, "model ready");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.addr).await.with_context(|| format!("cannot listen on {}", args.addr))?;
        tracing::info!("serving http://{}", listener.local_addr()?);
        axum::serve(listener, router(card, args.static_dir))
            .with_graceful_shutdown(async {
                let ctrl_c = tokio::signal::ctrl_c();
                #[cfg(unix)]
                {
                    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
                    tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
                }
                #[cfg(not(unix))]
                let _ = ctrl_c.await;
                tracing::info!("shutting down");
            })
            .await?;
        Ok(())
    })
}
