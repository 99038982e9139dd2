//! Retention, the paper's measure of what a compression keeps (Table 1's caption):
//! `(result − lower) / (upper − lower)` per benchmark, where the upper bound is the model
//! seeing every patch and the lower bound the model seeing no image, and the mean over the
//! benchmarks all three inputs have. Inputs are lists of `htc score --json` outputs.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};

/// One `htc score --json` output (its metrics are not needed here).
#[derive(Deserialize)]
struct Scored {
    benchmark: String,
    score: f64,
}

/// Reads a list of `htc score --json` outputs: a JSON array, or one object per line.
pub fn read_scores(path: &Path) -> Result<BTreeMap<String, f64>> {
    let raw = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let values: Vec<Value> = match serde_json::from_str::<Value>(&raw) {
        Ok(Value::Array(v)) => v,
        Ok(obj @ Value::Object(_)) => vec![obj],
        Ok(other) => {
            bail!("{}: expected a list of `htc score --json` outputs, found {other}", path.display())
        }
        Err(_) => raw
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{} line {}: not JSON", path.display(), n + 1))
            })
            .collect::<Result<_>>()?,
    };
    let mut out = BTreeMap::new();
    for (i, v) in values.into_iter().enumerate() {
        let s: Scored = serde_json::from_value(v).with_context(|| {
            format!("{}: entry {i} is not an `htc score --json` output (benchmark, score)", path.display())
        })?;
        if !s.score.is_finite() {
            bail!("{}: entry {i} ({}): the score is not a finite number", path.display(), s.benchmark);
        }
        if out.insert(s.benchmark.clone(), s.score).is_some() {
            bail!("{}: benchmark `{}` appears twice", path.display(), s.benchmark);
        }
    }
    if out.is_empty() {
        bail!("{}: no scores", path.display());
    }
    Ok(out)
}

/// Per-benchmark retention and its mean.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    /// benchmark → (upper, lower, model, retention).
    pub per_benchmark: BTreeMap<String, (f64, f64, f64, f64)>,
    pub average: f64,
    /// Benchmarks some inputs lack, each with the inputs that have it.
    pub left_out: BTreeMap<String, Vec<&'static str>>,
}

impl Retention {
    pub fn to_json(&self) -> Value {
        let per: serde_json::Map<String, Value> = self
            .per_benchmark
            .iter()
            .map(|(b, (u, l, m, r))| (b.clone(), json!({"upper": u, "lower": l, "model": m, "retention": r})))
            .collect();
        json!({"benchmarks": per, "average": self.average, "left_out": self.left_out})
    }

    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<10} {:>10} {:>10} {:>10} {:>10}\n",
            "benchmark", "upper", "lower", "model", "retention"
        );
        for (b, (u, l, m, r)) in &self.per_benchmark {
            s += &format!("{b:<10} {u:>10.4} {l:>10.4} {m:>10.4} {:>9.2}%\n", 100.0 * r);
        }
        s += &format!("{:<10} {:>43.2}%\n", "average", 100.0 * self.average);
        for (b, has) in &self.left_out {
            s += &format!("left out: {b} (only in {})\n", has.join(", "));
        }
        s
    }
}

/// Retention of `model` between `lower` and `upper`, each benchmark → score.
pub fn retention(
    upper: &BTreeMap<String, f64>, lower: &BTreeMap<String, f64>, model: &BTreeMap<String, f64>,
) -> Result<Retention> {
    let inputs = [("upper", upper), ("lower", lower), ("model", model)];
    let mut all: BTreeMap<&String, Vec<&'static str>> = BTreeMap::new();
    for (name, m) in inputs {
        for b in m.keys() {
            all.entry(b).or_default().push(name);
        }
    }
    let mut per_benchmark = BTreeMap::new();
    let mut left_out = BTreeMap::new();
    for (b, has) in all {
        if has.len() < 3 {
            left_out.insert(b.clone(), has);
            continue;
        }
        let (u, l, m) = (upper[b], lower[b], model[b]);
        if u == l {
            bail!("{b}: the upper and lower bounds are equal ({u}), so retention is undefined");
        }
        per_benchmark.insert(b.clone(), (u, l, m, (m - l) / (u - l)));
    }
    if per_benchmark.is_empty() {
        bail!(
            "no benchmark is in all three inputs (left out: {})",
            left_out.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let average = per_benchmark.values().map(|v| v.3).sum::<f64>() / per_benchmark.len() as f64;
    Ok(Retention { per_benchmark, average, left_out })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(v: &[(&str, f64)]) -> BTreeMap<String, f64> {
        v.iter().map(|(k, s)| (k.to_string(), *s)).collect()
    }

    #[test]
    fn hand_computed_cases() {
        let upper = m(&[("gqa", 62.0), ("pope", 86.0), ("mme", 1500.0)]);
        let lower = m(&[("gqa", 40.0), ("pope", 50.0), ("mme", 900.0)]);
        let model = m(&[("gqa", 51.0), ("pope", 86.0), ("mme", 800.0)]);
        let r = retention(&upper, &lower, &model).unwrap();
        // gqa (51-40)/(62-40) = 0.5; pope 1.0; mme (800-900)/600 = -1/6.
        assert_eq!(r.per_benchmark["gqa"].3, 0.5);
        assert_eq!(r.per_benchmark["pope"].3, 1.0);
        assert!((r.per_benchmark["mme"].3 + 1.0 / 6.0).abs() < 1e-15);
        assert!((r.average - (0.5 + 1.0 - 1.0 / 6.0) / 3.0).abs() < 1e-15);
        // Above the upper bound is allowed (> 100%).
        let r = retention(&m(&[("sqa", 60.0)]), &m(&[("sqa", 50.0)]), &m(&[("sqa", 65.0)])).unwrap();
        assert_eq!(r.average, 1.5);
    }

    #[test]
    fn benchmarks_missing_from_an_input_are_named_and_left_out() {
        let upper = m(&[("gqa", 60.0), ("seed", 58.0)]);
        let lower = m(&[("gqa", 40.0), ("seed", 30.0), ("mme", 1.0)]);
        let model = m(&[("gqa", 50.0)]);
        let r = retention(&upper, &lower, &model).unwrap();
        assert_eq!(r.per_benchmark.len(), 1);
        assert_eq!(r.average, 0.5);
        assert_eq!(r.left_out["seed"], vec!["upper", "lower"]);
        assert_eq!(r.left_out["mme"], vec!["lower"]);
        assert!(r.table().contains("left out: seed (only in upper, lower)"));
    }

    #[test]
    fn equal_bounds_and_no_common_benchmark_are_refused() {
        let e = retention(&m(&[("pope", 80.0)]), &m(&[("pope", 80.0)]), &m(&[("pope", 81.0)])).unwrap_err();
        assert!(e.to_string().contains("pope: the upper and lower bounds are equal (80)"), "{e}");
        let e = retention(&m(&[("a", 1.0)]), &m(&[("b", 0.0)]), &m(&[("a", 1.0)])).unwrap_err();
        assert!(e.to_string().contains("no benchmark is in all three inputs"), "{e}");
    }
}
