//! `htc analyze` on the tiny HTC model (`fixtures/htc-train-tiny`) and ShapesVQA scenes the
//! binary writes: each subcommand writes its JSON report with exactly the documented keys, the
//! attention masses are the sums of the compressed image's `<voco>` attention, the probes'
//! `z` is the `<voco>` row of the full forward, and bad input fails with one line naming it.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use common::{htc, s, tmp};
use htc_worker::backend::Backend;
use htc_worker::eval::analysis::{attention, image_batch, load_htc};
use serde_json::Value;

fn model() -> PathBuf {
    common::fixtures().join("htc-train-tiny")
}

/// Writes ShapesVQA split `split` (`n` scenes of `seed`) under `dir`.
fn shapes(dir: &Path, split: &str, n: usize, seed: u64) {
    let o = htc(&[
        "data",
        "shapes",
        "--out",
        s(dir),
        "--split",
        split,
        "--images",
        &n.to_string(),
        "--seed",
        &seed.to_string(),
        "--questions-per-image",
        "1",
    ]);
    assert!(o.status.success(), "htc data shapes: {}", String::from_utf8_lossy(&o.stderr));
}

/// The ShapesVQA data of this test process: train (60 scenes), test (30) and val (3).
fn data() -> PathBuf {
    static DATA: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DATA.get_or_init(|| {
        let dir = tmp("analyze", "shapes");
        shapes(&dir, "train", 60, 1);
        shapes(&dir, "test", 30, 2);
        shapes(&dir, "val", 3, 3);
        dir
    })
    .clone()
}

