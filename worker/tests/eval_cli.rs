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
    // The same answers scored by `htc score --benchmark shapes` against the question set.
    let o = htc(&[
        "score",
        "--benchmark",
        "shapes",
        "--predictions",
        s(&root.join("a.jsonl")),
        "--annotations",
        s(&data),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["score"].as_f64(), v["metrics"]["questions"].as_u64()), (Some(100.0), Some(3)), "{v}");
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
    let o = htc(&[
        "score",
        "--benchmark",
        "shapes",
        "--predictions",
        s(&root.join("u.jsonl")),
        "--annotations",
        s(&data),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["score"].as_f64(), Some(0.0), "{v}");

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
    assert_eq!(
        (&q[0]["question_id"], q[0]["text"].as_str()),
        (&serde_json::json!(7), Some("blue")),
        "ids keep their JSON type"
    );
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

fn eval_args(args: &[&str]) -> (bool, String, String) {
    let o = htc(args);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// LLaVA-1.5's prompts for the benchmarks' question files, answers resumed after a stop, and
/// the answer files `htc score` reads (with the untrained tiny model: the answers are
/// whatever it says, the files' form is the point).
#[test]
fn benchmark_question_files_are_asked_as_llava_asks_them_and_resume() {
    use base64::Engine as _;
    let root = tmp("eval-bench", "");
    let (_, images) = colors();
    let model = common::fixtures().join("htc-train-tiny");
    let letter = "Answer with the option's letter from the given choices directly.";

    // ScienceQA: an image question and a text-only one.
    let sqa = root.join("sqa.json");
    std::fs::write(
        &sqa,
        r#"[{"id": "1", "image": "red-4.png", "conversations": [{"from": "human", "value": "<image>\nWhat color is it?\nA. red\nB. blue"}, {"from": "gpt", "value": "A"}]},
            {"id": "2", "conversations": [{"from": "human", "value": "Is snow cold?\nA. yes\nB. no"}, {"from": "gpt", "value": "A"}]}]"#,
    )
    .unwrap();
    let out = root.join("sqa-answers.jsonl");
    let (ok, stdout, err) = eval_args(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&sqa),
        "--images",
        s(&images),
        "--out",
        s(&out),
        "--benchmark",
        "sqa",
        "--quiet",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("answered 2 questions"), "{stdout}");
    let a = lines(&out);
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["question_id"], "1");
    assert_eq!(a[0]["prompt"], format!("<image>\nWhat color is it?\nA. red\nB. blue\n{letter}"));
    assert_eq!(
        a[1]["prompt"],
        format!("Is snow cold?\nA. yes\nB. no\n{letter}"),
        "a text-only question, answered by the LLM alone"
    );
    let ann = root.join("sqa-ann");
    std::fs::create_dir_all(&ann).unwrap();
    std::fs::write(
        ann.join("problems.json"),
        r#"{"1": {"choices": ["red", "blue"], "answer": 0}, "2": {"choices": ["yes", "no"], "answer": 0}}"#,
    )
    .unwrap();
    std::fs::write(ann.join("pid_splits.json"), r#"{"test": ["1", "2"]}"#).unwrap();
    let (ok, stdout, err) = eval_args(&[
        "score",
        "--benchmark",
        "sqa",
        "--predictions",
        s(&out),
        "--annotations",
        s(&ann),
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let m = &v["metrics"];
    assert_eq!(
        (m["total"].as_u64(), m["img_total"].as_u64(), m["missing"].as_u64()),
        (Some(2), Some(1), Some(0)),
        "{v}"
    );

    // MMBench: a question in two rotations, its image in the TSV.
    let png =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(images.join("red-4.png")).unwrap());
    let tsv = root.join("mmbench.tsv");
    std::fs::write(
        &tsv,
        format!(
            "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tsource\tl2-category\tcomment\tsplit\n\
             0\tWhat color is it?\tA plain square.\tred\tblue\t\t\tA\tcolor\t{png}\ts\tattr\t\tdev\n\
             1000000\tWhat color is it?\tA plain square.\tblue\tred\t\t\tB\tcolor\t{png}\ts\tattr\t\tdev\n"
        ),
    )
    .unwrap();
    let out = root.join("mmb-answers.jsonl");
    let (ok, _, err) = eval_args(&[
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&tsv),
        "--images",
        s(&images),
        "--out",
        s(&out),
        "--benchmark",
        "mmbench",
        "--quiet",
    ]);
    assert!(ok, "{err}");
    let a = lines(&out);
    assert_eq!(a.len(), 2);
    assert_eq!(a[1]["question_id"], 1000000);
    assert_eq!(a[0]["prompt"], "A plain square.\nWhat color is it?\nA. red\nB. blue");
    assert_eq!(a[1]["options"], serde_json::json!(["blue", "red"]));
    assert_eq!(a[1]["option_char"], serde_json::json!(["A", "B"]));
    let (ok, stdout, err) = eval_args(&[
        "score",
        "--benchmark",
        "mmbench",
        "--predictions",
        s(&out),
        "--annotations",
        s(&tsv),
        "--json",
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("\"questions\":1"), "{stdout}");

    // VQAv2-style question file: the short-answer suffix, then a resumed run.
    let q = root.join("vqa.jsonl");
    std::fs::write(
        &q,
        "{\"question_id\": 1, \"image\": \"red-4.png\", \"text\": \"What color is it?\"}\n\
         {\"question_id\": 2, \"image\": \"green-4.png\", \"text\": \"What color is it?\\nAnswer the question using a single word or phrase.\"}\n\
         {\"question_id\": 3, \"image\": \"blue-4.png\", \"text\": \"What color is it?\"}\n",
    )
    .unwrap();
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            s(&model),
            "--data",
            s(&q),
            "--images",
            s(&images),
            "--out",
            s(out),
            "--benchmark",
            "vqav2",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        eval_args(&args)
    };
    let whole = root.join("whole.jsonl");
    let (ok, stdout, err) = run(&whole, &[]);
    assert!(ok && stdout.contains("answered 3 questions"), "{stdout}{err}");
    let w = lines(&whole);
    for l in &w {
        assert_eq!(
            l["prompt"], "What color is it?\nAnswer the question using a single word or phrase.",
            "{l}"
        );
    }
    // A run stopped after one answer and in the middle of writing the second.
    let raw = std::fs::read_to_string(&whole).unwrap();
    let first = raw.lines().next().unwrap();
    let resumed = root.join("resumed.jsonl");
    std::fs::write(&resumed, format!("{first}\n{{\"question_id\": 2, \"te")).unwrap();
    let (ok, stdout, err) = run(&resumed, &[]);
    assert!(
        ok && stdout.contains("answered 2 questions") && stdout.contains("(1 were already there)"),
        "{stdout}{err}"
    );
    assert!(err.contains("partial line"), "{err}");
    assert_eq!(std::fs::read_to_string(&resumed).unwrap(), raw, "the resumed file equals the whole run's");
    let (ok, stdout, _) = run(&resumed, &[]);
    assert!(ok && stdout.contains("answered 0 questions"), "{stdout}");
    let (ok, stdout, _) = run(&resumed, &["--restart"]);
    assert!(ok && stdout.contains("answered 3 questions"), "{stdout}");
    std::fs::write(&resumed, format!("oops\n{first}\n")).unwrap();
    let (ok, _, err) = run(&resumed, &[]);
    assert!(!ok && err.contains("line 1: not an answer line") && err.contains("--restart"), "{err}");
    assert!(std::fs::read_to_string(&resumed).unwrap().starts_with("oops\n"), "a bad file is left as it was");
}
