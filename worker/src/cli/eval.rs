//! `htc eval`: answers a question set with an HTC (or LLaVA) model into a LLaVA answer file,
//! resuming where an earlier run stopped; ShapesVQA sets with reference answers are scored
//! (see `eval`; the real benchmarks are scored by `htc score`).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::backend::{self, Backend};
use crate::eval::questions::{self, BenchQuestion};
use crate::eval::score::{Benchmark, Id};
use crate::eval::{answer_all, read_items, ImageRef, Item, Score};
use crate::runtime::image::read_image_file;
use crate::train::tokenizer::load_tokenizer;

#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub dtype: crate::backend::DtypeArg,
    /// HTC (or LLaVA) checkpoint directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Questions: LLaVA conversation JSON (scored) or a LLaVA question file `.jsonl`
    /// (answered); with --benchmark, that benchmark's LLaVA question file (MMBench: its TSV).
    #[arg(long)]
    pub data: PathBuf,
    /// Folder the questions' image paths are relative to.
    #[arg(long)]
    pub images: PathBuf,
    /// Read --data as this benchmark's question file and ask as LLaVA-1.5's evaluation
    /// scripts do (their answer-format suffixes; ScienceQA's `<image>` prompts; MMBench's
    /// options).
    #[arg(long, value_enum)]
    pub benchmark: Option<Benchmark>,
    /// Answers, one JSON line per question (LLaVA's answer-file format). Answers already in
    /// the file are kept and their questions skipped.
    #[arg(long)]
    pub out: PathBuf,
    /// Start over: replace --out instead of resuming it.
    #[arg(long)]
    pub restart: bool,
    /// Questions answered together (one batched decoding step for all of them).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 16)]
    pub max_new_tokens: usize,
    /// Answer in this mode instead of the checkpoint's own: none, voco, htc, discrete, avgpool
    /// (an ablation: the weights are the checkpoint's, trained in its own mode).
    #[arg(long, value_enum)]
    pub mode: Option<super::Mode>,
    /// A control for the anchors: each question's MGVQ codes are those of another image of
    /// the question set (a derangement of its images drawn from this seed), the patches its own.
    /// Shows whether a model's anchors carry their own image or only a learnt bias.
    #[arg(long, value_name = "SEED")]
    pub anchors_of_other_images: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `--anchors-of-other-images`: the MGVQ codes of another image for every question with an
/// image file. The set's distinct images are shuffled with `seed` and each takes the codes of
/// the next one in that order (a cycle, so no image keeps its own).
fn other_images_codes(
    model: &Path, mut images: Vec<PathBuf>, seed: u64,
) -> Result<HashMap<PathBuf, Arc<Vec<Vec<u16>>>>> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    images.sort();
    images.dedup();
    if images.len() < 2 {
        bail!("--anchors-of-other-images needs at least two distinct image files in the question set");
    }
    let device = backend::device();
    let (enc, _) = load_tokenizer::<Backend>(model, &device)
        .with_context(|| format!("--anchors-of-other-images: {} has no MGVQ tokenizer", model.display()))?;
    images.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let mut codes = Vec::with_capacity(images.len());
    for p in &images {
        let img = read_image_file(p)?;
        codes.push(Arc::new(enc.encode(enc.pixels_of(&img))?.codes));
    }
    Ok((0..images.len()).map(|i| (images[i].clone(), codes[(i + 1) % images.len()].clone())).collect())
}

/// A question to answer, with what its answer line carries.
struct Entry {
    q: BenchQuestion,
    /// The ShapesVQA record, when the question set has reference answers.
    item: Option<Item>,
}

fn entries(a: &EvalArgs) -> Result<Vec<Entry>> {
    let conversations = !a.data.extension().is_some_and(|e| e == "jsonl" || e == "tsv");
    match a.benchmark {
        Some(b) if b != Benchmark::Shapes => {
            Ok(questions::read(b, &a.data, &a.images)?.into_iter().map(|q| Entry { q, item: None }).collect())
        }
        _ if !conversations => Ok(questions::read_jsonl(&a.data, &a.images)?
            .into_iter()
            .map(|q| Entry { q, item: None })
            .collect()),
        _ => Ok(read_items(&a.data, &a.images)?
            .into_iter()
            .map(|item| {
                let mut extra = Map::new();
                extra.insert(
                    "metadata".into(),
                    json!({"reference": item.reference, "family": item.family, "kind": item.kind}),
                );
                let q = BenchQuestion {
                    id: json!(item.id),
                    prompt: item.question.clone(),
                    extra,
                    ask: item.ask(),
                };
                Entry { q, item: Some(item) }
            })
            .collect()),
    }
}

