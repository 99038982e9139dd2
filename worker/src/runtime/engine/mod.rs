//! The inference engine behind the server: one model instance on its own thread, a bounded
//! job queue, micro-batched decoding, and an LRU of compressed images keyed by a content hash
//! of (model id, image bytes), so a follow-up question on a cached image skips the ViT, MGVQ
//! and compression.
//!
//! - [`job`]: the engine's setup and the questions it takes;
//! - [`metrics`]: Prometheus metrics;
//! - `state`: the thread's state and loop (admission, batched steps, replies).
//!
//! Errors reach clients as typed [`htc_shared::protocol::ProtocolError`]s. No HTTP or
//! WebSocket code here: the server feeds [`Job`]s in and forwards their replies.

pub mod job;
pub mod metrics;
mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use anyhow::{anyhow, Result};
use sha2::{Digest, Sha256};

use htc_shared::protocol::ModelCard;

pub use job::{EngineConfig, Job, Question, UploadedImage};
pub use metrics::Metrics;
use state::EngineState;

/// A handle to the engine thread.
#[derive(Clone)]
pub struct Engine {
    tx: SyncSender<Job>,
    pub card: ModelCard,
    pub metrics: Arc<Metrics>,
}

impl Engine {
    /// Starts the engine thread, loads the model there, and returns once it is ready.
    pub fn start(cfg: EngineConfig) -> Result<Self> {
        // A spinner with the number of tensors loaded so far, until the model is ready.
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} loading the model: {msg} ({elapsed})")
                .expect("valid template"),
        );
        let loading = Arc::new(AtomicBool::new(true));
        let (l, b) = (loading.clone(), bar.clone());
        let ticker = std::thread::spawn(move || {
            let start = crate::formats::TENSORS_READ.load(Ordering::Relaxed);
            while l.load(Ordering::Relaxed) {
                b.set_message(format!(
                    "{} tensors",
                    crate::formats::TENSORS_READ.load(Ordering::Relaxed) - start
                ));
                b.tick();
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
        let r = Self::start_inner(cfg);
        loading.store(false, Ordering::Relaxed);
        let _ = ticker.join();
        bar.finish_and_clear();
        r
    }

    fn start_inner(cfg: EngineConfig) -> Result<Self> {
        let (tx, rx) = sync_channel::<Job>(cfg.queue.max(1));
        let metrics = Arc::new(Metrics::new()?);
        let m = metrics.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<ModelCard>>();
        std::thread::Builder::new().name("htc-engine".into()).spawn(move || {
            match EngineState::load(&cfg, m) {
                Ok(state) => {
                    let _ = ready_tx.send(Ok(state.card.clone()));
                    state.run(rx, cfg.max_batch);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
        let card = ready_rx.recv().map_err(|_| anyhow!("the engine thread stopped while loading"))??;
        Ok(Self { tx, card, metrics })
    }

    /// Queues a job, or gives it back when the queue is full.
    #[allow(clippy::result_large_err)] // the job is handed back whole so the caller can answer it
    pub fn submit(&self, job: Job) -> std::result::Result<(), Job> {
        match self.tx.try_send(job) {
            Ok(()) => {
                self.metrics.questions.inc();
                self.metrics.queue_depth.inc();
                Ok(())
            }
            Err(TrySendError::Full(j)) | Err(TrySendError::Disconnected(j)) => Err(j),
        }
    }

    /// The cache key of an image for this model.
    pub fn image_key(&self, bytes: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.card.name.as_bytes());
        h.update([0u8]);
        h.update(bytes);
        h.finalize().into()
    }
}
