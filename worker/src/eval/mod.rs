//! Evaluation: answers a question set greedily, in batches, against compressed images, and
//! scores exact match. Reads LLaVA conversation JSON (the first human turn is the question,
//! the first gpt turn the reference) or LLaVA's question-file JSONL (`question_id`, `image`,
//! `text`; answered, not scored). Uses runtime, formats, models and text; serves nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::backend::Backend;
use serde::Deserialize;

use crate::data::llava::{record_id, strip_placeholder};
use crate::formats::checkpoint::{AnyModel, Snapshot};
use crate::models::htc::CompressedImage;
use crate::runtime::decode::{step_batch, stop_ids, Sequence};
use crate::runtime::image::{image_tensors, read_image_file};
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

/// One answer being decoded: its sequence, next logits, tokens so far, and whether it ended.
struct Answering<B: Backend> {
    seq: Sequence<B>,
    logits: Vec<f32>,
    ids: Vec<u32>,
    done: bool,
}

/// Answers `items` greedily with an HTC model, `batch` questions at a time: each image is
/// compressed once per batch and every answer of the batch advances one token per batched
/// step. `on_answer` sees each item with its answer, in order.
pub fn answer_all<B: Backend>(
    snap: &Snapshot<B>, items: &[Item], batch: usize, max_new_tokens: usize, device: &B::Device,
    mut on_answer: impl FnMut(&Item, &str) -> Result<()>,
) -> Result<()> {
    let AnyModel::Htc { model, preprocess, .. } = &snap.model else {
        bail!("`htc eval` takes an HTC checkpoint (config.json with an `htc` section)")
    };
    let tok = snap.tokenizer.as_ref().context("the model has no tokenizer.json; eval needs one")?;
    let llm = &model.llava.llm;
    let stop = stop_ids(Some(tok), llm);
    let sampling = Sampling::greedy(max_new_tokens);
    sampling.validate().map_err(|e| anyhow!(e))?;
    for chunk in items.chunks(batch.max(1)) {
        let mut compressed: HashMap<&Path, CompressedImage<B>> = HashMap::new();
        let mut seqs = Vec::with_capacity(chunk.len());
        for item in chunk {
            if !compressed.contains_key(item.image.as_path()) {
                let img = read_image_file(&item.image).with_context(|| format!("question `{}`", item.id))?;
                let c = model.compress(&image_tensors(model, preprocess, &img, device)?)?;
                compressed.insert(item.image.as_path(), c);
            }
            let ids = tok.question_ids(&item.question, true)?;
            let prompt = model.answer_prompt(&compressed[item.image.as_path()], &ids)?;
            let (seq, logits, _) = Sequence::prefill(llm, prompt, sampling, stop.clone(), false)?;
            seqs.push(Answering { seq, logits, ids: Vec::new(), done: false });
        }
        loop {
            for a in seqs.iter_mut().filter(|a| !a.done) {
                match a.seq.accept(&a.logits) {
                    Some(id) => a.ids.push(id),
                    None => a.done = true,
                }
                if !a.seq.wants_more() {
                    a.done = true;
                }
            }
            let mut active: Vec<&mut Answering<B>> = seqs.iter_mut().filter(|a| !a.done).collect();
            if active.is_empty() {
                break;
            }
            let mut refs: Vec<&mut Sequence<B>> = active.iter_mut().map(|a| &mut a.seq).collect();
            let rows = step_batch(llm, &mut refs)?;
            for (a, row) in active.into_iter().zip(rows) {
                a.logits = row;
            }
        }
        for (item, a) in chunk.iter().zip(&seqs) {
            let text = tok.inner.decode(&a.ids, true).map_err(|e| anyhow!("cannot decode an answer: {e}"))?;
            on_answer(item, text.trim())?;
        }
    }
    Ok(())
}
