//! Evaluation: answers a question set greedily through the serving engine (batched, against
//! compressed images) and scores exact match; [`score`] scores answer files on the real
//! benchmarks by their official rules, [`retention`] compares scores as the paper does,
//! [`analysis`] probes, attention maps and timings of a trained HTC model; [`report`] turns the
//! experiments' raw results into `docs/results.md`. Reads LLaVA conversation JSON (the first human turn is the question,
//! the first gpt turn the reference) or LLaVA's question-file JSONL (`question_id`, `image`,
//! `text`; answered, not scored). Uses runtime, formats, models and text; serves nothing.

pub mod analysis;
pub mod questions;
pub mod report;
pub mod retention;
pub mod score;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use htc_shared::config::HtcMode;
use htc_shared::preprocess::{decode_image, DecodeLimits};
use htc_shared::protocol::ServerMessage;

use crate::data::llava::{record_id, strip_placeholder};
use crate::runtime::engine::{Engine, EngineConfig, Job, Question, UploadedImage};
use crate::runtime::sampling::Sampling;

/// One question to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub id: String,
    pub image: PathBuf,
    pub question: String,
    /// The reference answer, when the data has one.
    pub reference: Option<String>,
    pub family: Option<String>,
    pub kind: Option<String>,
}

#[derive(Deserialize)]
struct Turn {
    from: String,
    value: String,
}

#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    id: serde_json::Value,
    image: Option<String>,
    #[serde(default)]
    conversations: Vec<Turn>,
    family: Option<String>,
    kind: Option<String>,
}

#[derive(Deserialize)]
struct QuestionLine {
    question_id: serde_json::Value,
    image: String,
    text: String,
}

/// Reads the questions of `data` (`.jsonl`: a LLaVA question file; otherwise conversation
/// JSON), resolving images under `images`. Every problem names the record or line.
pub fn read_items(data: &Path, images: &Path) -> Result<Vec<Item>> {
    let raw = std::fs::read_to_string(data).with_context(|| format!("cannot read {}", data.display()))?;
    let mut items = Vec::new();
    if data.extension().is_some_and(|e| e == "jsonl") {
        for (n, line) in raw.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let q: QuestionLine = serde_json::from_str(line).with_context(|| {
                format!("{} line {}: not a question record (question_id, image, text)", data.display(), n + 1)
            })?;
            items.push(Item {
                id: record_id(&q.question_id, n),
                image: images.join(q.image),
                question: strip_placeholder(&q.text),
                reference: None,
                family: None,
                kind: None,
            });
        }
    } else {
        let records: Vec<Record> = serde_json::from_str(&raw).with_context(|| {
            format!("{} is not a JSON list of LLaVA conversation records", data.display())
        })?;
        for (n, r) in records.into_iter().enumerate() {
            let id = record_id(&r.id, n);
            let image = r.image.ok_or_else(|| anyhow!("record `{id}` has no `image`"))?;
            let human = r.conversations.iter().find(|t| t.from == "human");
            let gpt = r.conversations.iter().find(|t| t.from == "gpt");
            let (Some(h), Some(g)) = (human, gpt) else {
                bail!("record `{id}` needs a human and a gpt turn");
            };
            items.push(Item {
                id,
                image: images.join(image),
                question: strip_placeholder(&h.value),
                reference: Some(g.value.clone()),
                family: r.family,
                kind: r.kind,
            });
        }
    }
    if items.is_empty() {
        bail!("{} has no questions", data.display());
    }
    Ok(items)
}

/// Exact-match normalisation: lowercase, trimmed, without a trailing period.
pub fn normalize(a: &str) -> String {
    let t = a.trim().to_lowercase();
    t.strip_suffix('.').unwrap_or(&t).trim().to_string()
}

/// Correct and total answers, overall and per family and kind.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Score {
    pub correct: usize,
    pub total: usize,
    pub per_family: BTreeMap<String, (usize, usize)>,
    pub per_kind: BTreeMap<String, (usize, usize)>,
}

impl Score {
    pub fn add(&mut self, item: &Item, answer: &str) {
        let Some(reference) = &item.reference else { return };
        let ok = usize::from(normalize(answer) == normalize(reference));
        self.correct += ok;
        self.total += 1;
        for (map, key) in [(&mut self.per_family, &item.family), (&mut self.per_kind, &item.kind)] {
            if let Some(k) = key {
                let e = map.entry(k.clone()).or_default();
                e.0 += ok;
                e.1 += 1;
            }
        }
    }

    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }

    /// A plain-text report: overall, then per kind and per family.
    pub fn report(&self) -> String {
        let line = |name: &str, (c, t): (usize, usize)| {
            format!("{name:<12} {:>6.1}%  ({c}/{t})\n", 100.0 * c as f64 / t.max(1) as f64)
        };
        let mut s = line("overall", (self.correct, self.total));
        for (k, v) in &self.per_kind {
            s += &line(&format!("kind {k}"), *v);
        }
        for (k, v) in &self.per_family {
            s += &line(k, *v);
        }
        s
    }
}

