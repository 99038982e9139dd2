//! `htc train` end to end on a tiny HTC model (`fixtures/htc-train-tiny` with a word-level
//! tokenizer) and the `fixtures/colors` data set: it learns a task from untrained (no colour named) to perfect, a SIGKILLed run resumes to the same
//! bytes as an uninterrupted one, checkpoints are whole or absent, and every kind of bad record
//! is skipped with its reason (or stops a `--strict` run, naming the record).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{htc, s, tmp, train_args};
use serde_json::json;

const COLORS: [&str; 3] = ["red", "green", "blue"];

/// The tiny HTC model with its word-level tokenizer (`fixtures/htc-train-tiny`).
fn model_dir(_root: &Path) -> PathBuf {
    common::fixtures().join("htc-train-tiny")
}

/// `fixtures/colors`: 4 noisy solid-colour images per colour, each asked "What color is it?".
fn color_data(root: &Path) -> (PathBuf, PathBuf) {
    let src = common::fixtures().join("colors");
    let images = root.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for e in std::fs::read_dir(src.join("images")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, images.join(p.file_name().unwrap())).unwrap();
    }
    (src.join("train.json"), images)
}

fn answer(model: &Path, image: &Path) -> String {
    let o = htc(&[
        "ask",
        "--model",
        s(model),
        "--image",
        s(image),
        "--prompt",
        "What color is it?",
        "--max-new-tokens",
        "4",
    ]);
    assert!(o.status.success(), "ask failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn accuracy(model: &Path, images: &Path) -> f64 {
    // The held-out images (the validation split of `fixtures/colors`).
    let right =
        COLORS.iter().filter(|name| answer(model, &images.join(format!("{name}-4.png"))) == **name).count();
    right as f64 / COLORS.len() as f64
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn training_learns_a_tiny_task_from_untrained_to_perfect() {
    let root = tmp("train-learn", "");
    let model = model_dir(&root);
    let (data, images) = color_data(&root);
    let before = accuracy(&model, &images);
    let out = root.join("run");
    let o = htc(&train_args(&model, &data, &images, &out, "60"));
    assert!(o.status.success(), "train failed: {}", String::from_utf8_lossy(&o.stderr));
    let m = metrics(&out);
    assert_eq!(m.len(), 60, "one metrics line per step");
    let (first, last) = (m[0]["loss"].as_f64().unwrap(), m[59]["loss"].as_f64().unwrap());
    for key in ["step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"] {
        assert!(m[0].get(key).is_some(), "metrics lines have `{key}`");
    }
    let plot = image::open(out.join("loss.png")).expect("loss.png is a readable image");
    assert_eq!((plot.width(), plot.height()), (800, 480));
    let ckpt = out.join("checkpoint-60");
    let after = accuracy(&ckpt, &images);
    eprintln!("accuracy {before:.2} -> {after:.2}; loss {first:.3} -> {last:.4}");
    assert!(last < 0.05 && last < first / 20.0, "loss {first} -> {last}");
    assert_eq!(after, 1.0, "the trained checkpoint names every colour (untrained: {before:.2})");
}

fn wait_for(path: &Path, child: &mut std::process::Child) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(120) {
        if path.is_file() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn sigkill_then_resume_equals_an_uninterrupted_run_bit_for_bit() {
    let root = tmp("train-resume", "");
    let model = model_dir(&root);
    let (data, images) = color_data(&root);
    let whole = root.join("whole");
    let mut args = train_args(&model, &data, &images, &whole, "10");
    args.extend(["--save-every", "1", "--keep", "20"]);
    let o = htc(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let cut = root.join("cut");
    let mut args = train_args(&model, &data, &images, &cut, "10");
    args.extend(["--save-every", "1", "--keep", "20"]);
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_htc")).args(&args).env("HTC_LOG", "warn").spawn().unwrap();
    assert!(wait_for(&cut.join("checkpoint-3/trainer_state.json"), &mut child), "checkpoint-3 appears");
    assert!(child.try_wait().unwrap().is_none(), "the run is still going when it is killed");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!cut.join("checkpoint-10").exists(), "the run was cut short");
    for e in std::fs::read_dir(&cut).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("checkpoint-") {
            for f in ["model.safetensors", "trainer_state.safetensors", "trainer_state.json", "config.json"] {
                assert!(p.join(f).is_file(), "{name} is whole: it has {f}");
            }
        }
    }
    args.push("--resume");
    let o = htc(&args);
    assert!(o.status.success(), "resume failed: {}", String::from_utf8_lossy(&o.stderr));
    for f in ["model.safetensors", "trainer_state.safetensors"] {
        let a = std::fs::read(whole.join("checkpoint-10").join(f)).unwrap();
        let b = std::fs::read(cut.join("checkpoint-10").join(f)).unwrap();
        assert!(a == b, "{f}: the resumed run differs from the uninterrupted one");
    }
    let steps: Vec<u64> = metrics(&cut).iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=10).collect::<Vec<_>>(), "each step logged once");
    assert_eq!(
        metrics(&cut).last().unwrap()["loss"],
        metrics(&whole).last().unwrap()["loss"],
        "same last loss"
    );
    // The result serves as is.
    assert!(!answer(&cut.join("checkpoint-10"), &images.join("red-0.png")).is_empty());

    // A finished run is not silently overwritten, and a resume must keep the settings.
    let o = htc(&train_args(&model, &data, &images, &cut, "10"));
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("pass --resume"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut changed = train_args(&model, &data, &images, &cut, "10");
    let i = changed.iter().position(|a| *a == "3e-3").unwrap();
    changed[i] = "1e-3";
    changed.push("--resume");
    let o = htc(&changed);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("different settings"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn bad_records_are_skipped_with_their_reason_or_stop_a_strict_run() {
    let root = tmp("train-bad", "");
    let model = model_dir(&root);
    let (_, images) = color_data(&root);
    std::fs::write(images.join("garbage.png"), b"not an image").unwrap();
    let good = |id: &str| {
        json!({"id": id, "image": "red-0.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat color is it?"}, {"from": "gpt", "value": "red"}]})
    };
    let long = format!("<image>\n{}", "color ".repeat(400));
    let records = json!([
        good("ok-1"),
        {"id": "missing", "image": "nope.png", "conversations": good("x")["conversations"]},
        {"id": "garbage", "image": "garbage.png", "conversations": good("x")["conversations"]},
        {"id": "no-answer", "image": "red-0.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"}]},
        {"id": "no-placeholder", "image": "red-0.png", "conversations": [
            {"from": "human", "value": "What color is it?"}, {"from": "gpt", "value": "red"}]},
        {"id": "order", "image": "red-0.png", "conversations": [
            {"from": "gpt", "value": "red"}, {"from": "human", "value": "<image>\nWhat?"}]},
        {"id": "no-image", "conversations": good("x")["conversations"]},
        {"id": "too-long", "image": "red-0.png", "conversations": [
            {"from": "human", "value": long}, {"from": "gpt", "value": "red"}]},
        good("ok-2"),
    ]);
    let data = root.join("bad.json");
    std::fs::write(&data, records.to_string()).unwrap();
    let out = root.join("run");
    let mut args = train_args(&model, &data, &images, &out, "1");
    let i = args.iter().position(|a| *a == "6").unwrap();
    args[i] = "2";
    let i = args.iter().position(|a| *a == "3").unwrap();
    args[i] = "1";
    let o = htc(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("on 2 examples (7 skipped)"), "{stdout}");
    for (why, id) in [
        ("image file not found", "missing"),
        ("not readable as an image", "garbage"),
        ("no gpt turn", "no-answer"),
        ("no `<image>` placeholder", "no-placeholder"),
        ("do not alternate", "order"),
        ("no `image` field", "no-image"),
        ("longer than the model's context", "too-long"),
    ] {
        let line = err.lines().find(|l| l.contains(why)).unwrap_or_else(|| panic!("no `{why}` in {err}"));
        assert!(line.contains(id), "`{why}` names `{id}`: {line}");
    }
    let strict_out = root.join("strict");
    let mut strict = args.clone();
    let i = strict.iter().position(|a| *a == s(&out)).unwrap();
    strict[i] = s(&strict_out);
    strict.push("--strict");
    let o = htc(&strict);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("record `missing` (#1)") && err.contains("image file not found"), "{err}");

    std::fs::write(&data, "{not json").unwrap();
    let o = htc(&train_args(&model, &data, &images, &root.join("x"), "1"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a JSON list of LLaVA conversation records"));
    let o =
        htc(&[&train_args(&model, &data, &images, &root.join("y"), "1")[..], &["--train", "voco,brain"]]
            .concat());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown part `brain`"));

    // Wrong model, batch shape or run directory: clear errors, nothing written.
    let (good_data, _) = color_data(&root);
    let run = |model: &Path, out: &Path, extra: &[&str]| {
        let mut args = train_args(model, &good_data, &images, out, "1");
        for pair in extra.chunks(2) {
            match args.iter().position(|a| *a == pair[0]) {
                Some(i) if pair.len() == 2 => args[i + 1] = pair[1],
                _ => args.extend(pair),
            }
        }
        let o = htc(&args);
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let llava = common::fixtures().join("llava-hf-tiny");
    assert!(run(&llava, &root.join("a"), &[]).contains("is not an HTC checkpoint"));
    let e = run(&model, &root.join("b"), &["--global-batch", "5"]);
    assert!(e.contains("--global-batch (5) must be a positive multiple of --micro-batch (3)"), "{e}");
    assert!(run(&model, &root.join("c"), &["--resume"]).contains("has no checkpoint to resume from"));
    let e = run(&model, &root.join("d"), &["--lora-rank", "4", "--lora-targets", "q,x"]);
    assert!(e.contains("unknown LoRA target `x`"), "{e}");
    let e = run(&model, &root.join("e"), &["--adam-betas", "0.9"]);
    assert!(e.contains("--adam-betas must be two numbers"), "{e}");
    for (dir, extra, want) in [
        ("f", &["--train", "voco", "--lora-rank", "4"][..], "LoRA adapters train the LLM"),
        ("g", &["--save-every", "0"][..], "--save-every must be at least 1"),
        ("h", &["--schedule", "linear"][..], "--schedule `linear` is not supported"),
        ("i", &["--lr", "0"][..], "--lr must be a positive number"),
    ] {
        let e = run(&model, &root.join(dir), extra);
        assert!(e.contains(want), "{e}");
    }
    for d in ["a", "b", "c", "d", "e", "f", "g", "h", "i"] {
        assert!(!root.join(d).join("checkpoint-1").exists(), "a refused run writes no checkpoint");
    }
}

#[test]
fn lora_training_learns_resumes_and_merges_into_a_plain_checkpoint() {
    let root = tmp("train-lora", "");
    let model = model_dir(&root);
    let (data, images) = color_data(&root);
    let out = root.join("run");
    let mut args = train_args(&model, &data, &images, &out, "60");
    args.extend(["--lora-rank", "4", "--lora-alpha", "8", "--lora-targets", "q,v,o", "--save-every", "30"]);
    let o = htc(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ckpt = out.join("checkpoint-60");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ckpt.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["htc"]["lora"], json!({"rank": 4, "alpha": 8, "targets": ["q", "v", "o"]}));
    let unmerged = accuracy(&ckpt, &images);
    let merged = root.join("merged");
    let o = htc(&["merge-lora", "--model", s(&ckpt), "--out", s(&merged)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(merged.join("config.json")).unwrap()).unwrap();
    assert!(cfg["htc"].get("lora").is_none(), "a merged checkpoint is plain");
    let bytes = std::fs::read(merged.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(!st.names().iter().any(|n| n.contains("lora_")), "no adapters left after merging");
    for name in COLORS {
        let img = images.join(format!("{name}-4.png"));
        assert_eq!(answer(&merged, &img), answer(&ckpt, &img), "merged and unmerged answer alike");
    }
    eprintln!("LoRA (rank 4 on q, v, o): held-out accuracy {unmerged:.2}");
    assert_eq!(unmerged, 1.0, "LoRA training learns the task");
    let o = htc(&["merge-lora", "--model", s(&merged), "--out", s(&root.join("again"))]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no LoRA adapters"));

    // A LoRA run resumes from its checkpoint (adapters and their moments) like any other.
    let cut = root.join("cut");
    let mut first = train_args(&model, &data, &images, &cut, "60");
    first.extend(["--lora-rank", "4", "--lora-alpha", "8", "--lora-targets", "q,v,o", "--save-every", "30"]);
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_htc")).args(&first).env("HTC_LOG", "warn").spawn().unwrap();
    assert!(wait_for(&cut.join("checkpoint-30/trainer_state.json"), &mut child));
    child.kill().unwrap();
    child.wait().unwrap();
    first.push("--resume");
    let o = htc(&first);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = std::fs::read(ckpt.join("model.safetensors")).unwrap();
    let b = std::fs::read(cut.join("checkpoint-60/model.safetensors")).unwrap();
    assert!(a == b, "the resumed LoRA run ends with the same bytes");
}

#[test]
fn the_kl_term_on_voco_is_logged_moves_the_weights_and_is_refused_without_voco() {
    let root = common::tmp("train-cli", "kl");
    let (data, images) = color_data(&root);
    let model = model_dir(&root);
    let run = |name: &str, extra: &[&str]| {
        let out = root.join(name);
        let mut args = train_args(&model, &data, &images, &out, "6");
        args.extend_from_slice(extra);
        let o = htc(&args);
        (o, out)
    };
    let (o, plain) = run("plain", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (o, strong) = run("strong", &["--kl-weight", "50"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (p, k) = (metrics(&plain), metrics(&strong));
    assert!(p.iter().all(|l| l.get("kl").is_none()), "no KL logged without --kl-weight");
    let kl: Vec<f64> = k.iter().map(|l| l["kl"].as_f64().expect("a kl field on every step")).collect();
    // The first step's answer loss is measured before any update: the same with and without the
    // term; the term then moves the weights, and a heavy weight pulls ½ z² down.
    assert_eq!(p[0]["loss"], k[0]["loss"]);
    assert_ne!(p[5]["loss"], k[5]["loss"]);
    assert!(kl[0] > 0.0 && kl[5] < 0.5 * kl[0], "KL per step under β = 50: {kl:?}");

    let (o, _) = run("none", &["--kl-weight", "1", "--mode", "none"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("--kl-weight") && e.contains("<voco>"), "{e}");
    let (o, _) = run("negative", &["--kl-weight=-1"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("--kl-weight must be a number of at least 0"), "{e}");
}