/// The answers an earlier run wrote to `path`, by id. A last line cut short (a run stopped
/// mid-write) is dropped from the file; a bad line elsewhere is an error.
fn answered(path: &Path) -> Result<HashMap<Id, String>> {
    let raw = match std::fs::read_to_string(path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut done = HashMap::new();
    let mut kept = 0;
    let lines: Vec<&str> = raw.split_inclusive('\n').collect();
    for (n, line) in lines.iter().enumerate() {
        let parsed: Option<(Id, String)> = serde_json::from_str::<Value>(line).ok().and_then(|v| {
            Some((Id::from_value(v.get("question_id")?)?, v.get("text")?.as_str()?.to_string()))
        });
        match parsed {
            Some((id, text)) if line.ends_with('\n') => {
                done.insert(id, text);
                kept += line.len();
            }
            _ if line.trim().is_empty() => kept += line.len(),
            _ if n + 1 == lines.len() => {
                tracing::warn!(
                    "{} ends in a partial line; it is dropped and its question answered again",
                    path.display()
                );
                let f = std::fs::OpenOptions::new().write(true).open(path)?;
                f.set_len(kept as u64)?;
            }
            _ => bail!(
                "{} line {}: not an answer line (question_id, text); fix the file or pass --restart",
                path.display(),
                n + 1
            ),
        }
    }
    Ok(done)
}

pub fn run(a: EvalArgs) -> Result<()> {
    let mode = a.mode.map(Into::into);
    let all = entries(&a)?;
    let model_id = a.model.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    if a.restart {
        std::fs::remove_file(&a.out).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        })?;
    }
    let done = answered(&a.out)?;
    let todo: Vec<&Entry> =
        all.iter().filter(|e| Id::from_value(&e.q.id).is_none_or(|id| !done.contains_key(&id))).collect();
    let mut out = std::io::BufWriter::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&a.out)
            .with_context(|| format!("cannot write {}", a.out.display()))?,
    );
    let bar = if a.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(all.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{wide_bar} {pos}/{len} questions · {per_sec} · {eta} left",
            )
            .expect("a valid template"),
        );
        bar
    };
    bar.set_position((all.len() - todo.len()) as u64);
    bar.reset_eta();
    let files = || {
        all.iter()
            .filter_map(|e| match &e.q.ask.image {
                Some(ImageRef::File(p)) => Some(p.clone()),
                _ => None,
            })
            .collect()
    };
    let others =
        a.anchors_of_other_images.map(|seed| other_images_codes(&a.model, files(), seed)).transpose()?;
    let asks: Vec<_> = todo
        .iter()
        .map(|e| {
            let mut ask = e.q.ask.clone();
            if let (Some(others), Some(ImageRef::File(p))) = (&others, &ask.image) {
                ask.codes = others.get(p).cloned();
            }
            ask
        })
        .collect();
    let mut answers: HashMap<usize, String> = HashMap::new();
    answer_all(&a.model, mode, &asks, a.batch, a.max_new_tokens, |i, text| {
        let q = &todo[i].q;
        let mut line = Map::new();
        line.insert("question_id".into(), q.id.clone());
        line.insert("prompt".into(), json!(q.prompt));
        line.insert("text".into(), json!(text));
        line.insert("answer_id".into(), json!(answer_id(&model_id, &q.id, text)));
        line.insert("model_id".into(), json!(model_id));
        line.insert("metadata".into(), json!({}));
        for (k, v) in &q.extra {
            line.insert(k.clone(), v.clone());
        }
        writeln!(out, "{}", Value::Object(line))?;
        out.flush()?;
        answers.insert(i, text.to_string());
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    outln!(
        "answered {} questions into {} ({} were already there)",
        answers.len(),
        a.out.display(),
        all.len() - todo.len()
    );
    let mut score = Score::default();
    let new: HashMap<&Value, &String> = answers.iter().map(|(i, t)| (&todo[*i].q.id, t)).collect();
    for e in &all {
        let Some(item) = &e.item else { continue };
        let text = new
            .get(&e.q.id)
            .map(|t| t.as_str())
            .or_else(|| Id::from_value(&e.q.id).and_then(|id| done.get(&id)).map(String::as_str));
        score.add(item, text.unwrap_or(""));
    }
    if score.total > 0 {
        out!("{}", score.report());
    }
    Ok(())
}

/// A stable id for one answer line (LLaVA writes a random one; nothing reads it).
fn answer_id(model: &str, id: &Value, text: &str) -> String {
    let h = Sha256::digest(format!("{model}\u{0}{id}\u{0}{text}").as_bytes());
    h.iter().take(11).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_image_takes_the_codes_of_another_and_every_image_gives_its_codes_once() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
        let model = root.join("htc-train-tiny");
        let images: Vec<PathBuf> = ["red-1.png", "green-1.png", "blue-1.png"]
            .iter()
            .map(|n| root.join("colors/images").join(n))
            .collect();
        let device = backend::device();
        let (enc, _) = load_tokenizer::<Backend>(&model, &device).unwrap();
        let own: Vec<Vec<Vec<u16>>> = images
            .iter()
            .map(|p| enc.encode(enc.pixels_of(&read_image_file(p).unwrap())).unwrap().codes)
            .collect();
        let others = other_images_codes(&model, images.clone(), 7).unwrap();
        let mut givers = Vec::new();
        for (i, p) in images.iter().enumerate() {
            let got = others[p].as_ref();
            let from = own.iter().position(|c| c == got).expect("the codes of an image of the set");
            assert_ne!(from, i, "{} kept its own codes", p.display());
            givers.push(from);
        }
        givers.sort();
        assert_eq!(givers, vec![0, 1, 2], "each image's codes go to exactly one other image");
        // Repeated paths count once; one image alone cannot be given another's codes.
        let e = other_images_codes(&model, vec![images[0].clone(), images[0].clone()], 7).unwrap_err();
        assert!(e.to_string().contains("at least two distinct image files"), "{e}");
    }
}