/// Where a question's image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageRef {
    File(PathBuf),
    /// Encoded image bytes carried by the question file itself (MMBench's base64 column).
    Bytes(Arc<Vec<u8>>),
}

/// One question to answer: what the model is asked, about which image (none for a
/// text-only question), and a label for error messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    pub label: String,
    pub image: Option<ImageRef>,
    pub question: String,
    /// MGVQ codes to use in place of the image's own (`htc eval --anchors-of-other-images`, a
    /// control: the anchors of another image), sent as a page sends its codes.
    pub codes: Option<Arc<Vec<Vec<u16>>>>,
}

impl Item {
    pub fn ask(&self) -> Ask {
        Ask {
            label: format!("question `{}`", self.id),
            image: Some(ImageRef::File(self.image.clone())),
            question: self.question.clone(),
            codes: None,
        }
    }
}

/// Answers `asks` greedily with the model in `model` through the same engine the server
/// uses (its prompt, its LRU of compressed images, its micro-batched decoding): up to `batch`
/// questions are in flight at once, every answer advancing one token per batched step. Each
/// group of `batch` questions is admitted together and answered before the next, so a run's
/// batches, and with them its answers, do not depend on timing.
/// `on_answer` sees each question's index with its answer text (as a client would see it), in
/// order. A question without an image is answered by the LLM alone.
pub fn answer_all(
    model: &Path, mode: Option<HtcMode>, asks: &[Ask], batch: usize, max_new_tokens: usize,
    mut on_answer: impl FnMut(usize, &str) -> Result<()>,
) -> Result<()> {
    let sampling = Sampling::greedy(max_new_tokens);
    sampling.validate().map_err(|e| anyhow!(e))?;
    let batch = batch.max(1);
    let engine = Engine::start(EngineConfig {
        model: Some(model.to_path_buf()),
        queue: batch,
        cache_capacity: 64,
        verify_client_codes: crate::runtime::engine::VerifyCodes::Off,
        max_batch: batch,
        max_compress_batch: batch,
        mode,
        require_images: true,
    })?;
    for (c, chunk) in asks.chunks(batch).enumerate() {
        let mut replies = Vec::with_capacity(chunk.len());
        let mut jobs = Vec::with_capacity(chunk.len());
        for (i, ask) in chunk.iter().enumerate() {
            let named = || ask.label.clone();
            let image = match &ask.image {
                None => None,
                Some(source) => {
                    let (bytes, what) = match source {
                        ImageRef::File(p) => (
                            Arc::new(
                                std::fs::read(p)
                                    .with_context(|| format!("cannot read image {}", p.display()))
                                    .with_context(named)?,
                            ),
                            p.display().to_string(),
                        ),
                        ImageRef::Bytes(b) => (b.clone(), "its image".to_string()),
                    };
                    let image = decode_image(&bytes, DecodeLimits::default())
                        .with_context(|| what)
                        .with_context(named)?;
                    Some(UploadedImage {
                        image: image.into(),
                        codes: ask.codes.clone(),
                        key: engine.image_key(&bytes, ask.codes.as_deref().map(Vec::as_slice)),
                    })
                }
            };
            let question = Question::new(Some(ask.question.clone()), None, usize::MAX)
                .map_err(|e| anyhow!("{}: {}", named(), e.message))?;
            let (reply, rx) = tokio::sync::mpsc::unbounded_channel();
            jobs.push(Job {
                request_id: i as u32,
                image,
                question,
                sampling,
                mode: None,
                cancel: Arc::new(AtomicBool::new(false)),
                reply,
            });
            replies.push(rx);
        }
        engine.submit_all(jobs).map_err(|_| anyhow!("the engine's queue is full"))?;
        for (i, (ask, mut rx)) in chunk.iter().zip(replies).enumerate() {
            let mut text = String::new();
            loop {
                match rx.blocking_recv() {
                    Some(ServerMessage::Token { text: t, .. }) => text.push_str(&t),
                    Some(ServerMessage::Done { .. }) => break,
                    Some(ServerMessage::Error { message, .. }) => bail!("{}: {message}", ask.label),
                    Some(_) => {}
                    None => bail!("{}: the engine stopped", ask.label),
                }
            }
            on_answer(c * batch + i, text.trim())?;
        }
    }
    Ok(())
}
