//! The engine thread's state and loop: the model, its tokenizer, the LRU of images made ready
//! (compressed, or a plain LLaVA's image features), and the answers being decoded together.
//! Questions waiting together are admitted together (ids checked; the images the cache lacks
//! made ready as one batch per mode; each prefilled), then every active answer advances one
//! token per batched step.

use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::Tensor;
use lru::LruCache;

use htc_shared::config::HtcMode;
use htc_shared::preprocess::ClipPreprocess;
use htc_shared::protocol::{ErrorCode, ModelCard, ProtocolError, ServerMessage, Timings};

use super::job::{EngineConfig, ImageData, Job, Question, UploadedImage, VerifyCodes};
use super::metrics::Metrics;
use crate::backend::{self, Backend};
use crate::formats::checkpoint::{AnyModel, Snapshot};
use crate::formats::random;
use crate::models::htc::{CompressedImage, Htc, ImageTensors};
use crate::models::llama::{Llama, Prompt};
use crate::models::llava::{self, expand_image_tokens, Llava};
use crate::runtime::decode::{step_batch, stop_ids, Sequence};
use crate::runtime::error::Coded;
use crate::runtime::image::{clip_pixels, image_tensors};
use crate::text::{StreamDecoder, TextTokenizer};

/// The model the engine serves, by how it reads an image.
#[allow(clippy::large_enum_variant)] // one per engine, held for its lifetime
enum Served {
    /// An HTC checkpoint (or the random demo model): each image is compressed once into the
    /// keys and values the text attends to, and a question is the text after them.
    Htc {
        model: Htc<Backend>,
        /// The same weights in the other modes the card offers (`none` beside a compressed
        /// mode): module clones, sharing the tensors.
        alternates: Vec<(HtcMode, Htc<Backend>)>,
        preprocess: ClipPreprocess,
    },
    /// A plain LLaVA: the image's projected features go where the prompt's image token is,
    /// inside the vicuna_v1 turn as LLaVA-1.5 lays out its prompt (the prompt `htc ask` has
    /// always given it, and the one the parity tests check against transformers). The keys of
    /// the image depend on the text before it, so the cache keeps the features and every
    /// question prefills its whole prompt.
    Llava { model: Llava<Backend>, config: llava::Config, preprocess: ClipPreprocess },
    /// A plain LLaMA (an HF snapshot or a GGUF file): text-only questions.
    Llama(Llama<Backend>),
}

impl Served {
    fn llm(&self) -> &Llama<Backend> {
        match self {
            Served::Htc { model, .. } => &model.llava.llm,
            Served::Llava { model, .. } => &model.llm,
            Served::Llama(m) => m,
        }
    }

    /// The image token id of a model whose prompt carries its image.
    fn marker(&self) -> Option<i64> {
        match self {
            Served::Llava { config, .. } => Some(config.image_token_id),
            Served::Htc { .. } | Served::Llama(_) => None,
        }
    }
}

/// What the cache keeps of an image, ready for questions about it.
enum ReadyImage {
    /// HTC: the compressed image.
    Compressed(CompressedImage<Backend>),
    /// A plain LLaVA: the projected image features `[1, patches, d]`.
    Features(Tensor<Backend, 3>),
}

pub(super) struct EngineState {
    served: Served,
    tokenizer: Option<TextTokenizer>,
    cache: LruCache<[u8; 32], Arc<ReadyImage>>,
    verify_client_codes: VerifyCodes,
    max_compress_batch: usize,
    pub(super) card: ModelCard,
    metrics: Arc<Metrics>,
}

/// An image made ready for a question, with its preprocessing and compression times, or why not.
type Made = Result<(Arc<ReadyImage>, Timings), ProtocolError>;

/// A question's token ids, checked.
enum PromptIds {
    /// Vocabulary ids: the text after a compressed image (HTC), or a whole text-only prompt.
    Vocab(Vec<u32>),
    /// A plain LLaVA's whole prompt, its image token expanded to one per image feature.
    Spliced(Vec<i64>),
}

