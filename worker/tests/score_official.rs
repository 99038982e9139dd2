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

/// The benchmarks with an official scorer (all but the project's own ShapesVQA).
fn official() -> impl Iterator<Item = Benchmark> {
    Benchmark::ALL.into_iter().filter(|b| *b != Benchmark::Shapes)
}

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
    for b in official() {
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
    for b in official() {
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

/// A temporary folder for one case.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("htc-score-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

fn error(b: Benchmark, preds: &str, ann: &Path) -> String {
    let d = scratch(&format!("{b}-preds"));
    let p = write(&d.join("answers.jsonl"), preds);
    format!("{:#}", score(b, &p, ann).unwrap_err())
}

#[test]
fn bad_annotations_get_one_clear_error_naming_the_file_and_the_problem() {
    let d = scratch("bad");
    let one = "{\"question_id\": 1, \"text\": \"yes\", \"prompt\": \"q\"}\n";
    let cases: Vec<(Benchmark, String, PathBuf, &str)> = vec![
        (Benchmark::Gqa, one.into(), d.join("nowhere"), "no such file or directory (the gqa annotations)"),
        (Benchmark::Vqav2, one.into(), scratch("vqa-empty"), "holds no `*annotations*.json`"),
        (
            Benchmark::Vqav2,
            one.into(),
            write(
                &d.join("v.json"),
                r#"{"annotations": [{"question_id": 1, "question_type": "what", "answer_type": "other"}]}"#,
            ),
            "at `annotations[0]`",
        ),
        (
            Benchmark::Gqa,
            one.into(),
            write(
                &d.join("g.json"),
                r#"{"1": {"answer": 3, "isBalanced": true, "types": {"structural": "query", "semantic": "obj"}}}"#,
            ),
            "at `1.answer`",
        ),
        (Benchmark::Pope, one.into(), scratch("pope-empty"), "llava_pope_test.jsonl"),
        (
            Benchmark::Mme,
            "{\"question_id\": \"existence/1.jpg\", \"text\": \"Yes\", \"prompt\": \"q\"}\n".into(),
            scratch("mme-empty"),
            "MME task `existence`",
        ),
        (
            Benchmark::Sqa,
            "{\"question_id\": \"1\", \"text\": \"A\", \"prompt\": \"no image here\"}\n".into(),
            {
                let s = scratch("sqa");
                write(&s.join("problems.json"), r#"{"1": {"choices": ["a", "b"], "answer": 0}}"#);
                write(&s.join("pid_splits.json"), r#"{"test": ["1"]}"#);
                s
            },
            "no answered test problem is an image question",
        ),
        (
            Benchmark::Sqa,
            one.into(),
            {
                let s = scratch("sqa2");
                write(&s.join("problems.json"), r#"{}"#);
                write(&s.join("pid_splits.json"), r#"{"test": ["7"]}"#);
                s
            },
            "test problem `7` is not in",
        ),
        (
            Benchmark::Seed,
            one.into(),
            write(
                &d.join("seed.json"),
                r#"{"questions": [{"question_id": "1", "question_type_id": 9, "data_type": "image", "answer": "A"}], "question_type": {"Scene Understanding": 1}}"#,
            ),
            "question_type_id 9 is not in `question_type`",
        ),
        (
            Benchmark::Mmbench,
            one.into(),
            write(&d.join("m.tsv"), "index\tquestion\nx\ty\n"),
            "no `answer` column",
        ),
        (
            Benchmark::Mmbench,
            one.into(),
            write(
                &d.join("m2.tsv"),
                "index\tquestion\tA\tB\tanswer\tcategory\tl2-category\nseven\tq\ta\tb\tA\tc\tl\n",
            ),
            "m2.tsv line 2: index `seven` is not an integer",
        ),
        (
            Benchmark::Shapes,
            one.into(),
            write(&d.join("s.json"), r#"[{"id": "a", "conversations": []}]"#),
            "no gpt turn",
        ),
    ];
    for (b, preds, ann, want) in cases {
        let e = error(b, &preds, &ann);
        assert!(e.contains(want), "{b}: {e:?} lacks {want:?}");
    }
    let missing = score(Benchmark::Pope, &d.join("none.jsonl"), &d).unwrap_err();
    assert!(format!("{missing:#}").contains("cannot read"), "{missing:#}");
}

#[test]
fn mme_answers_that_match_no_question_or_break_lines_are_refused() {
    let root = fixtures().join("mme").join("MME_Benchmark_release_version");
    let e = error(
        Benchmark::Mme,
        "{\"question_id\": \"count/none.jpg\", \"text\": \"Yes\", \"prompt\": \"q\"}\n",
        &root,
    );
    assert!(e.contains("task `count` has no ground truth none.txt"), "{e}");
    let first = std::fs::read_to_string(fixtures().join("mme/predictions.jsonl")).unwrap();
    let line: Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    let mut bad = line.clone();
    bad["prompt"] = "Is this not a question of this image?".into();
    let e = error(Benchmark::Mme, &format!("{bad}\n"), &root);
    assert!(e.contains("has no question") && e.contains("line 1"), "{e}");
    let mut bad = line;
    bad["text"] = "Yes\tindeed".into();
    let e = error(Benchmark::Mme, &format!("{bad}\n"), &root);
    assert!(e.contains("holds a tab or a line break"), "{e}");
}

#[test]
fn retention_reads_score_outputs_and_names_what_it_leaves_out() {
    let d = scratch("retention");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_htc")).args(args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    // The upper bound: real `htc score --json` lines for GQA and SEED (60.9756... and 37.8378...).
    let mut upper = String::new();
    for b in [Benchmark::Gqa, Benchmark::Seed] {
        let preds = fixtures().join(b.name()).join("predictions.jsonl");
        let (ok, out, err) = run(&[
            "score",
            "--benchmark",
            b.name(),
            "--predictions",
            preds.to_str().unwrap(),
            "--annotations",
            annotations(b).to_str().unwrap(),
            "--json",
        ]);
        assert!(ok, "{err}");
        upper += &out;
    }
    let retention = |u: &Path, l: &Path, m: &Path, json: bool| {
        let mut args = vec!["retention", "--upper", u.to_str().unwrap(), "--lower", l.to_str().unwrap()];
        args.extend(["--model", m.to_str().unwrap()]);
        if json {
            args.push("--json");
        }
        run(&args)
    };
    let u = write(&d.join("upper.jsonl"), &upper);
    let l = write(
        &d.join("lower.json"),
        r#"[{"benchmark": "gqa", "score": 40.0}, {"benchmark": "seed", "score": 30.0}, {"benchmark": "pope", "score": 50.0}]"#,
    );
    let m = write(
        &d.join("model.json"),
        r#"[{"benchmark": "gqa", "score": 50.0}, {"benchmark": "seed", "score": 35.0}]"#,
    );
    let (ok, out, err) = retention(&u, &l, &m, true);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let gqa_upper = 100.0 * 25.0 / 41.0; // expected.json: 25 of 41 balanced questions right
    let gqa = (50.0 - 40.0) / (gqa_upper - 40.0);
    let seed_upper = 100.0 * 14.0 / 37.0;
    let seed = (35.0 - 30.0) / (seed_upper - 30.0);
    assert!((v["benchmarks"]["gqa"]["retention"].as_f64().unwrap() - gqa).abs() < 1e-12, "{v}");
    assert!((v["average"].as_f64().unwrap() - (gqa + seed) / 2.0).abs() < 1e-12, "{v}");
    assert_eq!(v["left_out"]["pope"], serde_json::json!(["lower"]));
    assert!(err.contains("pope is left out of the average: only in lower"), "{err}");
    let (ok, table, _) = retention(&u, &l, &m, false);
    assert!(ok && table.contains("average") && table.contains("left out: pope"), "{table}");
    let same = write(&d.join("same.json"), r#"[{"benchmark": "gqa", "score": 50.0}]"#);
    let (ok, _, err) = retention(&same, &same, &m, false);
    assert!(!ok && err.contains("gqa: the upper and lower bounds are equal (50)"), "{err}");
    let bad = write(&d.join("bad.json"), r#"[{"benchmark": "gqa"}]"#);
    let (ok, _, err) = retention(&bad, &l, &m, false);
    assert!(!ok && err.contains("bad.json: entry 0 is not an `htc score --json` output"), "{err}");
}