/// The tiny model with its mode set to `mode` in config.json (a copy under `name`).
fn in_mode(mode: &str, name: &str) -> PathBuf {
    let dir = tmp("analyze", name);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(model()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let cfg = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    v["htc"]["mode"] = Value::from(mode);
    std::fs::write(&cfg, serde_json::to_vec(&v).unwrap()).unwrap();
    dir
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap_or_else(|| panic!("not an object: {v}")).keys().cloned().collect()
}

fn set(k: &[&str]) -> BTreeSet<String> {
    k.iter().map(|s| s.to_string()).collect()
}

/// Runs `htc analyze <args>`; returns success, stdout and stderr.
fn analyze(args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["analyze"];
    all.extend_from_slice(args);
    let o = htc(&all);
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

fn read(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn probe(model: &Path, out: &Path, counts: [&str; 2]) -> (bool, String, String) {
    let d = data();
    analyze(&[
        "probe",
        "--model",
        s(model),
        "--train-scenes",
        s(&d.join("train.scenes.json")),
        "--train-images",
        s(&d),
        "--test-scenes",
        s(&d.join("test.scenes.json")),
        "--test-images",
        s(&d),
        "--train-count",
        counts[0],
        "--test-count",
        counts[1],
        "--out",
        s(out),
    ])
}

#[test]
fn probe_writes_every_task_for_every_representation() {
    let out = tmp("analyze", "probe/nested/probe.json");
    let (ok, stdout, e) = probe(&model(), &out, ["40", "20"]);
    assert!(ok, "{e}");
    assert!(stdout.contains("position"), "{stdout}");
    let v = read(&out);
    assert_eq!(keys(&v), set(&["train_scenes", "test_scenes", "tasks", "mean"]));
    assert_eq!((v["train_scenes"].as_u64(), v["test_scenes"].as_u64()), (Some(40), Some(20)));
    let tasks = v["tasks"].as_array().unwrap();
    let names: Vec<&str> = tasks.iter().map(|t| t["task"].as_str().unwrap()).collect();
    assert_eq!(names, ["shape", "color", "count", "pair", "texture", "size", "position"]);
    for t in tasks {
        assert_eq!(keys(t), set(&["task", "kind", "classes", "majority", "accuracy"]), "{t}");
        assert_eq!(keys(&t["accuracy"]), set(&["z", "v_d", "V"]));
        for r in ["z", "v_d", "V"] {
            let a = t["accuracy"][r].as_f64().unwrap_or_else(|| panic!("{r} of {t}"));
            assert!((0.0..=100.0).contains(&a), "{t}");
        }
        let m = t["majority"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&m), "{t}");
    }
    let classes: Vec<u64> = tasks.iter().map(|t| t["classes"].as_u64().unwrap()).collect();
    assert_eq!([classes[0], classes[1], classes[3], classes[4], classes[5], classes[6]], [4, 6, 2, 3, 2, 9]);
    assert!((1..=4).contains(&classes[2]), "count classes: {}", classes[2]);
    let kinds: Vec<&str> = tasks.iter().map(|t| t["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["S", "S", "S", "S", "D", "D", "D"]);
    assert_eq!(keys(&v["mean"]), set(&["S", "D"]));
    // The S mean is the mean of the four S tasks.
    let s_mean: f64 = tasks[..4].iter().map(|t| t["accuracy"]["z"].as_f64().unwrap()).sum::<f64>() / 4.0;
    assert!((v["mean"]["S"]["z"].as_f64().unwrap() - s_mean).abs() < 1e-9);
}

#[test]
fn a_model_without_voco_or_anchors_probes_v_alone_and_counts_past_the_file_use_what_is_there() {
    let none = in_mode("none", "none-probe");
    let out = tmp("analyze", "probe-none.json");
    let (ok, _, e) = probe(&none, &out, ["1000", "20"]);
    assert!(ok, "{e}");
    assert!(e.contains("holds 60 scenes; using those 60 (asked for 1000)"), "{e}");
    let v = read(&out);
    assert_eq!(v["train_scenes"].as_u64(), Some(60));
    for t in v["tasks"].as_array().unwrap() {
        assert!(t["accuracy"]["z"].is_null() && t["accuracy"]["v_d"].is_null(), "{t}");
        assert!(t["accuracy"]["V"].is_f64(), "{t}");
    }
    assert!(v["mean"]["D"]["z"].is_null() && v["mean"]["D"]["V"].is_f64());
}

#[test]
fn attention_reports_masses_per_layer_and_heatmaps() {
    let d = data();
    let out = tmp("analyze", "attention.json");
    let args = |count: &str, out: &Path| {
        [
            "attention".to_string(),
            "--model".into(),
            s(&model()).into(),
            "--scenes".into(),
            s(&d.join("test.scenes.json")).into(),
            "--images".into(),
            s(&d).into(),
            "--count".into(),
            count.into(),
            "--heatmaps".into(),
            "2".into(),
            "--out".into(),
            s(out).into(),
        ]
    };
    let a = args("5", &out);
    let (ok, stdout, e) = analyze(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{e}");
    assert!(stdout.contains("per anchor"), "{stdout}");
    let v = read(&out);
    assert_eq!(keys(&v), set(&["images", "n_discrete", "n_patches", "grid", "layers", "heatmaps"]));
    assert_eq!(v["images"].as_u64(), Some(5));
    assert_eq!((v["n_discrete"].as_u64(), v["n_patches"].as_u64()), (Some(4), Some(16)));
    assert_eq!(v["grid"], serde_json::json!([4, 4]));
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "the tiny LLM's layers");
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(keys(l), set(&["layer", "anchors", "patches", "anchor_token", "patch_token"]));
        assert_eq!(l["layer"].as_u64(), Some(i as u64));
        for k in ["anchors", "patches", "anchor_token", "patch_token"] {
            assert_eq!(keys(&l[k]), set(&["mean", "std"]), "{l}");
        }
        let (a, p) = (l["anchors"]["mean"].as_f64().unwrap(), l["patches"]["mean"].as_f64().unwrap());
        assert!(a > 0.0 && p > 0.0 && a + p <= 1.0 + 1e-5, "{l}");
        assert!((l["anchor_token"]["mean"].as_f64().unwrap() - a / 4.0).abs() < 1e-6);
        assert!((l["patch_token"]["mean"].as_f64().unwrap() - p / 16.0).abs() < 1e-6);
    }
    let maps = v["heatmaps"].as_array().unwrap();
    assert_eq!(maps.len(), 2);
    assert_eq!(keys(&maps[0]), set(&["image", "anchors", "patches"]));
    assert_eq!(maps[0]["image"].as_str(), Some("test/000000.png"));
    assert_eq!(
        (maps[1]["anchors"].as_array().unwrap().len(), maps[1]["patches"].as_array().unwrap().len()),
        (4, 16)
    );

    // More than the file holds: all of them, and a note.
    let out3 = tmp("analyze", "attention-val.json");
    let mut a = args("100", &out3);
    a[4] = s(&d.join("val.scenes.json")).into();
    let (ok, _, e) = analyze(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{e}");
    assert!(e.contains("holds 3 scenes; using those 3 (asked for 100)"), "{e}");
    assert_eq!(read(&out3)["images"].as_u64(), Some(3));
}

#[test]
fn attention_masses_are_the_sums_of_the_voco_attention() {
    let device = Default::default();
    let loaded = load_htc::<Backend>(&model(), &device).unwrap();
    let d = data();
    let names = ["test/000000.png", "test/000001.png", "test/000002.png"];
    let compressed: Vec<_> = names
        .iter()
        .map(|&n| (n, loaded.model.compress(&image_batch(&loaded, &d, &[n], &device).unwrap()).unwrap()))
        .collect();
    let mut per_layer: Vec<Vec<(f64, f64)>> = Vec::new();
    for (_, c) in &compressed {
        let m = attention::masses(c, htc_shared::config::Fusion::Before);
        assert_eq!(m.len(), c.voco_attention.len());
        for (l, &(a, p)) in m.iter().enumerate() {
            let row = &c.voco_attention[l][0];
            assert_eq!(row.len(), 4 + 16, "[v_d; V]");
            let direct_a: f32 = row[..4].iter().sum();
            let direct_p: f32 = row[4..].iter().sum();
            assert!((a - direct_a as f64).abs() < 1e-5 && (p - direct_p as f64).abs() < 1e-5);
            assert!(a + p <= 1.0 + 1e-5, "layer {l}: {a} + {p}");
        }
        per_layer.push(m);
    }
    let r = attention::report(&compressed, 1, htc_shared::config::Fusion::Before).unwrap();
    for (l, s) in r.layers.iter().enumerate() {
        let a: Vec<f64> = per_layer.iter().map(|m| m[l].0).collect();
        let mean = a.iter().sum::<f64>() / 3.0;
        let std = (a.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
        let got = s.anchors.unwrap();
        assert!((got.mean - mean).abs() < 1e-9 && (got.std - std).abs() < 1e-9, "layer {l}");
    }
    let row0: Vec<f32> =
        (0..20).map(|j| compressed[0].1.voco_attention.iter().map(|l| l[0][j]).sum::<f32>() / 2.0).collect();
    assert_eq!(r.heatmaps[0].anchors, row0[..4]);
    assert_eq!(r.heatmaps[0].patches, row0[4..]);
}

#[test]
fn the_probed_z_is_the_voco_row_of_the_full_forward() {
    let device = Default::default();
    let loaded = load_htc::<Backend>(&model(), &device).unwrap();
    let d = data();
    let img = image_batch(&loaded, &d, &["train/000000.png", "train/000001.png"], &device).unwrap();
    let m = &loaded.model;
    let layout = m.layout(0);
    let v = layout.voco_start();
    let hidden = m.prefix_hidden(m.prefix_embeds(&img).unwrap()).unwrap();
    let text = m.llava.llm.embed(&[5, 6, 7]).repeat_dim(0, 2);
    let full = m.full_hidden(&img, text).unwrap();
    let [b, _, w] = hidden.dims();
    let a: Tensor<Backend, 3> = hidden.slice([0..b, v..v + 1, 0..w]);
    let f: Tensor<Backend, 3> = full.slice([0..b, v..v + 1, 0..w]);
    let diff = (a - f).abs().max().into_scalar();
    assert!(diff < 1e-4, "<voco> rows differ by {diff}");
}

#[test]
fn cost_times_the_three_paths_in_every_mode() {
    let d = data();
    let image = d.join("test/000000.png");
    for (dir, mode, prefix, kept) in
        [(model(), "htc", 1 + 4 + 16 + 1, 2), (in_mode("none", "none-cost"), "none", 1 + 16, 1 + 16)]
    {
        let out = tmp("analyze", &format!("cost-{mode}.json"));
        let (ok, stdout, e) = analyze(&[
            "cost",
            "--model",
            s(&dir),
            "--image",
            s(&image),
            "--question",
            "What color is it?",
            "--repeats",
            "2",
            "--threads",
            "1",
            "--out",
            s(&out),
        ]);
        assert!(ok, "{e}");
        assert!(stdout.contains("followup"), "{stdout}");
        let v = read(&out);
        assert_eq!(
            keys(&v),
            set(&[
                "mode",
                "prefix_tokens",
                "question_tokens",
                "kept_positions",
                "full_ms",
                "compress_ms",
                "followup_ms",
                "repeats",
                "threads"
            ])
        );
        assert_eq!(v["mode"].as_str(), Some(mode));
        assert_eq!(v["prefix_tokens"].as_u64(), Some(prefix as u64));
        assert_eq!(v["kept_positions"].as_u64(), Some(kept as u64));
        assert!(v["question_tokens"].as_u64().unwrap() > 0);
        assert_eq!((v["repeats"].as_u64(), v["threads"].as_u64()), (Some(2), Some(1)));
        for k in ["full_ms", "compress_ms", "followup_ms"] {
            assert_eq!(keys(&v[k]), set(&["median", "min"]));
            let (med, min) = (v[k]["median"].as_f64().unwrap(), v[k]["min"].as_f64().unwrap());
            assert!(min > 0.0 && min <= med, "{k}: {}", v[k]);
        }
    }
}

#[test]
fn bad_input_is_named_in_one_line() {
    let d = data();
    let out = tmp("analyze", "bad.json");
    let one_line = |e: &str| e.lines().filter(|l| l.starts_with("error:")).count() == 1;
    // A missing scenes file.
    let missing = d.join("nope.scenes.json");
    let (ok, _, e) = analyze(&[
        "attention",
        "--model",
        s(&model()),
        "--scenes",
        s(&missing),
        "--images",
        s(&d),
        "--out",
        s(&out),
    ]);
    assert!(!ok && one_line(&e) && e.contains("cannot read") && e.contains("nope.scenes.json"), "{e}");
    // A model without <voco>.
    let none = in_mode("none", "none-attention");
    let scenes = d.join("test.scenes.json");
    let (ok, _, e) = analyze(&[
        "attention",
        "--model",
        s(&none),
        "--scenes",
        s(&scenes),
        "--images",
        s(&d),
        "--out",
        s(&out),
    ]);
    assert!(!ok && one_line(&e) && e.contains("a model of mode none, which has no <voco> token"), "{e}");
    // A scenes file with no scenes.
    let empty = tmp("analyze", "empty.scenes.json");
    std::fs::write(&empty, "[]").unwrap();
    let (ok, _, e) = analyze(&[
        "attention",
        "--model",
        s(&model()),
        "--scenes",
        s(&empty),
        "--images",
        s(&d),
        "--out",
        s(&out),
    ]);
    assert!(!ok && one_line(&e) && e.contains("empty.scenes.json holds no scenes"), "{e}");
    // A scene whose image is not there.
    let (ok, _, e) = analyze(&[
        "attention",
        "--model",
        s(&model()),
        "--scenes",
        s(&scenes),
        "--images",
        s(&d.join("elsewhere")),
        "--out",
        s(&out),
    ]);
    assert!(!ok && one_line(&e) && e.contains("elsewhere/test/000000.png"), "{e}");
    // A missing image for cost.
    let (ok, _, e) = analyze(&[
        "cost",
        "--model",
        s(&model()),
        "--image",
        s(&d.join("no.png")),
        "--question",
        "What?",
        "--out",
        s(&out),
    ]);
    assert!(!ok && one_line(&e) && e.contains("no.png does not exist"), "{e}");
    // A count of 0.
    let (ok, _, e) = probe(&model(), &out, ["0", "5"]);
    assert!(!ok && one_line(&e) && e.contains("must be at least 1"), "{e}");
    assert!(!out.exists(), "no report is written on failure");
}