/// A question checked and ready but for its image.
struct Prepared {
    job: Job,
    ids: PromptIds,
    /// The model in the asked mode: `None` for the served one, else an index in `alternates`.
    alternate: Option<usize>,
    /// The image's cache key (per mode); `None` for a question without an image.
    key: Option<[u8; 32]>,
    start: Instant,
}

/// An answer being decoded.
struct Active {
    job: Job,
    seq: Sequence<Backend>,
    decoder: StreamDecoder,
    image: Option<Arc<ReadyImage>>,
    cached: bool,
    timings: Timings,
    start: Instant,
    gen_start: Instant,
    first_ms: Option<f64>,
    /// The positions the answer attends to before its first token: a compressed image's kept
    /// positions plus the text, or the whole prompt.
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
        let (model, tokenizer, name, random) = match &cfg.model {
            None => {
                let (model, preprocess) = random::demo_model::<Backend>(&device)?;
                let model = AnyModel::Htc { model, config: random::demo_configs().0, preprocess };
                (model, None, random::DEMO_NAME.to_string(), true)
            }
            Some(p) => {
                let snap = Snapshot::<Backend>::open(p, &device)?;
                if cfg.require_images {
                    if let AnyModel::Llama(_) = snap.model {
                        anyhow::bail!(
                            "{} is a plain LLaMA, which takes no images; this needs an image model (LLaVA or HTC)",
                            p.display()
                        );
                    }
                }
                (snap.model, snap.tokenizer, served_name(p), false)
            }
        };
        let model = model.with_row_split(backend::row_split()).with_kv_dtype(crate::runtime::kv_dtype());
        let served = match model {
            AnyModel::Htc { model, preprocess, .. } => {
                let model = match cfg.mode {
                    Some(mode) => model.with_mode(mode, false)?,
                    None => model,
                };
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
                Served::Htc { model, alternates, preprocess }
            }
            AnyModel::Llava { model, config, preprocess } => match cfg.mode {
                None | Some(HtcMode::None) => Served::Llava { model, config, preprocess },
                Some(m) => anyhow::bail!(
                    "mode {m:?} needs an HTC checkpoint; a plain LLaVA answers as itself (mode None)"
                ),
            },
            AnyModel::Llama(m) => match cfg.mode {
                None => Served::Llama(m),
                Some(mode) => {
                    anyhow::bail!("mode {mode:?} is for image models; a plain LLaMA takes no images")
                }
            },
        };
        let card = card(&served, name, random, tokenizer.is_some());
        let cap = NonZeroUsize::new(cfg.cache_capacity.max(1)).expect("max(1)");
        Ok(Self {
            served,
            tokenizer,
            cache: LruCache::new(cap),
            verify_client_codes: cfg.verify_client_codes,
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

    fn report(
        &self, request_id: u32, reply: &tokio::sync::mpsc::UnboundedSender<ServerMessage>, e: ProtocolError,
    ) {
        self.metrics.errors.with_label_values(&[&format!("{:?}", e.code)]).inc();
        let _ = reply.send(e.to_message(Some(request_id)));
    }

    /// Makes `images` ready for the model in the asked mode (`alternate`, see [`Prepared`]):
    /// compressed (HTC) or turned into features (a plain LLaVA).
    fn make_ready(&self, alternate: Option<usize>, images: &[&UploadedImage]) -> Vec<Made> {
        match &self.served {
            Served::Htc { model, alternates, preprocess } => {
                let model = alternate.map_or(model, |i| &alternates[i].1);
                self.compress_many(model, preprocess, images)
            }
            Served::Llava { model, preprocess, .. } => {
                images.iter().map(|img| self.features(model, preprocess, img)).collect()
            }
            Served::Llama(_) => images
                .iter()
                .map(|_| Err(ProtocolError::new(ErrorCode::Internal, "a text-only model got an image")))
                .collect(),
        }
    }

    /// A plain LLaVA's features of one image, timed as preprocessing and compression are.
    fn features(&self, model: &Llava<Backend>, preprocess: &ClipPreprocess, img: &UploadedImage) -> Made {
        let device = backend::device();
        let size = model.vision.image_size();
        let t = Instant::now();
        let pixels = match &img.image {
            ImageData::Decoded(i) => clip_pixels(preprocess, i, size, &device).coded(ErrorCode::Internal)?,
            ImageData::PixelValues(p) => p.tensor(size, &device).coded(ErrorCode::BadRequest)?,
        };
        let mut timings = Timings { preprocess_ms: t.elapsed().as_secs_f64() * 1e3, ..Timings::default() };
        let t = Instant::now();
        let features = model.image_features(pixels);
        timings.compress_ms = t.elapsed().as_secs_f64() * 1e3;
        self.metrics.compressions.inc();
        self.metrics.compression_batch.observe(1.0);
        Ok((Arc::new(ReadyImage::Features(features)), timings))
    }

    /// An HTC model's inputs for one image, with the time its preprocessing took: from a
    /// decoded image (MGVQ and client codes as the mode needs), or ready CLIP pixel values
    /// (modes without MGVQ only).
    fn htc_inputs(
        &self, model: &Htc<Backend>, preprocess: &ClipPreprocess, img: &UploadedImage,
    ) -> Result<(ImageTensors<Backend>, Timings), ProtocolError> {
        let device = backend::device();
        let t = Instant::now();
        let timed = || Timings { preprocess_ms: t.elapsed().as_secs_f64() * 1e3, ..Timings::default() };
        let internal = ErrorCode::Internal;
        let uses_codes = model.config.uses_discrete();
        let decoded = match &img.image {
            ImageData::Decoded(i) => i,
            ImageData::PixelValues(p) if uses_codes => {
                return Err(ProtocolError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "mode {:?} runs MGVQ on the image itself: it needs the image, not ready pixel values ({})",
                        model.config.mode, p.source
                    ),
                ))
            }
            ImageData::PixelValues(p) => {
                let clip = p.tensor(model.llava.vision.image_size(), &device).coded(ErrorCode::BadRequest)?;
                return Ok((ImageTensors { clip, mgvq: None, codes: None }, timed()));
            }
        };
        let mut inputs = image_tensors(model, preprocess, decoded, &device).coded(internal)?;
        let timings = timed();
        if let (Some(client), Some(m), true) = (&img.codes, &model.mgvq, uses_codes) {
            if self.verify_client_codes.checks(&img.key) {
                self.metrics.client_codes_verified.inc();
                self.metrics.mgvq_encodes.inc();
                let px = inputs.mgvq.clone().context("no MGVQ input").coded(internal)?;
                let check = m.check_codes(m.latent(px), client, VerifyCodes::NEAR_TIE).coded(internal)?;
                if !check.disagreements.is_empty() {
                    self.metrics.client_codes_refused.inc();
                    let shown: Vec<String> = check
                        .disagreements
                        .iter()
                        .take(4)
                        .map(|d| {
                            format!(
                                "position {} group {}: sent {} (distance {:.4}), nearest {} ({:.4})",
                                d.position, d.group, d.sent, d.sent_distance, d.nearest, d.nearest_distance
                            )
                        })
                        .collect();
                    return Err(ProtocolError::new(
                        ErrorCode::CodesMismatch,
                        format!(
                            "client MGVQ codes differ from the worker's at {} of {} codes beyond a near-tie \
                             ({} near-ties accepted): {}{}",
                            check.disagreements.len(),
                            client.len() * client.first().map_or(0, Vec::len),
                            check.near_ties,
                            shown.join("; "),
                            if check.disagreements.len() > shown.len() { "; ..." } else { "" }
                        ),
                    ));
                }
            }
            inputs.codes = Some(client.as_ref().clone());
            self.metrics.client_codes_used.inc();
        } else if uses_codes {
            self.metrics.mgvq_encodes.inc();
        }
        Ok((inputs, timings))
    }

