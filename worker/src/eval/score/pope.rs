//! POPE: yes/no answers against each category's labels (`coco/coco_pope_<category>.json`),
//! F1 with "yes" as the positive class, averaged over the categories. The answer rule is
//! LLaVA's `eval_pope.py`: the text up to its first period, commas removed, split on single
//! spaces: "no" if a word is exactly `No`, `no` or `not`, else "yes".
//!
//! As in the official script, a category's answer lines (every line whose id
//! `llava_pope_test.jsonl` puts in the category, repeats included, in answer-file order) are
//! paired by position with the category's label lines: LLaVA writes answers in question order,
//! and then each answer meets its own label. A missing or repeated answer shifts every later
//! pair; the report counts them and says so. An answer for an id the question file lacks
//! (where the official script stops with an error) is left out and counted.
//!
//! `annotations`: a folder with `llava_pope_test.jsonl` and `coco/coco_pope_*.json`.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Map};

use super::{Benchmark, Id, Predictions, Report};

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
    let category: HashMap<i64, &str> =
        questions.iter().map(|q| (q.question_id, q.category.as_str())).collect();
    let answered: HashSet<&Id> = preds.lines.iter().map(|p| &p.id).collect();
    let mut extra = 0;
    let mut by_category: HashMap<&str, Vec<bool>> = HashMap::new();
    for p in &preds.lines {
        match &p.id {
            Id::Int(i) if category.contains_key(i) => {
                by_category.entry(category[i]).or_default().push(says_yes(&p.text))
            }
            _ => extra += 1,
        }
    }
    let mut metrics = Map::new();
    let mut f1_sum = 0.0;
    let mut missing = 0;
    let mut notes = Vec::new();
    for (cat, file) in &label_files {
        let labels: Vec<Label> = json_lines(file)?;
        let n_questions = questions.iter().filter(|q| q.category == *cat).count();
        if n_questions != labels.len() {
            bail!(
                "{} has {n_questions} questions of category `{cat}` but {} has {} labels",
                questions_path.display(),
                file.display(),
                labels.len()
            );
        }
        let absent = questions
            .iter()
            .filter(|q| q.category == *cat && !answered.contains(&Id::Int(q.question_id)))
            .count();
        missing += absent;
        let said = by_category.get(cat.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        if said.is_empty() {
            bail!("no answer is for a question of category `{cat}` ({})", file.display());
        }
        if absent > 0 || said.len() != labels.len() {
            notes.push(format!(
                "category `{cat}`: {} answer lines for {} labels ({absent} questions unanswered); answers \
                 are paired with labels by position, as the official script pairs them, so every answer \
                 after a gap or a repeat meets another question's label",
                said.len(),
                labels.len()
            ));
        }
        let mut c = Counts::default();
        for (&yes, label) in said.iter().zip(&labels) {
            let truth = label.label != "no"; // eval_pope.py: anything but "no" is a positive
            match (yes, truth) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let precision = ratio(c.tp, c.tp + c.fp);
        let recall = ratio(c.tp, c.tp + c.fn_);
        let f1 =
            if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
        let yes = said.iter().filter(|&&y| y).count();
        f1_sum += f1;
        metrics.insert(
            cat.clone(),
            json!({
                "accuracy": ratio(c.tp + c.tn, c.tp + c.tn + c.fp + c.fn_), "precision": precision,
                "recall": recall, "f1": f1, "yes_ratio": ratio(yes, said.len()),
                "tp": c.tp, "fp": c.fp, "tn": c.tn, "fn": c.fn_,
            }),
        );
    }
    metrics.insert("missing".into(), json!(missing));
    metrics.insert("extra".into(), json!(extra));
    if extra > 0 {
        notes.push(format!(
            "{extra} answer lines are for ids llava_pope_test.jsonl does not have; they are left out \
             (the official script stops with an error)"
        ));
    }
    Ok(Report {
        benchmark: Benchmark::Pope,
        score: 100.0 * f1_sum / label_files.len() as f64,
        metrics,
        notes,
    })
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
