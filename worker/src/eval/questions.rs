//! The real benchmarks' question files as LLaVA-1.5's evaluation scripts read them, and the
//! prompts those scripts put to the model: LLaVA's question JSONL (VQAv2, GQA, POPE, MME,
//! SEED-Bench; `question_id`, `image`, `text`, the text already carrying the answer-format
//! suffix), ScienceQA's conversation JSON (`llava_test_CQM-A.json`) and MMBench's TSV with
//! its base64 images. Each question keeps its id's JSON type, since the scorers match ids by
//! type.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::score::mmbench::{is_na, Tsv};
use super::score::{read_json, Benchmark};
use super::{Ask, ImageRef};
use crate::data::llava::strip_placeholder;

/// LLaVA-1.5's suffix for short answers (VQAv2, GQA, POPE, MME).
pub const SINGLE_WORD: &str = "Answer the question using a single word or phrase.";
/// LLaVA-1.5's suffix for multiple choice (ScienceQA, SEED-Bench, MMBench).
pub const LETTER: &str = "Answer with the option's letter from the given choices directly.";

/// One benchmark question: the answer file's `question_id` and `prompt`, any extra fields
/// LLaVA writes for the benchmark, and what the model is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchQuestion {
    pub id: Value,
    pub prompt: String,
    pub extra: Map<String, Value>,
    pub ask: Ask,
}

/// Reads `data` as `benchmark`'s LLaVA question file; image paths are relative to `images`.
pub fn read(benchmark: Benchmark, data: &Path, images: &Path) -> Result<Vec<BenchQuestion>> {
    let qs = match benchmark {
        Benchmark::Vqav2 | Benchmark::Gqa | Benchmark::Pope | Benchmark::Mme => {
            jsonl(data, images, Some(SINGLE_WORD))?
        }
        Benchmark::Seed => jsonl(data, images, Some(LETTER))?,
        Benchmark::Sqa => science_qa(data, images)?,
        Benchmark::Mmbench => mmbench(data)?,
        Benchmark::Shapes => bail!("ShapesVQA question sets are read without --benchmark"),
    };
    if qs.is_empty() {
        bail!("{} has no questions", data.display());
    }
    Ok(qs)
}

/// `text` with `suffix` on a line of its own, unless it already has it.
fn with_suffix(text: &str, suffix: &str) -> String {
    if text.contains(suffix) {
        text.to_string()
    } else {
        format!("{text}\n{suffix}")
    }
}

fn label(id: &Value) -> String {
    match id {
        Value::String(s) => format!("question `{s}`"),
        other => format!("question `{other}`"),
    }
}

#[derive(Deserialize)]
struct Line {
    question_id: Value,
    image: String,
    text: String,
}

/// A LLaVA question file read as it is, without a benchmark's suffix.
pub fn read_jsonl(data: &Path, images: &Path) -> Result<Vec<BenchQuestion>> {
    let qs = jsonl(data, images, None)?;
    if qs.is_empty() {
        bail!("{} has no questions", data.display());
    }
    Ok(qs)
}

