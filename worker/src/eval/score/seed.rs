//! SEED-Bench: the answer text equal to the option letter, exactly (LLaVA's
//! `convert_seed_for_submission.py`), over every question in the annotation file; a question
//! without a prediction is wrong and still counted. A question's id is looked up as an
//! integer when it parses as one (LLaVA's answer files store image ids as JSON integers),
//! else as its string (video ids such as `v1738`).
//!
//! `annotations`: `SEED-Bench.json`, or the folder holding it.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::{json, Map};

use super::{file_in, pct, pct_map, read_json, tally, Benchmark, Id, Lookup, Predictions, Report, Tally};

#[derive(Deserialize)]
struct File {
    questions: Vec<Question>,
    question_type: HashMap<String, i64>,
}

#[derive(Deserialize)]
struct Question {
    question_id: String,
    question_type_id: i64,
    data_type: String,
    answer: String,
}

/// The key `question_id` is looked up under (`int(question_id)` where Python's `int` parses it).
fn key(question_id: &str) -> Id {
    let t = super::pytext::strip(question_id);
    match t.strip_prefix('+').unwrap_or(t).parse::<i64>() {
        Ok(i) if !t.contains('_') => Id::Int(i),
        _ => Id::Str(question_id.to_string()),
    }
}

pub fn score(preds: &Predictions, annotations: &Path) -> Result<Report> {
    let path = file_in(annotations, "SEED-Bench.json");
    let file: File = read_json(&path)?;
    if file.questions.is_empty() {
        bail!("{}: no questions", path.display());
    }
    let names: HashMap<i64, &String> = file.question_type.iter().map(|(n, id)| (*id, n)).collect();
    let mut lookup = Lookup::default();
    let mut per_type: Tally = Tally::new();
    let mut per_data: Tally = Tally::new();
    let mut correct = 0.0;
    for (i, q) in file.questions.iter().enumerate() {
        let Some(name) = names.get(&q.question_type_id) else {
            bail!(
                "{}: at `questions[{i}]` (question {}): question_type_id {} is not in `question_type`",
                path.display(),
                q.question_id,
                q.question_type_id
            );
        };
        let ok = lookup.get(preds, &key(&q.question_id)).is_some_and(|p| p.text == q.answer);
        let ok = f64::from(u8::from(ok));
        correct += ok;
        for (map, k) in [(&mut per_type, (*name).clone()), (&mut per_data, q.data_type.clone())] {
            tally(map, &k, ok);
        }
    }
    let total = file.questions.len();
    let mut metrics = Map::new();
    for (data, name) in [("image", "image_accuracy"), ("video", "video_accuracy")] {
        if let Some((c, t)) = per_data.get(data) {
            metrics.insert(name.into(), json!(pct(*c, *t)));
        }
    }
    metrics.insert("question_type".into(), pct_map(&per_type));
    metrics.insert("total".into(), json!(total));
    metrics.insert("missing".into(), json!(lookup.missing.len()));
    metrics.insert("extra".into(), json!(lookup.extra(preds).len()));
    Ok(Report {
        benchmark: Benchmark::Seed,
        score: pct(correct, total as f64),
        metrics,
        notes: lookup.notes(preds, "wrong"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_parse_are_integers() {
        assert_eq!(key("101669"), Id::Int(101669));
        assert_eq!(key("v1738"), Id::Str("v1738".into()));
        assert_eq!(key(" 12 "), Id::Int(12));
    }
}
