//! The engine thread's state and loop: the model, its tokenizer, the LRU of compressed images,
//! and the answers being decoded together. Questions waiting together are admitted together
//! (ids checked; the images the cache lacks compressed as one batch per mode; each prefilled),
//! then every active answer advances one token per batched step.

use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use lru::LruCache;

use htc_shared::config::HtcMode;
use htc_shared::preprocess::ClipPreprocess;
use htc_shared::protocol::{ErrorCode, ModelCard, ProtocolError, ServerMessage, Timings};

use super::job::{EngineConfig, Job, Question, UploadedImage};
use super::metrics::Metrics;
use crate::backend::{self, Backend};
use crate::formats::checkpoint::{AnyModel, Snapshot};
use crate::formats::random;
use crate::models::htc::{CompressedImage, Htc};
use crate::runtime::decode::{step_batch, stop_ids, Sequence};
use crate::runtime::error::Coded;
use crate::runtime::image::image_tensors;
use crate::text::{StreamDecoder, TextTokenizer};

pub(super) struct EngineState {
    model: Htc<Backend>,
    /// The same weights in the other modes the card offers (`none` beside a compressed mode):
    /// module clones, sharing the tensors.
    alternates: Vec<(HtcMode, Htc<Backend>)>,
    preprocess: ClipPreprocess,
    tokenizer: Option<TextTokenizer>,
    cache: LruCache<[u8; 32], Arc<CompressedImage<Backend>>>,
    trust_client_codes: bool,
    max_compress_batch: usize,
    pub(super) card: ModelCard,
    metrics: Arc<Metrics>,
}

/// An image compressed for a question, with its preprocessing and compression times, or why not.
type Compressed = Result<(Arc<CompressedImage<Backend>>, Timings), ProtocolError>;

/// A question checked and ready but for its compressed image.
struct Prepared {
    job: Job,
    ids: Vec<u32>,
    /// The model in the asked mode: `None` for the served one, else an index in `alternates`.
    alternate: Option<usize>,
    /// The compressed image's cache key (per mode).
    key: [u8; 32],
    start: Instant,
}

/// An answer being decoded.
struct Active {
    job: Job,
    seq: Sequence<Backend>,
    decoder: StreamDecoder,
    compressed: Arc<CompressedImage<Backend>>,
    cached: bool,
    timings: Timings,
    start: Instant,
    gen_start: Instant,
    first_ms: Option<f64>,
    /// The compressed image's kept positions plus the text tokens.
    prompt_tokens: usize,
}

/// The name a model is served under (the OpenAI `model` field, the model card): its folder or
/// file name, as `shapes-demo` or `llava-1.5-7b-hf`, not the path, which would tell every
/// client how the host's disks are laid out; a checkpoint keeps its run's name too
/// (`run/checkpoint-1000`).
pub(crate) fn served_name(p: &std::path::Path) -> String {
    let name = |q: &std::path::Path| q.file_name().map(|n| n.to_string_lossy().to_string());
    match name(p) {
        Some(n) if n.starts_with("checkpoint-") => match p.parent().and_then(name) {
            Some(run) => format!("{run}/{n}"),
            None => n,
        },
        Some(n) => n,
        None => p.display().to_string(),
    }
}

/// The cache key of an image compressed in another mode than the model's own.
fn mode_key(key: &[u8; 32], mode: HtcMode) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(key);
    h.update(format!("{mode:?}").as_bytes());
    h.finalize().into()
}