fn jsonl(data: &Path, images: &Path, suffix: Option<&str>) -> Result<Vec<BenchQuestion>> {
    let raw = std::fs::read_to_string(data).with_context(|| format!("cannot read {}", data.display()))?;
    let mut out = Vec::new();
    for (n, line) in raw.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let q: Line = serde_json::from_str(line).with_context(|| {
            format!("{} line {}: not a question record (question_id, image, text)", data.display(), n + 1)
        })?;
        if !(q.question_id.is_string() || q.question_id.is_i64()) {
            bail!("{} line {}: `question_id` must be an integer or a string", data.display(), n + 1);
        }
        let prompt = suffix.map_or_else(|| q.text.clone(), |s| with_suffix(&q.text, s));
        out.push(BenchQuestion {
            ask: Ask {
                label: label(&q.question_id),
                codes: None,
                image: Some(ImageRef::File(images.join(&q.image))),
                question: strip_placeholder(&prompt),
            },
            id: q.question_id,
            prompt,
            extra: Map::new(),
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct Turn {
    value: String,
}

#[derive(Deserialize)]
struct Record {
    id: Value,
    image: Option<String>,
    conversations: Vec<Turn>,
}

/// ScienceQA as `model_vqa_science.py --single-pred-prompt` asks it: the first turn without
/// its `<image>`, the letter suffix, and `<image>\n` before the prompt of an image question
/// (the scorer tells image questions by it). Text-only questions are asked without an image.
fn science_qa(data: &Path, images: &Path) -> Result<Vec<BenchQuestion>> {
    let records: Vec<Record> = read_json(data)?;
    let mut out = Vec::new();
    for (i, r) in records.into_iter().enumerate() {
        let Some(first) = r.conversations.first() else {
            bail!("{}: at `[{i}]` (id {}): no conversation turns", data.display(), r.id);
        };
        let question = first.value.replace("<image>", "").trim().to_string();
        let asked = format!("{question}\n{LETTER}");
        let prompt = if r.image.is_some() { format!("<image>\n{asked}") } else { asked.clone() };
        out.push(BenchQuestion {
            ask: Ask {
                label: label(&r.id),
                image: r.image.map(|p| ImageRef::File(images.join(p))),
                question: asked,
                codes: None,
            },
            id: r.id,
            prompt,
            extra: Map::new(),
        });
    }
    Ok(out)
}

/// MMBench as `model_vqa_mmbench.py --single-pred-prompt` asks it: the hint, the question,
/// one `X. option` line per option present, the letter suffix; the image from the TSV.
fn mmbench(data: &Path) -> Result<Vec<BenchQuestion>> {
    let tsv = Tsv::read(data)?;
    let (index, question, image) = (tsv.need("index")?, tsv.need("question")?, tsv.need("image")?);
    let hint = tsv.col("hint");
    let letters: Vec<(String, usize)> =
        ["A", "B", "C", "D"].into_iter().filter_map(|c| Some((c.to_string(), tsv.col(c)?))).collect();
    let mut out = Vec::new();
    for (line, record) in &tsv.records {
        let at = || format!("{} line {line}", data.display());
        let cell = |i: usize| record.get(i).unwrap_or("");
        let idx = tsv.index(*line, cell(index))?;
        let mut text = cell(question).to_string();
        if let Some(h) = hint.map(cell).filter(|h| !is_na(h)) {
            text = format!("{h}\n{text}");
        }
        // LLaVA stops at the first absent option.
        let options: Vec<(String, String)> = letters
            .iter()
            .map(|(c, i)| (c.clone(), cell(*i).to_string()))
            .take_while(|(_, o)| !is_na(o))
            .collect();
        for (c, o) in &options {
            text = format!("{text}\n{c}. {o}");
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(cell(image).trim())
            .with_context(|| format!("{}: the image is not base64", at()))?;
        let id = json!(idx);
        let mut extra = Map::new();
        extra.insert("round_id".into(), json!(0));
        extra.insert("options".into(), json!(options.iter().map(|(_, o)| o).collect::<Vec<_>>()));
        extra.insert("option_char".into(), json!(options.iter().map(|(c, _)| c).collect::<Vec<_>>()));
        out.push(BenchQuestion {
            ask: Ask {
                label: label(&id),
                image: Some(ImageRef::Bytes(Arc::new(bytes))),
                question: format!("{text}\n{LETTER}"),
                codes: None,
            },
            id,
            prompt: text,
            extra,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_added_once() {
        assert_eq!(with_suffix("Is it red?", SINGLE_WORD), format!("Is it red?\n{SINGLE_WORD}"));
        let has = format!("Is it red?\n{SINGLE_WORD}");
        assert_eq!(with_suffix(&has, SINGLE_WORD), has);
    }
}
