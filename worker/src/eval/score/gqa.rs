//! GQA testdev-balanced: exact match of the answer with LLaVA's conversion (every trailing
//! period removed, lowercased; nothing else) against the question's answer, over the
//! balanced questions. Ids are the annotation file's string keys.
//!
//! `annotations`: `testdev_balanced_questions.json`, or the folder holding it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::{json, Map};

use super::{file_in, pct, pct_map, read_json, tally, Benchmark, Id, Lookup, Predictions, Report, Tally};

#[derive(Deserialize)]
struct Question {
    answer: String,
    #[serde(rename = "isBalanced")]
    is_balanced: bool,
    types: Types,
}

#[derive(Deserialize)]
struct Types {
    structural: String,
    semantic: String,
}

/// LLaVA's `convert_gqa_for_eval.py`: `text.rstrip('.').lower()`.
pub fn answer(text: &str) -> String {
    text.trim_end_matches('.').to_lowercase()
}

pub fn score(preds: &Predictions, annotations: &Path) -> Result<Report> {
    let path = file_in(annotations, "testdev_balanced_questions.json");
    let questions: BTreeMap<String, Question> = read_json(&path)?;
    let mut lookup = Lookup::default();
    let (mut correct, mut total) = (0.0, 0.0);
    let mut binary = (0.0, 0.0);
    let mut open = (0.0, 0.0);
    let mut structural: Tally = Tally::new();
    let mut semantic: Tally = Tally::new();
    for (qid, q) in questions.iter().filter(|(_, q)| q.is_balanced) {
        let ok = match lookup.get(preds, &Id::Str(qid.clone())) {
            Some(p) => f64::from(u8::from(answer(&p.text) == q.answer)),
            None => 0.0,
        };
        correct += ok;
        total += 1.0;
        let kind = if q.types.structural == "query" { &mut open } else { &mut binary };
        kind.0 += ok;
        kind.1 += 1.0;
        for (map, key) in [(&mut structural, &q.types.structural), (&mut semantic, &q.types.semantic)] {
            tally(map, key, ok);
        }
    }
    if total == 0.0 {
        bail!("{}: no balanced questions (`isBalanced`)", path.display());
    }
    // Predictions for unbalanced questions are expected (LLaVA answers every testdev
    // question); only ids the file lacks altogether are extra.
    let extra =
        lookup.extra(preds).into_iter().filter(|id| !matches!(id, Id::Str(s) if questions.contains_key(s)));
    let extra = extra.count();
    let mut metrics = Map::new();
    metrics.insert("binary".into(), json!(pct(binary.0, binary.1)));
    metrics.insert("open".into(), json!(pct(open.0, open.1)));
    metrics.insert("structural".into(), pct_map(&structural));
    metrics.insert("semantic".into(), pct_map(&semantic));
    metrics.insert("questions".into(), json!(total as usize));
    metrics.insert("missing".into(), json!(lookup.missing.len()));
    metrics.insert("extra".into(), json!(extra));
    let mut notes = Vec::new();
    if !lookup.missing.is_empty() {
        notes.push(format!(
            "{} balanced questions have no prediction (first: {}); each is counted wrong (the official \
             scorer stops with an error instead)",
            lookup.missing.len(),
            lookup.missing[0]
        ));
    }
    if lookup.retyped > 0 {
        notes.push(format!(
            "{} of them have a prediction whose question_id is an integer; GQA's ids are strings",
            lookup.retyped
        ));
    }
    if extra > 0 {
        notes.push(format!(
            "{extra} predictions are for questions the annotations do not have; they are ignored"
        ));
    }
    Ok(Report { benchmark: Benchmark::Gqa, score: pct(correct, total), metrics, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_trailing_periods_and_case_change() {
        for (t, want) in
            [("Yes.", "yes"), ("No..", "no"), ("LEFT", "left"), (" yes", " yes"), ("no\n", "no\n")]
        {
            assert_eq!(answer(t), want);
        }
    }
}