impl EngineState {
    pub(super) fn load(cfg: &EngineConfig, metrics: Arc<Metrics>) -> Result<Self> {
        let device = backend::device();
        let (model, preprocess, tokenizer, name, random) = match &cfg.model {
            None => {
                tracing::info!("no --model given: using the randomly initialised HTC demo model");
                let (m, pre) = random::demo_model::<Backend>(&device)?;
                (m, pre, None, random::DEMO_NAME.to_string(), true)
            }
            Some(p) => {
                tracing::info!(model = %p.display(), "loading model");
                let snap = Snapshot::<Backend>::open(p, &device)?;
                let (m, pre) = match snap.model {
                    AnyModel::Htc { model, preprocess, .. } => (model, preprocess),
                    AnyModel::Llava { model, preprocess, .. } => (Htc::from_llava(model), preprocess),
                    AnyModel::Llama(_) => anyhow::bail!(
                        "the server needs an image model (LLaVA or HTC); {} is a plain LLaMA",
                        p.display()
                    ),
                };
                (m, pre, snap.tokenizer, served_name(p), false)
            }
        };
        let model = match cfg.mode {
            Some(mode) => model.with_mode(mode, false)?,
            None => model,
        };
        let model = model.with_row_split(backend::row_split()).with_kv_dtype(crate::runtime::kv_dtype());
        // Mode `none` (all patches, no bottleneck) beside a compressed mode, for comparison.
        let alternates: Vec<(HtcMode, Htc<Backend>)> = match model.config.mode {
            HtcMode::None => vec![],
            _ => model
                .clone()
                .with_mode(HtcMode::None, false)
                .ok()
                .map(|m| (HtcMode::None, m))
                .into_iter()
                .collect(),
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
            modes: std::iter::once(model.config.mode).chain(alternates.iter().map(|a| a.0)).collect(),
            // Filled by `Engine::start` from the model directory's `about.json`.
            about: None,
            samples: Vec::new(),
        };
        let cap = NonZeroUsize::new(cfg.cache_capacity.max(1)).expect("max(1)");
        Ok(Self {
            model,
            alternates,
            preprocess,
            tokenizer,
            cache: LruCache::new(cap),
            trust_client_codes: cfg.trust_client_codes,
            max_compress_batch: cfg.max_compress_batch,
            card,
            metrics,
        })
    }

    /// Admits queued jobs (blocking while idle) and decodes until the queue closes.
    pub(super) fn run(mut self, rx: Receiver<Vec<Job>>, max_batch: usize) {
        let mut active: Vec<Active> = Vec::new();
        loop {
            // Admit: block when idle, then take whatever else is waiting (up to the batch),
            // and admit them together (their new images compressed as one batch).
            let mut jobs = Vec::new();
            if active.is_empty() {
                match rx.recv() {
                    Ok(group) => jobs.extend(group),
                    Err(_) => break,
                }
            }
            while active.len() + jobs.len() < max_batch.max(1) {
                match rx.try_recv() {
                    Ok(group) => jobs.extend(group),
                    Err(_) => break,
                }
            }
            // The model's work runs on the pool its kernels use (see `backend::on_pool`);
            // waiting for jobs stays outside it, which keeps the pool's threads free meanwhile.
            backend::on_pool(|| {
                if !jobs.is_empty() {
                    self.metrics.queue_depth.sub(jobs.len() as i64);
                    self.admit_all(jobs, &mut active);
                }
                self.metrics.active.set(active.len() as i64);
                if !active.is_empty() {
                    self.step(&mut active);
                }
            });
            if active.is_empty() {
                self.metrics.active.set(0);
            }
        }
    }

    fn model_for(&self, alternate: Option<usize>) -> &Htc<Backend> {
        match alternate {
            Some(i) => &self.alternates[i].1,
            None => &self.model,
        }
    }

    fn report(
        &self, request_id: u32, reply: &tokio::sync::mpsc::UnboundedSender<ServerMessage>, e: ProtocolError,
    ) {
        self.metrics.errors.with_label_values(&[&format!("{:?}", e.code)]).inc();
        let _ = reply.send(e.to_message(Some(request_id)));
    }