    /// Compresses `images` with `model` (the served model or one of its other modes) in one
    /// batch: each image is preprocessed and its client codes checked on its own (a failure
    /// stays with that image), then the images that passed are compressed together. Each
    /// result carries the image's preprocessing time and the batch's compression time.
    fn compress_many(
        &self, model: &Htc<Backend>, preprocess: &ClipPreprocess, images: &[&UploadedImage],
    ) -> Vec<Made> {
        let internal = ErrorCode::Internal;
        let prepared: Vec<Result<(ImageTensors<Backend>, Timings), ProtocolError>> =
            images.iter().map(|img| self.htc_inputs(model, preprocess, img)).collect();
        // Trusted client codes replace the MGVQ encoder for some images only: those batches
        // stay apart from the ones the worker encodes.
        let mut results: Vec<Option<Made>> = vec![None; images.len()];
        let mut groups: [Vec<(usize, ImageTensors<Backend>, Timings)>; 2] = [vec![], vec![]];
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
                        results[i] = Some(Ok((Arc::new(ReadyImage::Compressed(c)), timings)));
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
    /// lacks are made ready, one batch per mode, each image once; then every question is
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
        // The images to make ready, per model: distinct keys, first asker first.
        let mut hits: Vec<Option<Arc<ReadyImage>>> = Vec::with_capacity(ready.len());
        let mut wanted: Vec<(Option<usize>, [u8; 32], usize)> = Vec::new();
        for (i, p) in ready.iter().enumerate() {
            let Some(key) = p.key else {
                hits.push(None);
                continue;
            };
            let hit = self.cache.get(&key).cloned();
            if hit.is_none() && !wanted.iter().any(|w| w.1 == key) {
                wanted.push((p.alternate, key, i));
            }
            hits.push(hit);
        }
        // Each image made ready here, and whether a question of this batch used it yet.
        type Fresh = ([u8; 32], Made, bool);
        let mut fresh: Vec<Fresh> = Vec::new();
        let mut models: Vec<Option<usize>> = wanted.iter().map(|w| w.0).collect();
        models.sort();
        models.dedup();
        for alt in models {
            let group: Vec<&(Option<usize>, [u8; 32], usize)> =
                wanted.iter().filter(|w| w.0 == alt).collect();
            let images: Vec<&UploadedImage> = group
                .iter()
                .map(|w| ready[w.2].job.image.as_ref().expect("a keyed question has an image"))
                .collect();
            let done = self.make_ready(alt, &images);
            fresh.extend(group.iter().zip(done).map(|(w, r)| (w.1, r, false)));
        }
        for (key, r, _) in &fresh {
            if let Ok((c, _)) = r {
                self.cache.put(*key, c.clone());
            }
        }
        for (p, hit) in ready.into_iter().zip(hits) {
            let (id, reply) = (p.job.request_id, p.job.reply.clone());
            // An image made ready in this batch counts as new for its first question and as a
            // cache hit for the others, as if they had come one after another.
            let found = match (p.key, hit) {
                (None, _) => Ok(None),
                (Some(_), Some(c)) => Ok(Some((c, true, None))),
                (Some(key), None) => match fresh.iter_mut().find(|f| f.0 == key).expect("made ready above") {
                    (_, Ok((c, t)), used @ false) => {
                        *used = true;
                        Ok(Some((c.clone(), false, Some(*t))))
                    }
                    (_, Ok((c, _)), true) => Ok(Some((c.clone(), true, None))),
                    (_, Err(e), _) => Err(e.clone()),
                },
            };
            if let Ok(Some((_, true, _))) = &found {
                self.metrics.cache_hits.inc();
            }
            let started = found.and_then(|image| self.start_answer(p, image, active));
            if let Err(e) = started {
                self.report(id, &reply, e);
            }
        }
    }

