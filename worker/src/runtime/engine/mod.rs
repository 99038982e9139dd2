//! The inference engine behind every front end (the server, `htc eval`, `htc ask`): one model
//! instance on its own thread, a bounded job queue, micro-batched decoding, and an LRU of the
//! images made ready (compressed for HTC, a plain LLaVA's features) keyed by a content hash
//! of (model id, image bytes), so a follow-up question on a cached image skips the ViT, MGVQ
//! and compression. It serves HTC checkpoints, plain LLaVA snapshots and plain LLaMA models
//! (HF snapshots, GGUF files; text-only questions).
//!
//! - [`job`]: the engine's setup and the questions it takes;
//! - [`metrics`]: Prometheus metrics;
//! - `state`: the thread's state and loop (admission, batched steps, replies).
//!
//! Errors reach clients as typed [`htc_shared::protocol::ProtocolError`]s. No HTTP, WebSocket
//! or terminal code here: front ends feed [`Job`]s in and forward their replies.

pub mod job;
pub mod metrics;
mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use anyhow::{anyhow, Result};
use sha2::{Digest, Sha256};

use htc_shared::protocol::{ModelCard, SampleImage};

use crate::formats::about::About;
use crate::formats::random;

pub use job::{EngineConfig, ImageData, Job, Question, UploadedImage, VerifyCodes};
pub use metrics::Metrics;
use state::EngineState;

/// A handle to the engine thread.
#[derive(Clone)]
pub struct Engine {
    /// Jobs to admit together: one for a client's question, a whole group from [`Engine::submit_all`].
    tx: SyncSender<Vec<Job>>,
    pub card: ModelCard,
    /// The PNGs of the card's `samples`, in order (the model directory's `about.json`).
    pub samples: Arc<Vec<Vec<u8>>>,
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
        // What the model says about itself, read (and its samples rendered) before the
        // weights load, so a mistake in it is reported at once.
        let about = match &cfg.model {
            Some(dir) if dir.is_dir() => About::read(dir)?,
            _ => None,
        };
        let (tx, rx) = sync_channel::<Vec<Job>>(cfg.queue.max(1));
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
        let mut card = ready_rx.recv().map_err(|_| anyhow!("the engine thread stopped while loading"))??;
        let mut samples = Vec::new();
        if card.random_init {
            card.about = Some(random::DEMO_ABOUT.into());
        } else if let Some(about) = about {
            card.about = Some(about.text);
            for (id, s) in about.samples.into_iter().enumerate() {
                card.samples.push(SampleImage::new(id, s.questions));
                samples.push(s.png);
            }
        }
        Ok(Self { tx, card, samples: Arc::new(samples), metrics })
    }

    /// Queues a job, or gives it back when the queue is full.
    #[allow(clippy::result_large_err)] // the job is handed back whole so the caller can answer it
    pub fn submit(&self, job: Job) -> std::result::Result<(), Job> {
        self.submit_all(vec![job]).map_err(|mut j| j.pop().expect("the job given"))
    }

    /// Queues jobs to be admitted in one step, or gives them back when the queue is full: the
    /// engine starts them together (new images compressed as one batch) and decodes them as
    /// one batch, so the batches do not depend on when each job arrived (evaluation runs are
    /// reproducible; batched and lone products may round differently). A group takes one
    /// place in the queue.
    #[allow(clippy::result_large_err)]
    pub fn submit_all(&self, jobs: Vec<Job>) -> std::result::Result<(), Vec<Job>> {
        let n = jobs.len() as u64;
        match self.tx.try_send(jobs) {
            Ok(()) => {
                self.metrics.questions.inc_by(n);
                self.metrics.queue_depth.add(n as i64);
                Ok(())
            }
            Err(TrySendError::Full(j)) | Err(TrySendError::Disconnected(j)) => Err(j),
        }
    }

    /// The cache key of an image for this model: the model, the image bytes, and the MGVQ
    /// codes a client sent with it (or none, for codes the worker computes). A compression
    /// made from a client's codes is found again only by someone who sends the same codes.
    pub fn image_key(&self, bytes: &[u8], codes: Option<&[Vec<u16>]>) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.card.name.as_bytes());
        h.update([0u8]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
        match codes {
            None => h.update(b"worker-encoded"),
            Some(rows) => {
                h.update(b"client-codes");
                for row in rows {
                    h.update((row.len() as u32).to_le_bytes());
                    for c in row {
                        h.update(c.to_le_bytes());
                    }
                }
            }
        }
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::sampling::Sampling;
    use htc_shared::protocol::ServerMessage;
    use std::sync::atomic::AtomicBool;

    fn job(i: u32, shade: u8) -> (Job, tokio::sync::mpsc::UnboundedReceiver<ServerMessage>) {
        let image = image::RgbImage::from_pixel(64, 64, image::Rgb([shade, 100, 200]));
        let mut key = [0u8; 32];
        key[0] = shade;
        let (reply, rx) = tokio::sync::mpsc::unbounded_channel();
        let job = Job {
            request_id: i,
            image: Some(UploadedImage { image: image.into(), codes: None, key }),
            question: Question::new(None, Some(vec![1, 5, 7]), 100).unwrap(),
            sampling: Sampling::greedy(2),
            mode: None,
            cancel: Arc::new(AtomicBool::new(false)),
            reply,
        };
        (job, rx)
    }

    /// Jobs given together are admitted in one step: their new images are compressed as one
    /// batch (each answer reports the batch's one compression time), whatever the timing.
    #[test]
    fn jobs_submitted_together_are_compressed_as_one_batch() {
        let engine = Engine::start(EngineConfig {
            model: None,
            queue: 4,
            cache_capacity: 8,
            verify_client_codes: VerifyCodes::Off,
            max_batch: 3,
            max_compress_batch: 3,
            mode: None,
            require_images: true,
        })
        .unwrap();
        let (jobs, rxs): (Vec<_>, Vec<_>) = (0..3).map(|i| job(i, 10 * i as u8)).unzip();
        assert!(engine.submit_all(jobs).is_ok());
        let times: Vec<f64> = rxs
            .into_iter()
            .map(|mut rx| loop {
                match rx.blocking_recv().expect("a reply") {
                    ServerMessage::Done { cached, timings, .. } => {
                        assert!(!cached, "three distinct images");
                        break timings.compress_ms;
                    }
                    ServerMessage::Error { message, .. } => panic!("{message}"),
                    _ => {}
                }
            })
            .collect();
        assert!(times[0] > 0.0);
        assert!(times.iter().all(|&t| t == times[0]), "one batch, one compression time: {times:?}");
    }
}