    /// Compresses `images` with `model` (the served model or one of its other modes) in one
    /// batch: each image is preprocessed and its client codes checked on its own (a failure
    /// stays with that image), then the images that passed are compressed together. Each
    /// result carries the image's preprocessing time and the batch's compression time.
    fn compress_many(&self, model: &Htc<Backend>, images: &[&UploadedImage]) -> Vec<Compressed> {
        let device = backend::device();
        let internal = ErrorCode::Internal;
        let uses_codes = model.config.uses_discrete();
        let prepared: Vec<Result<(crate::models::htc::ImageTensors<Backend>, Timings), ProtocolError>> = images
            .iter()
            .map(|img| {
                let t = Instant::now();
                let mut timings = Timings::default();
                let mut inputs = image_tensors(model, &self.preprocess, &img.image, &device).coded(internal)?;
                timings.preprocess_ms = t.elapsed().as_secs_f64() * 1e3;
                if let (Some(client), Some(m), true) = (&img.codes, &model.mgvq, uses_codes) {
                    if self.trust_client_codes {
                        inputs.codes = Some(client.as_ref().clone());
                    } else {
                        let px = inputs.mgvq.clone().context("no MGVQ input").coded(internal)?;
                        let ours = m.encode(px).coded(internal)?.codes;
                        let differ = ours.iter().zip(client.iter()).filter(|(a, b)| a != b).count();
                        if ours.len() != client.len() || differ > 0 {
                            return Err(ProtocolError::new(
                                ErrorCode::CodesMismatch,
                                format!(
                                    "client MGVQ codes differ from the worker's at {differ} of {} positions (start \
                                     the worker with --trust-client-codes to use them anyway)",
                                    ours.len()
                                ),
                            ));
                        }
                    }
                }
                Ok((inputs, timings))
            })
            .collect();
        // Trusted client codes replace the MGVQ encoder for some images only: those batches
        // stay apart from the ones the worker encodes.
        let mut results: Vec<Option<Compressed>> = vec![None; images.len()];
        let mut groups: [Vec<(usize, crate::models::htc::ImageTensors<Backend>, Timings)>; 2] =
            [vec![], vec![]];
        for (i, p) in prepared.into_iter().enumerate() {
            match p {
                Ok((inputs, timings)) => {
                    groups[usize::from(inputs.codes.is_some())].push((i, inputs, timings))
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let limit = self.max_compress_batch.max(1);
        let chunks = groups.into_iter().flat_map(|g| {
            let mut g = g.into_iter().peekable();
            std::iter::from_fn(move || {
                g.peek()?;
                Some(g.by_ref().take(limit).collect::<Vec<_>>())
            })
            .collect::<Vec<_>>()
        });
        for group in chunks {
            let t = Instant::now();
            let (idx, rest): (Vec<usize>, Vec<_>) = group.into_iter().map(|(i, x, tm)| (i, (x, tm))).unzip();
            let (inputs, timings): (Vec<_>, Vec<Timings>) = rest.into_iter().unzip();
            match model.compress_batch(&inputs).context("compressing the image").coded(internal) {
                Ok(done) => {
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    self.metrics.compressions.inc_by(done.len() as u64);
                    self.metrics.compression_batch.observe(done.len() as f64);
                    for ((i, c), mut timings) in idx.into_iter().zip(done).zip(timings) {
                        timings.compress_ms = ms;
                        results[i] = Some(Ok((Arc::new(c), timings)));
                    }
                }
                Err(e) => {
                    for i in idx {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        results.into_iter().map(|r| r.expect("every image has a result")).collect()
    }

    /// Admits a batch of jobs: each question's ids and mode are checked; the images the cache
    /// lacks are compressed, one batch per mode, each image once; then every question is
    /// prefilled, answers its first token and joins the decoding batch.
    fn admit_all(&mut self, jobs: Vec<Job>, active: &mut Vec<Active>) {
        let mut ready = Vec::new();
        for job in jobs {
            let (id, reply) = (job.request_id, job.reply.clone());
            match self.prepare(job) {
                Ok(Some(p)) => ready.push(p),
                Ok(None) => {}
                Err(e) => self.report(id, &reply, e),
            }
        }
        // The images to compress, per model: distinct keys, first asker first.
        let mut hits: Vec<Option<Arc<CompressedImage<Backend>>>> = Vec::with_capacity(ready.len());
        let mut wanted: Vec<(Option<usize>, [u8; 32], usize)> = Vec::new();
        for (i, p) in ready.iter().enumerate() {
            let hit = self.cache.get(&p.key).cloned();
            if hit.is_none() && !wanted.iter().any(|w| w.1 == p.key) {
                wanted.push((p.alternate, p.key, i));
            }
            hits.push(hit);
        }
        // Each freshly compressed image, and whether a question of this batch used it yet.
        type Fresh = ([u8; 32], Compressed, bool);
        let mut fresh: Vec<Fresh> = Vec::new();
        let mut models: Vec<Option<usize>> = wanted.iter().map(|w| w.0).collect();
        models.sort();
        models.dedup();
        for alt in models {
            let group: Vec<&(Option<usize>, [u8; 32], usize)> =
                wanted.iter().filter(|w| w.0 == alt).collect();
            let images: Vec<&UploadedImage> = group.iter().map(|w| &ready[w.2].job.image).collect();
            let done = self.compress_many(self.model_for(alt), &images);
            fresh.extend(group.iter().zip(done).map(|(w, r)| (w.1, r, false)));
        }
        for (key, r, _) in &fresh {
            if let Ok((c, _)) = r {
                self.cache.put(*key, c.clone());
            }
        }
        for (p, hit) in ready.into_iter().zip(hits) {
            let (id, reply) = (p.job.request_id, p.job.reply.clone());
            // An image compressed in this batch counts as compressed for its first question and
            // as a cache hit for the others, as if they had come one after another.
            let found = match hit {
                Some(c) => Ok((c, true, None)),
                None => match fresh.iter_mut().find(|f| f.0 == p.key).expect("compressed above") {
                    (_, Ok((c, t)), used @ false) => {
                        *used = true;
                        Ok((c.clone(), false, Some(*t)))
                    }
                    (_, Ok((c, _)), true) => Ok((c.clone(), true, None)),
                    (_, Err(e), _) => Err(e.clone()),
                },
            };
            if let Ok((_, true, _)) = &found {
                self.metrics.cache_hits.inc();
            }
            let started = found.and_then(|(c, cached, t)| self.start_answer(p, c, cached, t, active));
            if let Err(e) = started {
                self.report(id, &reply, e);
            }
        }
    }

    /// A job's ids and model, checked: `None` when it was cancelled while queued (reported).
    fn prepare(&mut self, job: Job) -> Result<Option<Prepared>, ProtocolError> {
        let start = Instant::now();
        if job.cancel.load(Ordering::Relaxed) {
            self.metrics.cancelled.inc();
            let done = ServerMessage::Done {
                request_id: job.request_id,
                cached: false,
                tokens: 0,
                prompt_tokens: 0,
                cancelled: true,
                timings: Timings::default(),
            };
            let _ = job.reply.send(done);
            return Ok(None);
        }
        let tok = || {
            self.tokenizer.as_ref().ok_or_else(|| {
                ProtocolError::new(
                    ErrorCode::BadRequest,
                    "this model has no tokenizer; send `prompt_ids` instead of `question`",
                )
            })
        };
        let ids: Vec<u32> = match &job.question {
            Question::Ids(ids) => ids.clone(),
            Question::Text(q) => tok()?.question_ids(q, true).coded(ErrorCode::Internal)?,
            Question::Chat(c) => tok()?.chat_ids(c).coded(ErrorCode::BadRequest)?,
        };
        self.model.llava.llm.check_ids(&ids).coded(ErrorCode::BadRequest)?;
        // The model in the asked mode; a compressed image is cached per mode.
        let (alternate, key) = match job.mode {
            Some(m) if m != self.model.config.mode => {
                let i = self.alternates.iter().position(|a| a.0 == m).ok_or_else(|| {
                    let offered: Vec<HtcMode> = self.card.modes.clone();
                    ProtocolError::new(
                        ErrorCode::BadRequest,
                        format!("mode {m:?} is not offered by this model (it answers in {offered:?})"),
                    )
                })?;
                (Some(i), mode_key(&job.image.key, m))
            }
            _ => (None, job.image.key),
        };
        Ok(Some(Prepared { job, ids, alternate, key, start }))
    }

    /// Prefills a prepared question against its compressed image, emits its first token and
    /// joins the decoding batch (or finishes at once).
    fn start_answer(
        &self, p: Prepared, compressed: Arc<CompressedImage<Backend>>, cached: bool,
        timings: Option<Timings>, active: &mut Vec<Active>,
    ) -> Result<(), ProtocolError> {
        let Prepared { job, ids, alternate, start, .. } = p;
        let model = self.model_for(alternate);
        let llm = &self.model.llava.llm;
        let prompt = model.answer_prompt(&compressed, &ids).coded(ErrorCode::BadRequest)?;
        let prompt_tokens = compressed.kept_positions.len() + ids.len();
        let stop = stop_ids(self.tokenizer.as_ref(), llm);
        let (seq, logits, _) =
            Sequence::prefill(llm, prompt, job.sampling, stop, false).coded(ErrorCode::Internal)?;
        let mut a = Active {
            job,
            seq,
            decoder: StreamDecoder::new(),
            compressed,
            cached,
            timings: timings.unwrap_or_default(),
            start,
            gen_start: Instant::now(),
            first_ms: None,
            prompt_tokens,
        };
        if self.accept(&mut a, &logits) {
            active.push(a);
        } else {
            self.finish(a);
        }
        Ok(())
    }

    /// Takes the next token of `a` from `logits`, streams it, and says whether `a` goes on.
    fn accept(&self, a: &mut Active, logits: &[f32]) -> bool {
        let Some(id) = a.seq.accept(logits) else { return false };
        a.first_ms.get_or_insert_with(|| a.start.elapsed().as_secs_f64() * 1e3);
        self.metrics.tokens.inc();
        let tok = self.tokenizer.as_ref().map(|t| &t.inner);
        let text = tok.and_then(|t| a.decoder.push(t, id).ok().flatten()).unwrap_or_default();
        let _ = a.job.reply.send(ServerMessage::Token { request_id: a.job.request_id, id, text });
        a.seq.wants_more() && !a.job.cancel.load(Ordering::Relaxed)
    }

    /// One batched decoding step for every active answer; finished ones leave.
    fn step(&mut self, active: &mut Vec<Active>) {
        let llm = &self.model.llava.llm;
        let mut seqs: Vec<&mut Sequence<Backend>> = active.iter_mut().map(|a| &mut a.seq).collect();
        let rows = match step_batch(llm, &mut seqs) {
            Ok(r) => r,
            Err(e) => {
                let e = ProtocolError::new(ErrorCode::Internal, format!("{e:#}"));
                for a in active.drain(..) {
                    let _ = a.job.reply.send(e.to_message(Some(a.job.request_id)));
                }
                return;
            }
        };
        let mut keep = Vec::with_capacity(active.len());
        for (mut a, row) in active.drain(..).zip(rows) {
            if self.accept(&mut a, &row) {
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
        let request_id = a.job.request_id;
        if c.layout.n_voco > 0 && !cancelled {
            let layers = c.voco_attention.iter().map(|l| l[0].clone()).collect();
            let (n_discrete, n_visual) = (c.layout.n_discrete, c.layout.n_visual);
            let _ = a.job.reply.send(ServerMessage::Attention { request_id, n_discrete, n_visual, layers });
        }
        let mut timings = a.timings;
        timings.first_token_ms = a.first_ms.unwrap_or(0.0);
        timings.total_ms = a.start.elapsed().as_secs_f64() * 1e3;
        let gen_s = a.gen_start.elapsed().as_secs_f64();
        let tokens = a.seq.generated();
        timings.tokens_per_s = if gen_s > 0.0 { tokens as f64 / gen_s } else { 0.0 };
        if cancelled {
            self.metrics.cancelled.inc();
        }
        self.metrics.answer_seconds.observe(a.start.elapsed().as_secs_f64());
        let _ = a.job.reply.send(ServerMessage::Done {
            request_id,
            cached: a.cached,
            tokens,
            prompt_tokens: a.prompt_tokens,
            cancelled,
            timings,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::served_name;
    use std::path::Path;

    #[test]
    fn models_are_served_under_their_folder_name_not_their_path() {
        assert_eq!(served_name(Path::new("/home/me/models/shapes-demo")), "shapes-demo");
        assert_eq!(served_name(Path::new("models/shapes-demo/")), "shapes-demo");
        assert_eq!(served_name(Path::new("/srv/llava-1.5-7b-hf")), "llava-1.5-7b-hf");
        assert_eq!(served_name(Path::new("/data/smollm2.gguf")), "smollm2.gguf");
        assert_eq!(served_name(Path::new("/x/runs/demo/checkpoint-1000")), "demo/checkpoint-1000");
        assert_eq!(served_name(Path::new("checkpoint-5")), "checkpoint-5");
        assert_eq!(served_name(Path::new("/")), "/");
    }
}
