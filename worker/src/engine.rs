//! The inference engine behind the server: one model instance on its own thread, a bounded
//! job queue, and an LRU of compressed images keyed by a content hash of (image bytes,
//! model id). A follow-up question on a cached image skips the ViT, MGVQ and compression.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::{Tensor, TensorData};
use image::RgbImage;
use lru::LruCache;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::UnboundedSender;

use htc_shared::config::{ClipVisionConfig, HtcConfig, HtcMode, LlamaConfig, ProjectorKind};
use htc_shared::mask::Topology;
use htc_shared::preprocess::ClipPreprocess;
use htc_shared::protocol::{ErrorCode, ModelCard, ServerMessage, Timings};

use crate::backend::{self, Backend};
use crate::chat::{StreamDecoder, TextTokenizer};
use crate::generate::{sample, Sampling};
use crate::models::htc::{CompressedImage, Htc, ImageInputs};
use crate::models::llama::{KvCache, Step};
use crate::models::llava::{self, Layout, Llava};
use crate::snapshot::{AnyModel, Snapshot};
use crate::weights::Loader;
use rand::{rngs::StdRng, SeedableRng};

/// Prometheus metrics of the engine and the server (`/metrics`).
pub struct Metrics {
    pub registry: prometheus::Registry,
    pub questions: prometheus::IntCounter,
    pub cache_hits: prometheus::IntCounter,
    pub compressions: prometheus::IntCounter,
    pub tokens: prometheus::IntCounter,
    pub cancelled: prometheus::IntCounter,
    pub errors: prometheus::IntCounterVec,
    pub connections: prometheus::IntGauge,
    pub answer_seconds: prometheus::Histogram,
}

impl Metrics {
    pub fn new() -> Result<Self> {
        use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
        let registry = Registry::new();
        let questions = IntCounter::new("htc_questions_total", "Questions accepted into the queue")?;
        let cache_hits =
            IntCounter::new("htc_cache_hits_total", "Questions answered from a cached compressed image")?;
        let compressions =
            IntCounter::new("htc_compressions_total", "Images compressed (ViT, MGVQ and the voco prefix)")?;
        let tokens = IntCounter::new("htc_generated_tokens_total", "Tokens generated")?;
        let cancelled = IntCounter::new("htc_cancelled_total", "Answers stopped by cancel or disconnect")?;
        let errors =
            IntCounterVec::new(Opts::new("htc_errors_total", "Error frames sent, by code"), &["code"])?;
        let connections = IntGauge::new("htc_open_connections", "Open WebSocket connections")?;
        let answer_seconds = Histogram::with_opts(HistogramOpts::new(
            "htc_answer_seconds",
            "Wall time of an answer, queue excluded",
        ))?;
        for c in [&questions, &cache_hits, &compressions, &tokens, &cancelled] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(answer_seconds.clone()))?;
        Ok(Self {
            registry,
            questions,
            cache_hits,
            compressions,
            tokens,
            cancelled,
            errors,
            connections,
            answer_seconds,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = String::new();
        let enc = prometheus::TextEncoder::new();
        if let Err(e) = enc.encode_utf8(&self.registry.gather(), &mut buf) {
            tracing::warn!("cannot encode metrics: {e}");
        }
        buf
    }
}

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A model directory; `None` gives the randomly initialised HTC demo model.
    pub model: Option<PathBuf>,
    /// Jobs waiting for the model; more are answered `busy`.
    pub queue: usize,
    /// Compressed images kept.
    pub cache_capacity: usize,
    /// Use client MGVQ codes without recomputing them.
    pub trust_client_codes: bool,
    /// Answers decoded together, one token each per batched step.
    pub max_batch: usize,
}

/// An uploaded image, decoded and hashed.
#[derive(Clone)]
pub struct ImageData {
    pub image: Arc<RgbImage>,
    /// Client MGVQ codes `[h*w][G]`, already checked for shape and range.
    pub codes: Option<Arc<Vec<Vec<u16>>>>,
    /// SHA-256 of (model id, image bytes).
    pub key: [u8; 32],
}

