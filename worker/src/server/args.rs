//! The server's settings (the `htc serve` flags): the model, the address, auth and the limits
//! on what clients send.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub dtype: crate::backend::DtypeArg,
    /// Model snapshot directory (HTC or LLaVA); without it a small randomly initialised
    /// HTC-shaped demo model is used.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// The built web app (trunk's dist/).
    #[arg(long, default_value = "dist")]
    pub static_dir: PathBuf,
    /// Serve the API alone (WebSocket, OpenAI, model card, metrics, health), without the web
    /// app: a worker behind a load balancer or in a cluster, where another server hosts the UI.
    #[arg(long)]
    pub api_only: bool,
    /// Require `Authorization: Bearer TOKEN` (or `?token=TOKEN`, for browsers' WebSockets) on
    /// /ws, /api/*, /metrics and /v1/*.
    #[arg(long, env = "HTC_AUTH_TOKEN")]
    pub auth_token: Option<String>,
    /// Origins a browser page may come from (repeatable): to open /ws (the worker's own host
    /// always may), and the CORS policy of /api/*, /metrics and /v1/*; none means any.
    #[arg(long = "allow-origin")]
    pub allow_origins: Vec<String>,
    /// Check pages' MGVQ codes against the worker's encoder: `off` (use them as sent: a
    /// page's codes shape only the answers of whoever sent them), `sample:P` (a fraction P of
    /// the images) or `all`. Near-ties are accepted; real disagreements are refused.
    #[arg(long, default_value = "off", value_parser = clap::value_parser!(crate::runtime::engine::VerifyCodes))]
    pub verify_client_codes: crate::runtime::engine::VerifyCodes,
    /// Compressed images kept in the LRU cache.
    #[arg(long, default_value_t = 64)]
    pub cache_capacity: usize,
    /// Questions waiting for the model before new ones get `busy`.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// Answers decoded together in one batched step (micro-batching).
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// New images compressed together when questions about them arrive together (1 compresses
    /// them one by one): on the GPU backends as one batch; on the CPU ones side by side, each
    /// image's whole compression (encoders and LLM) on a thread of its own.
    #[arg(long, default_value_t = 8)]
    pub max_compress_batch: usize,
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
    /// Longest question (for the OpenAI endpoint, the whole conversation's text), characters.
    #[arg(long, default_value_t = 4096)]
    pub max_question_chars: usize,
}

impl ServeArgs {
    /// Defaults for tests and embedding: the demo model on an ephemeral loopback port.
    pub fn local(static_dir: PathBuf) -> Self {
        Self {
            dtype: Default::default(),
            model: None,
            addr: "127.0.0.1:0".parse().expect("literal"),
            static_dir,
            api_only: false,
            auth_token: None,
            allow_origins: vec![],
            verify_client_codes: crate::runtime::engine::VerifyCodes::Off,
            cache_capacity: 64,
            queue: 16,
            max_batch: 8,
            max_compress_batch: 8,
            max_inflight_per_connection: 4,
            max_frame_bytes: 16 << 20,
            max_image_bytes: 12 << 20,
            max_image_side: 8192,
            max_question_chars: 4096,
        }
    }
}
