//! `htc eval` end to end: it scores a trained model right and an untrained one wrong, writes
//! LLaVA's answer-file lines, gives the same answers batched and one at a time, answers a
//! LLaVA question file without scoring it, and names the record or line of bad input.

mod common;

use std::path::{Path, PathBuf};

use common::{htc, s, tmp};

fn colors() -> (PathBuf, PathBuf) {
    let c = common::fixtures().join("colors");
    (c.join("val.json"), c.join("images"))
}

fn trained(root: &Path) -> PathBuf {
    let c = common::fixtures().join("colors");
    let out = root.join("run");
    let (model, data, images) =
        (common::fixtures().join("htc-train-tiny"), c.join("train.json"), c.join("images"));
    let o = htc(&common::train_args(&model, &data, &images, &out, "60"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out.join("checkpoint-60")
}

fn eval(model: &Path, data: &Path, images: &Path, out: &Path, batch: &str) -> (bool, String, String) {
    let o = htc(&[
        "eval",
        "--model",
        s(model),
        "--data",
        s(data),
        "--images",
        s(images),
        "--out",
        s(out),
        "--batch",
        batch,
        "--quiet",
    ]);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn eval_scores_answers_batches_and_reads_question_files() {
    let root = tmp("eval", "");
    let (data, images) = colors();
    let model = trained(&root);

    let (ok, stdout, err) = eval(&model, &data, &images, &root.join("a.jsonl"), "16");
    assert!(ok, "{err}");
    assert!(stdout.contains("overall") && stdout.contains("100.0%  (3/3)"), "{stdout}");
    let a = lines(&root.join("a.jsonl"));
    assert_eq!(a.len(), 3);
    for l in &a {
        for key in ["question_id", "prompt", "text", "model_id", "metadata"] {
            assert!(l.get(key).is_some(), "answer lines have `{key}`: {l}");
        }
        assert_eq!(l["text"], l["metadata"]["reference"], "{l}");
        assert_eq!(l["model_id"], "checkpoint-60");
    }
    let (ok, _, err) = eval(&model, &data, &images, &root.join("b.jsonl"), "1");
    assert!(ok, "{err}");
    let b = lines(&root.join("b.jsonl"));
    assert_eq!(
        a.iter().map(|l| &l["text"]).collect::<Vec<_>>(),
        b.iter().map(|l| &l["text"]).collect::<Vec<_>>(),
        "batched and one-at-a-time decoding answer alike"
    );

    let untrained = common::fixtures().join("htc-train-tiny");
    let (ok, stdout, err) = eval(&untrained, &data, &images, &root.join("u.jsonl"), "16");
    assert!(ok, "{err}");
    assert!(stdout.contains("0.0%  (0/3)"), "the untrained model names no colour: {stdout}");

    let qfile = root.join("q.jsonl");
    std::fs::write(
        &qfile,
        "{\"question_id\": 7, \"image\": \"blue-4.png\", \"text\": \"What color is it?\"}\n\n\
         {\"question_id\": \"x\", \"image\": \"red-4.png\", \"text\": \"<image>\\nWhat color is it?\"}\n",
    )
    .unwrap();
    let (ok, stdout, err) = eval(&model, &qfile, &images, &root.join("q-out.jsonl"), "16");
    assert!(ok, "{err}");
    assert!(!stdout.contains("overall"), "a question file is answered, not scored: {stdout}");
    let q = lines(&root.join("q-out.jsonl"));
    assert_eq!((q[0]["question_id"].as_str(), q[0]["text"].as_str()), (Some("7"), Some("blue")));
    assert_eq!((q[1]["question_id"].as_str(), q[1]["text"].as_str()), (Some("x"), Some("red")));

    std::fs::write(&qfile, "{\"question_id\": 1, \"image\": \"a.png\", \"text\": \"?\"}\n{oops\n").unwrap();
    let (ok, _, err) = eval(&model, &qfile, &images, &root.join("z.jsonl"), "16");
    assert!(!ok && err.contains("line 2: not a question record"), "{err}");
    std::fs::write(&qfile, "{\"question_id\": \"q9\", \"image\": \"nope.png\", \"text\": \"?\"}\n").unwrap();
    let (ok, _, err) = eval(&model, &qfile, &images, &root.join("z.jsonl"), "16");
    assert!(!ok && err.contains("question `q9`"), "{err}");
    let bad = root.join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"id": "r1", "image": "red-4.png", "conversations": [{"from": "human", "value": "?"}]}]"#,
    )
    .unwrap();
    let (ok, _, err) = eval(&model, &bad, &images, &root.join("z.jsonl"), "16");
    assert!(!ok && err.contains("record `r1` needs a human and a gpt turn"), "{err}");
}

#[test]
fn exact_match_ignores_case_spaces_and_a_final_period() {
    use htc_worker::eval::{normalize, Item, Score};
    assert_eq!(normalize("  Red. "), "red");
    assert_eq!(normalize("3"), "3");
    let item = |r: &str, f: &str, k: &str| Item {
        id: "i".into(),
        image: "x.png".into(),
        question: "q".into(),
        reference: Some(r.into()),
        family: Some(f.into()),
        kind: Some(k.into()),
    };
    let mut s = Score::default();
    s.add(&item("red", "color", "S"), "Red.");
    s.add(&item("2", "count", "S"), "3");
    s.add(&item("left", "position", "D"), "left");
    assert_eq!((s.correct, s.total), (2, 3));
    assert_eq!(s.per_kind["S"], (1, 2));
    assert_eq!(s.per_family["position"], (1, 1));
    assert!(s.report().contains("overall"));
}