/// The question of an `ask`.
#[derive(Debug, Clone)]
pub enum Question {
    Text(String),
    Ids(Vec<u32>),
}

/// One question to answer.
pub struct Job {
    pub request_id: u32,
    pub image: ImageData,
    pub question: Question,
    pub sampling: Sampling,
    pub cancel: Arc<AtomicBool>,
    pub reply: UnboundedSender<ServerMessage>,
}

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
            let start = crate::weights::TENSORS_READ.load(Ordering::Relaxed);
            while l.load(Ordering::Relaxed) {
                b.set_message(format!(
                    "{} tensors",
                    crate::weights::TENSORS_READ.load(Ordering::Relaxed) - start
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
            let state = match EngineState::load(&cfg, m) {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(s.card.clone()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut state = state;
            let max_batch = cfg.max_batch.max(1);
            let mut active: Vec<Active> = Vec::new();
            loop {
                // Admit: block when idle, then take whatever else is waiting (up to the batch).
                if active.is_empty() {
                    match rx.recv() {
                        Ok(job) => state.admit_or_report(job, &mut active),
                        Err(_) => break,
                    }
                }
                while active.len() < max_batch {
                    match rx.try_recv() {
                        Ok(job) => state.admit_or_report(job, &mut active),
                        Err(_) => break,
                    }
                }
                if !active.is_empty() {
                    state.step(&mut active);
                }
            }
        })?;
        let card = ready_rx.recv().map_err(|_| anyhow!("the engine thread stopped while loading"))??;
        Ok(Self { tx, card, metrics })
    }

    /// Queues a job, or gives it back when the queue is full.
    pub fn submit(&self, job: Job) -> std::result::Result<(), Job> {
        match self.tx.try_send(job) {
            Ok(()) => {
                self.metrics.questions.inc();
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

/// Errors the engine raises with a protocol code.
#[derive(Debug)]
struct Coded(ErrorCode, String);
impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}
impl std::error::Error for Coded {}

fn code_of(e: &anyhow::Error) -> ErrorCode {
    e.downcast_ref::<Coded>().map(|c| c.0).unwrap_or(ErrorCode::Internal)
}

struct EngineState {
    model: Htc<Backend>,
    preprocess: ClipPreprocess,
    tokenizer: Option<TextTokenizer>,
    cache: LruCache<[u8; 32], Arc<CompressedImage<Backend>>>,
    trust_client_codes: bool,
    card: ModelCard,
    metrics: Arc<Metrics>,
}

/// The demo model: LLaVA-shaped (CLIP at 336 px with 576 patches) with MGVQ f16c32_g8's
/// geometry at reduced width, random weights, mode `htc`.
pub fn demo_configs() -> (llava::Config, HtcConfig) {
    let vision = ClipVisionConfig {
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_channels: 3,
        image_size: 336,
        patch_size: 14,
        layer_norm_eps: 1e-5,
    };
    let text = LlamaConfig::from_json(&serde_json::json!({
        "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5
    }))
    .expect("valid demo config");
    let mut mgvq = htc_shared::mgvq::Config::f16c32_g8();
    mgvq.width_list = vec![32, 32, 64, 64, 128];
    mgvq.depth_list = vec![0, 1, 1, 1, 1];
    let l = llava::Config {
        layout: Layout::LlavaHf,
        text,
        vision,
        image_token_id: 511,
        select_layer: -2,
        projector_mlp: true,
    };
    let h = HtcConfig {
        mode: HtcMode::Htc,
        n_discrete: 4,
        n_voco: 1,
        topology: Topology::Star,
        continuous_projector: ProjectorKind::Mlp2xGelu,
        discrete_hidden: 256,
        mgvq: Some(mgvq),
    };
    (l, h)
}

impl EngineState {
    fn load(cfg: &EngineConfig, metrics: Arc<Metrics>) -> Result<Self> {
        let device = backend::device();
        let (model, preprocess, tokenizer, name, random) = match &cfg.model {
            None => {
                tracing::info!("no --model given: using the randomly initialised HTC demo model");
                let (l, h) = demo_configs();
                let src = crate::demo::random_htc(&l, &h, 0);
                let vb = Loader::<Backend>::new(&src, &device);
                let m = Htc::load(&vb, Llava::load(&vb, &l)?, &h)?;
                (m, ClipPreprocess::llava(336), None, "htc-demo-random".to_string(), true)
            }
            Some(p) => {
                tracing::info!(model = %p.display(), "loading model");
                let snap = Snapshot::<Backend>::open(p, &device)?;
                let (m, pre) = match snap.model {
                    AnyModel::Htc { model, preprocess, .. } => (model, preprocess),
                    AnyModel::Llava { model, preprocess, .. } => (Htc::from_llava(model), preprocess),
                    AnyModel::Llama(_) => bail!(
                        "the server needs an image model (LLaVA or HTC); {} is a plain LLaMA",
                        p.display()
                    ),
                };
                (m, pre, snap.tokenizer, p.display().to_string(), false)
            }
        };
        let c = model.llava.llm.config();
        let layout = model.layout(0);
        let card = ModelCard {
            name,
            architecture: if model.config.mode == HtcMode::None { "llava".into() } else { "htc".into() },
            random_init: random,
            backend: backend::name().into(),
            mode: Some(model.config.mode),
            n_discrete: layout.n_discrete,
            n_voco: layout.n_voco,
            image_size: preprocess.crop.0 as usize,
            image_tokens: layout.n_visual,
            hidden_size: c.hidden_size,
            layers: c.num_hidden_layers,
            vocab_size: c.vocab_size,
            has_tokenizer: tokenizer.is_some(),
            codebook_size: model.config.mgvq.as_ref().map(|m| m.codebook_size),
            mgvq: model.config.mgvq.clone(),
        };
        let cap = NonZeroUsize::new(cfg.cache_capacity.max(1)).expect("max(1)");
        Ok(Self {
            model,
            preprocess,
            tokenizer,
            cache: LruCache::new(cap),
            trust_client_codes: cfg.trust_client_codes,
            card,
            metrics,
        })
    }

    fn compress(&mut self, img: &ImageData, timings: &mut Timings) -> Result<Arc<CompressedImage<Backend>>> {
        let device = backend::device();
        let t = Instant::now();
        let s = self.preprocess.crop.0 as usize;
        let clip = Tensor::<Backend, 4>::from_data(
            TensorData::new(self.preprocess.apply(&img.image), [1, 3, s, s]),
            &device,
        );
        let mgvq = match (&self.model.config.mgvq, self.model.config.uses_discrete()) {
            (Some(mc), true) => {
                let m = mc.image_size;
                Some(Tensor::<Backend, 4>::from_data(
                    TensorData::new(htc_shared::mgvq::preprocess(&img.image, m as u32), [1, 3, m, m]),
                    &device,
                ))
            }
            _ => None,
        };
        timings.preprocess_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let mut inputs = ImageInputs { clip, mgvq, codes: None };
        if let (Some(client), Some(m)) = (&img.codes, &self.model.mgvq) {
            if self.trust_client_codes {
                inputs.codes = Some(client.as_ref().clone());
            } else {
                let px = inputs.mgvq.clone().ok_or_else(|| anyhow!("no MGVQ input"))?;
                let ours = m.encode(px)?.codes;
                let differ = ours.iter().zip(client.iter()).filter(|(a, b)| a != b).count();
                if ours.len() != client.len() || differ > 0 {
                    return Err(Coded(ErrorCode::CodesMismatch, format!("client MGVQ codes differ from the worker's at {differ} of {} positions (start the worker with --trust-client-codes to use them anyway)", ours.len())).into());
                }
            }
        }
        let c = Arc::new(self.model.compress(&inputs)?);
        self.metrics.compressions.inc();
        timings.compress_ms = t.elapsed().as_secs_f64() * 1e3;
        self.cache.put(img.key, c.clone());
        Ok(c)
    }

    fn admit_or_report(&mut self, job: Job, active: &mut Vec<Active>) {
        let (id, reply) = (job.request_id, job.reply.clone());
        if let Err(e) = self.admit(job, active) {
            let code = code_of(&e);
            self.metrics.errors.with_label_values(&[&format!("{code:?}")]).inc();
            let _ =
                reply.send(ServerMessage::Error { request_id: Some(id), code, message: format!("{e:#}") });
        }
    }

    /// Prepares a question: its ids, the compressed image (from the cache or compressed now)
    /// and the prefill of its text; emits its first token and joins the decoding batch.
    fn admit(&mut self, job: Job, active: &mut Vec<Active>) -> Result<()> {
        let start = Instant::now();
        let mut timings = Timings::default();
        if job.cancel.load(Ordering::Relaxed) {
            self.metrics.cancelled.inc();
            let _ = job.reply.send(ServerMessage::Done {
                request_id: job.request_id,
                cached: false,
                tokens: 0,
                cancelled: true,
                timings,
            });
            return Ok(());
        }
        let ids: Vec<u32> = match &job.question {
            Question::Ids(ids) => ids.clone(),
            Question::Text(q) => {
                let tok = self.tokenizer.as_ref().ok_or_else(|| {
                    Coded(
                        ErrorCode::BadRequest,
                        "this model has no tokenizer; send `prompt_ids` instead of `question`".into(),
                    )
                })?;
                tok.question_ids(q, true)?
            }
        };
        let vocab = self.model.llava.llm.config().vocab_size;
        if ids.is_empty() || ids.iter().any(|&i| i as usize >= vocab) {
            bail!(Coded(
                ErrorCode::BadRequest,
                format!("the question must be 1 or more token ids below {vocab}")
            ));
        }
        let (compressed, cached) = match self.cache.get(&job.image.key) {
            Some(c) => {
                self.metrics.cache_hits.inc();
                (c.clone(), true)
            }
            None => (self.compress(&job.image, &mut timings).context("compressing the image")?, false),
        };
        let llm = &self.model.llava.llm;
        let prompt = self.model.answer_prompt(&compressed, &ids)?;
        let t = ids.len();
        let positions: Vec<usize> = (prompt.first_position..prompt.first_position + t).collect();
        let mut cache = prompt.cache;
        let out = llm.forward(
            prompt.embeds,
            Step { positions: &positions, mask: prompt.mask, want_attention: false },
            &mut cache,
        );
        let [_, _, d] = out.hidden.dims();
        let last = llm.logits(out.hidden.slice([0..1, t - 1..t, 0..d]));
        let row = last.into_data().to_vec::<f32>().map_err(|e| anyhow!("cannot read logits: {e:?}"))?;
        let stop = match &self.tokenizer {
            Some(t) => t.eos_ids.clone(),
            None => llm.config().eos_token_ids.clone(),
        };
        let mut a = Active {
            rng: StdRng::seed_from_u64(job.sampling.seed),
            job,
            cache,
            next_pos: positions[t - 1] + 1,
            last: 0,
            n: 0,
            decoder: StreamDecoder::new(),
            compressed,
            cached,
            timings,
            start,
            gen_start: Instant::now(),
            first_ms: None,
            stop,
        };
        if self.accept(&mut a, &row) {
            active.push(a);
        } else {
            self.finish(a);
        }
        Ok(())
    }

    /// Samples the next token of `a` from `logits`, streams it, and says whether `a` goes on.
    fn accept(&self, a: &mut Active, logits: &[f32]) -> bool {
        let id = sample(logits, &a.job.sampling, &mut a.rng);
        if a.stop.contains(&id) {
            return false;
        }
        a.first_ms.get_or_insert_with(|| a.start.elapsed().as_secs_f64() * 1e3);
        a.n += 1;
        a.last = id;
        self.metrics.tokens.inc();
        let tok = self.tokenizer.as_ref().map(|t| &t.inner);
        let text = tok.and_then(|t| a.decoder.push(t, id).ok().flatten()).unwrap_or_default();
        let _ = a.job.reply.send(ServerMessage::Token { request_id: a.job.request_id, id, text });
        a.n < a.job.sampling.max_new_tokens && !a.job.cancel.load(Ordering::Relaxed)
    }

    /// One batched decoding step for every active answer; finished ones leave.
    fn step(&mut self, active: &mut Vec<Active>) {
        let llm = &self.model.llava.llm;
        let ids: Vec<u32> = active.iter().map(|a| a.last).collect();
        let positions: Vec<usize> = active.iter().map(|a| a.next_pos).collect();
        let mut caches: Vec<KvCache<Backend>> =
            active.iter_mut().map(|a| std::mem::replace(&mut a.cache, KvCache::new(0))).collect();
        let logits = llm.decode_batch(&ids, &positions, &mut caches);
        let vocab = llm.config().vocab_size;
        let rows = match logits.into_data().to_vec::<f32>() {
            Ok(r) => r,
            Err(e) => {
                for a in active.drain(..) {
                    let _ = a.job.reply.send(ServerMessage::Error {
                        request_id: Some(a.job.request_id),
                        code: ErrorCode::Internal,
                        message: format!("cannot read logits: {e:?}"),
                    });
                }
                return;
            }
        };
        let mut keep = Vec::with_capacity(active.len());
        for (i, (mut a, c)) in active.drain(..).zip(caches).enumerate() {
            a.cache = c;
            a.next_pos += 1;
            if self.accept(&mut a, &rows[i * vocab..(i + 1) * vocab]) {
                keep.push(a);
            } else {
                self.finish(a);
            }
        }
        *active = keep;
    }

    /// Sends the attention map and `done` for a finished answer.
    fn finish(&self, a: Active) {
        let cancelled = a.job.cancel.load(Ordering::Relaxed);
        let c = &a.compressed;
        if c.layout.n_voco > 0 && !cancelled {
            let layers = c.voco_attention.iter().map(|l| l[0].clone()).collect();
            let _ = a.job.reply.send(ServerMessage::Attention {
                request_id: a.job.request_id,
                n_discrete: c.layout.n_discrete,
                n_visual: c.layout.n_visual,
                layers,
            });
        }
        let mut timings = a.timings;
        timings.first_token_ms = a.first_ms.unwrap_or(0.0);
        timings.total_ms = a.start.elapsed().as_secs_f64() * 1e3;
        let gen_s = a.gen_start.elapsed().as_secs_f64();
        timings.tokens_per_s = if gen_s > 0.0 { a.n as f64 / gen_s } else { 0.0 };
        if cancelled {
            self.metrics.cancelled.inc();
        }
        self.metrics.answer_seconds.observe(a.start.elapsed().as_secs_f64());
        let _ = a.job.reply.send(ServerMessage::Done {
            request_id: a.job.request_id,
            cached: a.cached,
            tokens: a.n,
            cancelled,
            timings,
        });
    }
}

/// An answer being decoded.
struct Active {
    job: Job,
    cache: KvCache<Backend>,
    /// RoPE position of the token fed next.
    next_pos: usize,
    /// The token fed next (the last one emitted).
    last: u32,
    n: usize,
    rng: StdRng,
    decoder: StreamDecoder,
    compressed: Arc<CompressedImage<Backend>>,
    cached: bool,
    timings: Timings,
    start: Instant,
    gen_start: Instant,
    first_ms: Option<f64>,
    stop: Vec<u32>,
}
