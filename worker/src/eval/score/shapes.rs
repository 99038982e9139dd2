//! ShapesVQA, the project's own data: exact match after [`crate::eval::normalize`] against
//! each record's first gpt turn, with per-family and per-kind (S semantic, D detail)
//! accuracies. A question without a prediction is wrong and counted.
//!
//! `annotations`: the question set (LLaVA conversation JSON, as `htc data shapes` writes it).

use std::path::Path;

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{pct, pct_map, read_json, tally, Benchmark, Id, Lookup, Predictions, Report, Tally};
use crate::eval::normalize;

#[derive(Deserialize)]
struct Record {
    id: Value,
    conversations: Vec<Turn>,
    family: Option<String>,
    kind: Option<String>,
}

#[derive(Deserialize)]
struct Turn {
    from: String,
    value: String,
}

pub fn score(preds: &Predictions, annotations: &Path) -> Result<Report> {
    let records: Vec<Record> = read_json(annotations)?;
    if records.is_empty() {
        bail!("{}: no questions", annotations.display());
    }
    let mut lookup = Lookup::default();
    let mut correct = 0.0;
    let mut per_family: Tally = Tally::new();
    let mut per_kind: Tally = Tally::new();
    for (i, r) in records.iter().enumerate() {
        let id = match &r.id {
            Value::String(s) => Id::Str(s.clone()),
            Value::Number(n) if n.as_i64().is_some() => Id::Int(n.as_i64().unwrap_or_default()),
            other => bail!("{}: at `[{i}].id`: not a string or an integer: {other}", annotations.display()),
        };
        let Some(reference) = r.conversations.iter().find(|t| t.from == "gpt") else {
            bail!("{}: at `[{i}]` (record {id}): no gpt turn to score against", annotations.display());
        };
        let ok = lookup.get(preds, &id).is_some_and(|p| normalize(&p.text) == normalize(&reference.value));
        let ok = f64::from(u8::from(ok));
        correct += ok;
        for (map, key) in [(&mut per_family, &r.family), (&mut per_kind, &r.kind)] {
            if let Some(k) = key {
                tally(map, k, ok);
            }
        }
    }
    let mut metrics = Map::new();
    metrics.insert("family".into(), pct_map(&per_family));
    metrics.insert("kind".into(), pct_map(&per_kind));
    metrics.insert("questions".into(), json!(records.len()));
    metrics.insert("missing".into(), json!(lookup.missing.len()));
    metrics.insert("extra".into(), json!(lookup.extra(preds).len()));
    Ok(Report {
        benchmark: Benchmark::Shapes,
        score: pct(correct, records.len() as f64),
        metrics,
        notes: lookup.notes(preds, "wrong"),
    })
}
