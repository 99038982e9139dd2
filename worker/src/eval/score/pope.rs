//! POPE: yes/no answers against each category's labels (`coco/coco_pope_<category>.json`),
//! F1 with "yes" as the positive class, averaged over the categories. The answer rule is
//! LLaVA's `eval_pope.py`: the text up to its first period, commas removed, split on single
//! spaces: "no" if a word is exactly `No`, `no` or `not`, else "yes".
//!
//! The official script pairs the category's predictions with the label lines by position in
//! the answer file. Here the k-th question of a category in `llava_pope_test.jsonl` is paired
//! with the k-th label line, and its prediction is found by id: the same pairs when the answer
//! file is in question order (as LLaVA writes it), and still right when it is not. A missing
//! prediction is counted as a wrong answer.
//!
//! `annotations`: a folder with `llava_pope_test.jsonl` and `coco/coco_pope_*.json`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Map};

use super::{Benchmark, Id, Lookup, Predictions, Report};

#[derive(Deserialize)]
struct LlavaQuestion {
    question_id: i64,
    category: String,
}

#[derive(Deserialize)]
struct Label {
    label: String,
}

/// `eval_pope.py`'s reading of an answer: true for "yes".
pub fn says_yes(text: &str) -> bool {
    let first = text.split('.').next().unwrap_or("");
    let t = first.replace(',', "");
    !t.split(' ').any(|w| matches!(w, "No" | "no" | "not"))
}

/// Reads JSON lines, naming the file and line of a bad one.
fn json_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let raw = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    raw.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), n + 1)))
        .collect()
}

#[derive(Default)]
struct Counts {
    tp: usize,
    fp: usize,
    tn: usize,
    fn_: usize,
}

pub fn score(preds: &Predictions, annotations: &Path) -> Result<Report> {
    let questions_path = annotations.join("llava_pope_test.jsonl");
    let questions: Vec<LlavaQuestion> = json_lines(&questions_path)?;
    let coco = annotations.join("coco");
    let mut label_files: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(&coco)
        .with_context(|| format!("cannot read {} (POPE's label files)", coco.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let cat = name.strip_prefix("coco_pope_")?.strip_suffix(".json")?.to_string();
            Some((cat, p))
        })
        .collect();
    label_files.sort();
    if label_files.is_empty() {
        bail!("{} holds no coco_pope_<category>.json", coco.display());
    }
    let mut lookup = Lookup::default();
    let mut metrics = Map::new();
    let mut f1_sum = 0.0;
    for (cat, file) in &label_files {
        let labels: Vec<Label> = json_lines(file)?;
        let ids: Vec<i64> = questions.iter().filter(|q| q.category == *cat).map(|q| q.question_id).collect();
        if ids.len() != labels.len() {
            bail!(
                "{} has {} questions of category `{cat}` but {} has {} labels",
                questions_path.display(),
                ids.len(),
                file.display(),
                labels.len()
            );
        }
        let mut c = Counts::default();
        let mut yes = 0;
        for (id, label) in ids.iter().zip(&labels) {
            let truth = match label.label.as_str() {
                "no" => false,
                _ => true, // eval_pope.py: anything but "no" is a positive
            };
            let said = match lookup.get(preds, &Id::Int(*id)) {
                Some(p) => says_yes(&p.text),
                None => !truth,
            };
            yes += usize::from(said);
            match (said, truth) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let precision = ratio(c.tp, c.tp + c.fp);
        let recall = ratio(c.tp, c.tp + c.fn_);
        let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
        let n = labels.len();
        f1_sum += f1;
        metrics.insert(
            cat.clone(),
            json!({
                "accuracy": ratio(c.tp + c.tn, n), "precision": precision, "recall": recall, "f1": f1,
                "yes_ratio": ratio(yes, n), "tp": c.tp, "fp": c.fp, "tn": c.tn, "fn": c.fn_,
            }),
        );
    }
    let in_questions: BTreeMap<i64, ()> = questions.iter().map(|q| (q.question_id, ())).collect();
    let extra = lookup.extra(preds).iter().filter(|id| !matches!(id, Id::Int(i) if in_questions.contains_key(i))).count();
    metrics.insert("missing".into(), json!(lookup.missing.len()));
    metrics.insert("extra".into(), json!(extra));
    let mut notes = lookup.notes(preds, "as a wrong answer");
    notes.retain(|n| !n.contains("do not have"));
    if extra > 0 {
        notes.push(format!("{extra} predictions are for questions llava_pope_test.jsonl does not have; they are ignored"));
    }
    Ok(Report { benchmark: Benchmark::Pope, score: 100.0 * f1_sum / label_files.len() as f64, metrics, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_rule_is_case_sensitive_and_reads_the_first_sentence() {
        for (t, yes) in [
            ("Yes", true),
            ("No", false),
            ("NO", true),
            ("Nope", true),
            ("Not", true),
            ("None", true),
            ("Yes, there is not.", false),
            ("no\nthere is none", true),
            ("Yes. No.", true),
            ("No, there is.", false),
            ("", true),
        ] {
            assert_eq!(says_yes(t), yes, "{t:?}");
        }
    }
}