    /// A job's ids, image and model, checked: `None` when it was cancelled while queued
    /// (reported).
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
        let bad = |m: String| ProtocolError::new(ErrorCode::BadRequest, m);
        if let (Served::Llama(_), Some(_)) = (&self.served, &job.image) {
            return Err(bad("this model (llama) takes no images: ask about text only".into()));
        }
        let ids = self.prompt_ids(&job.question, job.image.is_some())?;
        // The model in the asked mode; a compressed image is cached per mode.
        let alternate = match (job.mode, &self.served) {
            (Some(m), _) if Some(m) == self.card.mode => None,
            (None, _) => None,
            (Some(m), served) => {
                let found = match served {
                    Served::Htc { alternates, .. } => alternates.iter().position(|a| a.0 == m),
                    _ => None,
                };
                let offered: Vec<HtcMode> = self.card.modes.clone();
                Some(found.ok_or_else(|| {
                    bad(format!("mode {m:?} is not offered by this model (it answers in {offered:?})"))
                })?)
            }
        };
        let key = job.image.as_ref().map(|img| match (alternate, job.mode) {
            (Some(_), Some(m)) => mode_key(&img.key, m),
            _ => img.key,
        });
        Ok(Some(Prepared { job, ids, alternate, key, start }))
    }

    /// The checked token ids of a question: the text after the compressed image for an HTC
    /// model with an image; the whole prompt, with its image token expanded, for a plain LLaVA,
    /// a LLaMA, or an HTC model asked without an image (its LLM alone, as LLaVA answers a
    /// text-only question; laid out as `htc ask` lays it out, `TextTokenizer::prompt_ids`).
    fn prompt_ids(&self, question: &Question, image: bool) -> Result<PromptIds, ProtocolError> {
        let bad = ErrorCode::BadRequest;
        let tok = || {
            self.tokenizer.as_ref().ok_or_else(|| {
                ProtocolError::new(
                    bad,
                    "this model has no tokenizer; send `prompt_ids` instead of `question`",
                )
            })
        };
        let llm = self.served.llm();
        if let (Served::Htc { .. }, true) = (&self.served, image) {
            let ids: Vec<u32> = match question {
                Question::Ids(ids) => llm.checked_ids(ids).coded(bad)?,
                Question::Text(q) => tok()?.question_ids(q, true).coded(ErrorCode::Internal)?,
                Question::Plain(q) => tok()?.question_ids(q, false).coded(ErrorCode::Internal)?,
                Question::Chat(c) => tok()?.chat_ids(c).coded(bad)?,
            };
            llm.check_ids(&ids).coded(bad)?;
            return Ok(PromptIds::Vocab(ids));
        }
        let marker = self.served.marker();
        let (bos, eos) = (llm.config().bos_token_id, llm.config().eos_token_ids.first().copied());
        let ids: Vec<i64> = match question {
            Question::Ids(ids) => ids.clone(),
            Question::Text(q) => tok()?.prompt_ids(q, image, true, marker, bos, eos).coded(bad)?,
            Question::Plain(q) => tok()?.prompt_ids(q, image, false, marker, bos, eos).coded(bad)?,
            Question::Chat(c) => tok()?.chat_prompt_ids(c, marker.filter(|_| image), bos, eos).coded(bad)?,
        };
        let (Served::Llava { config, .. }, Some(marker)) = (&self.served, marker) else {
            return Ok(PromptIds::Vocab(llm.checked_ids(&ids).coded(bad)?));
        };
        let ids = expand_image_tokens(&ids, marker, config.num_image_tokens()).coded(bad)?;
        let text: Vec<i64> = ids.iter().copied().filter(|&i| i != marker).collect();
        if !text.is_empty() {
            llm.checked_ids(&text).coded(bad)?;
        }
        match (image, text.len() < ids.len()) {
            (true, false) => {
                Err(ProtocolError::new(bad, "an image was given but the prompt has no image token"))
            }
            (false, true) => {
                Err(ProtocolError::new(bad, "the prompt has an image token but no image was given"))
            }
            _ => Ok(PromptIds::Spliced(ids)),
        }
    }

    /// Prefills a prepared question with its image (`(image, cached, timings)`), emits its
    /// first token and joins the decoding batch (or finishes at once).
    fn start_answer(
        &self, p: Prepared, image: Option<(Arc<ReadyImage>, bool, Option<Timings>)>, active: &mut Vec<Active>,
    ) -> Result<(), ProtocolError> {
        let Prepared { job, ids, alternate, start, .. } = p;
        let llm = self.served.llm();
        let bad = ErrorCode::BadRequest;
        // A whole prompt, causal from position 0.
        let whole = |embeds| Prompt { cache: llm.new_cache(), embeds, first_position: 0, mask: None };
        let ready = image.as_ref().map(|i| i.0.as_ref());
        let (prompt, prompt_tokens) = match (&self.served, ready, &ids) {
            (
                Served::Htc { model, alternates, .. },
                Some(ReadyImage::Compressed(c)),
                PromptIds::Vocab(ids),
            ) => {
                let model = alternate.map_or(model, |i| &alternates[i].1);
                (model.answer_prompt(c, ids).coded(bad)?, c.kept_positions.len() + ids.len())
            }
            (Served::Llava { model, config, .. }, features, PromptIds::Spliced(ids)) => {
                let features = match features {
                    Some(ReadyImage::Features(f)) => Some(f.clone()),
                    _ => None,
                };
                let embeds = model.splice(ids, config.image_token_id, features).coded(bad)?;
                (whole(embeds), ids.len())
            }
            (_, None, PromptIds::Vocab(ids)) => (whole(llm.embed(ids)), ids.len()),
            _ => {
                return Err(ProtocolError::new(ErrorCode::Internal, "a question and its image do not match"))
            }
        };
        let stop = stop_ids(self.tokenizer.as_ref(), llm);
        let (seq, logits, _) =
            Sequence::prefill(llm, prompt, job.sampling, stop, false).coded(ErrorCode::Internal)?;
        let (image, cached, timings) = match image {
            Some((i, cached, t)) => (Some(i), cached, t),
            None => (None, false, None),
        };
        let mut a = Active {
            job,
            seq,
            decoder: StreamDecoder::new(),
            image,
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
        let llm = self.served.llm();
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

    /// Sends the attention map (HTC models) and `done` for a finished answer.
    fn finish(&self, a: Active) {
        let cancelled = a.job.cancel.load(Ordering::Relaxed);
        let request_id = a.job.request_id;
        if let (Some(ReadyImage::Compressed(c)), false) = (a.image.as_deref(), cancelled) {
            if c.layout.n_voco > 0 {
                let layers = c.voco_attention.iter().map(|l| l[0].clone()).collect();
                let (n_discrete, n_visual) = (c.layout.n_discrete, c.layout.n_visual);
                let _ =
                    a.job.reply.send(ServerMessage::Attention { request_id, n_discrete, n_visual, layers });
            }
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

/// The model card of what the engine serves.
fn card(served: &Served, name: String, random_init: bool, has_tokenizer: bool) -> ModelCard {
    let c = served.llm().config();
    let text_only = ModelCard {
        name,
        architecture: "llama".into(),
        random_init,
        backend: backend::name().into(),
        mode: None,
        n_discrete: 0,
        n_voco: 0,
        image_size: 0,
        image_tokens: 0,
        hidden_size: c.hidden_size,
        layers: c.num_hidden_layers,
        vocab_size: c.vocab_size,
        has_tokenizer,
        codebook_size: None,
        mgvq: None,
        modes: vec![],
        // Filled by `Engine::start` from the model directory's `about.json`.
        about: None,
        samples: Vec::new(),
    };
    match served {
        Served::Htc { model, alternates, preprocess } => {
            let layout = model.layout(0);
            ModelCard {
                architecture: if model.config.mode == HtcMode::None { "llava".into() } else { "htc".into() },
                mode: Some(model.config.mode),
                n_discrete: layout.n_discrete,
                n_voco: layout.n_voco,
                image_size: preprocess.crop.0 as usize,
                image_tokens: layout.n_visual,
                codebook_size: model.config.mgvq.as_ref().map(|m| m.codebook_size),
                mgvq: model.config.mgvq.clone(),
                modes: std::iter::once(model.config.mode).chain(alternates.iter().map(|a| a.0)).collect(),
                ..text_only
            }
        }
        Served::Llava { model, preprocess, .. } => ModelCard {
            architecture: "llava".into(),
            mode: Some(HtcMode::None),
            image_size: preprocess.crop.0 as usize,
            image_tokens: model.vision_tokens(),
            modes: vec![HtcMode::None],
            ..text_only
        },
        Served::Llama(_) => text_only,
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
