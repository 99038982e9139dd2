//! `htc score` against the official scorers: each benchmark's fixture under
//! `fixtures/scoring/<benchmark>/` holds annotations in the benchmark's released format, a
//! LLaVA answer file with tricky answers, and `expected.json`, written by running the
//! benchmark's official scoring code on them (`official.py` beside it; the fixture's README
//! names the code, its commit and the command). Every number in `expected.json` must come
//! out within 1e-6 (counts exactly), through the library and through the `htc` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use htc_worker::eval::score::{score, Benchmark};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/scoring")
}

/// The annotations argument of each fixture.
fn annotations(b: Benchmark) -> PathBuf {
    let dir = fixtures().join(b.name());
    match b {
        Benchmark::Vqav2 => dir.join("annotations"),
        Benchmark::Gqa => dir.join("testdev_balanced_questions.json"),
        Benchmark::Mme => dir.join("MME_Benchmark_release_version"),
        Benchmark::Seed => dir.join("SEED-Bench.json"),
        Benchmark::Mmbench => dir.join("mmbench_dev_20230712.tsv"),
        Benchmark::Pope | Benchmark::Sqa | Benchmark::Shapes => dir,
    }
}

const OFFICIAL: [Benchmark; 7] = [
    Benchmark::Vqav2,
    Benchmark::Gqa,
    Benchmark::Pope,
    Benchmark::Mme,
    Benchmark::Sqa,
    Benchmark::Seed,
    Benchmark::Mmbench,
];

/// Every leaf of `want` is in `got` and equal (numbers within 1e-6; integers exactly).
fn compare(path: &str, want: &Value, got: &Value, errors: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                match g.get(k) {
                    Some(gv) => compare(&format!("{path}.{k}"), wv, gv, errors),
                    None => errors.push(format!("{path}.{k}: missing (want {wv})")),
                }
            }
        }
        (Value::Number(w), Value::Number(g)) => {
            let (wf, gf) = (w.as_f64().unwrap(), g.as_f64().unwrap());
            let exact = w.is_u64() || w.is_i64();
            if (exact && wf != gf) || (wf - gf).abs() > 1e-6 {
                errors.push(format!("{path}: {gf} (want {wf})"));
            }
        }
        (w, g) if w == g => {}
        (w, g) => errors.push(format!("{path}: {g} (want {w})")),
    }
}

fn expected(b: Benchmark) -> Value {
    let raw = std::fs::read_to_string(fixtures().join(b.name()).join("expected.json")).unwrap();
    serde_json::from_str(&raw).unwrap()
}

#[test]
fn every_benchmark_scores_as_its_official_code() {
    let mut errors = Vec::new();
    for b in OFFICIAL {
        let preds = fixtures().join(b.name()).join("predictions.jsonl");
        match score(b, &preds, &annotations(b)) {
            Ok(r) => compare(b.name(), &expected(b), &r.to_json(), &mut errors),
            Err(e) => errors.push(format!("{b}: {e:#}")),
        }
    }
    assert!(errors.is_empty(), "{} differences:\n{}", errors.len(), errors.join("\n"));
}

#[test]
fn the_binary_prints_one_json_object_and_a_table() {
    for b in OFFICIAL {
        let preds = fixtures().join(b.name()).join("predictions.jsonl");
        let run = |json: bool| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_htc"));
            c.args(["score", "--benchmark", b.name(), "--predictions"])
                .arg(&preds)
                .arg("--annotations")
                .arg(annotations(b));
            if json {
                c.arg("--json");
            }
            let out = c.output().unwrap();
            assert!(out.status.success(), "{b}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        let printed = run(true);
        let v: Value = serde_json::from_str(printed.trim()).unwrap();
        let mut errors = Vec::new();
        compare(b.name(), &expected(b), &v, &mut errors);
        assert!(errors.is_empty(), "{}", errors.join("\n"));
        assert_eq!(printed.trim().lines().count(), 1);
        let table = run(false);
        let headline = format!("{:.4}", v["score"].as_f64().unwrap());
        assert!(table.starts_with(b.name()) && table.contains(&headline), "{table}");
    }
}
