//! The demo model's recipe, step by step at smoke size: `htc train-tokenizer` trains the MGVQ
//! tokenizer as a VQ-VAE for 20 steps and writes what it promises, `htc tokenize` reads its
//! codes and reconstruction, `htc init --config` builds an HTC model from scratch around it,
//! `htc pretrain-vision` trains its vision tower on scene labels (and nothing else), and
//! `htc train` trains that model 20 steps into a checkpoint `htc ask` answers with, and the
//! recipe script itself (`scripts/train-demo.sh`) runs end to end at toy sizes. Bad inputs to
//! each are refused with an error naming the problem.

mod common;

use std::path::{Path, PathBuf};

use common::{htc, s, tmp};
use htc_worker::models::mgvq_decoder;
use serde_json::{json, Value};

#[test]
fn pixel_shuffle_inverts_pixel_unshuffle() {
    use burn::tensor::{Tensor, TensorData};
    use htc_worker::backend::Backend as B;
    let dev = Default::default();
    let data: Vec<f32> = (0..2 * 3 * 4 * 6).map(|i| i as f32).collect();
    let x = Tensor::<B, 4>::from_data(TensorData::new(data.clone(), [2, 3, 4, 6]), &dev);
    let y = mgvq_decoder::pixel_shuffle(htc_shared::mgvq::pixel_unshuffle(x));
    assert_eq!(y.dims(), [2, 3, 4, 6]);
    assert_eq!(y.into_data().to_vec::<f32>().unwrap(), data);
}

#[test]
fn the_decoder_mirrors_the_encoder_and_upsamples_by_its_factor() {
    use burn::tensor::Tensor;
    use htc_shared::config::MgvqConfig;
    use htc_shared::loader::Loader;
    use htc_worker::backend::Backend as B;
    let mut m = MgvqConfig::f16c32_g8();
    m.image_size = 96;
    assert_eq!(mgvq_decoder::Config::mirror(&m).width_list, vec![1024, 512, 512, 256, 128]);
    let e = mgvq_decoder::Config::with_widths(&m, &[8, 8]).unwrap_err().to_string();
    assert!(e.contains("needs 5 widths"), "{e}");
    let small = mgvq_decoder::Config { width_list: vec![8, 4, 4], latent_channels: 4, norm_eps: 1e-5 };
    let d = mgvq_decoder::Decoder::<B>::load(&Loader::init(&Default::default()), &small).unwrap();
    let out = d.forward(Tensor::zeros([2, 4, 3, 3], &Default::default()));
    assert_eq!(out.dims(), [2, 3, 12, 12]);
}

#[test]
fn perplexity_counts_the_codes_in_use() {
    use htc_worker::train::tokenizer::perplexity;
    assert!((perplexity(&[5, 5, 5, 5]) - 4.0).abs() < 1e-9);
    assert!((perplexity(&[9, 0, 0]) - 1.0).abs() < 1e-9);
    assert_eq!(perplexity(&[0, 0]), 0.0);
}

fn ok(o: &std::process::Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn err(o: &std::process::Output) -> String {
    assert!(!o.status.success(), "expected a failure; stdout: {}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A tiny MGVQ at 32 px (2×2 latents, 2 groups of 16 codes).
fn tiny_mgvq() -> Value {
    json!({
        "width_list": [8, 8, 16, 16, 16], "depth_list": [0, 1, 1, 1, 1],
        "block_type": ["ResBlock", "ResBlock", "ResBlock", "EViT_GLU", "EViT_GLU"],
        "latent_channels": 8, "groups": 2, "codebook_size": 32, "image_size": 32,
        "attention_dim": 8, "expand_ratio": 2, "norm_eps": 1e-5
    })
}

/// A tiny HTC model config (CLIP 32 px, LLM 32 wide) around `mgvq`.
fn tiny_model(mgvq: &Value, vocab: usize) -> Value {
    json!({
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "image_token_index": 0, "vision_feature_layer": -1,
        "text_config": {"model_type": "llama", "vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_channels": 3, "image_size": 32,
            "patch_size": 16, "layer_norm_eps": 1e-5},
        "htc": {"mode": "htc", "n_discrete": 4, "n_voco": 1, "topology": "star",
            "continuous_projector": "mlp2x_gelu", "discrete_hidden": 32, "mgvq": mgvq,
            "chat_format": "user_assistant"}
    })
}

struct Smoke {
    root: PathBuf,
    data: PathBuf,
    mgvq_cfg: PathBuf,
    tok: PathBuf,
}

/// Data, word-level tokenizer and a 20-step MGVQ tokenizer, made once per test.
fn smoke(group: &str) -> Smoke {
    let root = tmp(group, "");
    let data = root.join("data");
    ok(
        &htc(&[
            "data",
            "shapes",
            "--out",
            s(&data),
            "--images",
            "12",
            "--seed",
            "3",
            "--grouped",
            "--questions-per-image",
            "4",
        ]),
        "data shapes",
    );
    ok(&htc(&["data", "shapes", "--out", s(&data), "--images", "4", "--split", "val", "--seed", "3"]), "val");
    let tok = root.join("tokenizer.json");
    ok(&htc(&["data", "vocab", "--data", s(&data.join("train.json")), "--out", s(&tok)]), "vocab");
    let mgvq_cfg = root.join("mgvq.json");
    std::fs::write(&mgvq_cfg, tiny_mgvq().to_string()).unwrap();
    Smoke { root, data, mgvq_cfg, tok }
}

/// The tiny HTC model built from scratch by `htc init --config` (random MGVQ inside).
fn scratch_model(sm: &Smoke) -> PathBuf {
    let cfg = sm.root.join("model.json");
    std::fs::write(&cfg, tiny_model(&tiny_mgvq(), 128).to_string()).unwrap();
    let init = sm.root.join("init");
    ok(&htc(&["init", "--config", s(&cfg), "--tokenizer", s(&sm.tok), "--out", s(&init)]), "init");
    init
}

fn train_tokenizer(sm: &Smoke, out: &Path) -> String {
    ok(
        &htc(&[
            "train-tokenizer",
            "--images",
            s(&sm.data.join("train")),
            "--val-images",
            s(&sm.data.join("val")),
            "--config",
            s(&sm.mgvq_cfg),
            "--decoder-widths",
            "16,16,8,8,8",
            "--out",
            s(out),
            "--steps",
            "20",
            "--batch",
            "4",
            "--lr",
            "3e-3",
            "--warmup-steps",
            "2",
            "--restart-every",
            "10",
            "--foreground-weight",
            "5",
            "--quiet",
        ]),
        "train-tokenizer",
    )
}

#[test]
fn tokenizer_trains_as_a_vq_vae_and_tokenizes() {
    let sm = smoke("demo-tok");
    let out = sm.root.join("mgvq");
    let summary = train_tokenizer(&sm, &out);
    assert!(summary.contains("held-out reconstruction MSE"), "{summary}");
    let m = lines(&out.join("metrics.jsonl"));
    assert_eq!(m.len(), 20, "one metrics line per step");
    for key in ["recon_mse", "codebook", "commit", "lr", "grad_norm"] {
        assert!(m[0][key].is_f64(), "metrics have `{key}`: {}", m[0]);
    }
    // Code use is reported at the end of each window of --restart-every steps.
    for l in [&m[9], &m[19]] {
        let ppl = l["perplexity"].as_f64().unwrap();
        assert!((1.0..=16.0).contains(&ppl), "perplexity within [1, codes per group]: {ppl}");
        assert!(l["dead_codes"].as_u64().unwrap() <= 32);
    }
    let mean = |r: &[Value]| r.iter().map(|l| l["recon_mse"].as_f64().unwrap()).sum::<f64>() / r.len() as f64;
    assert!(
        mean(&m[15..]) < mean(&m[..5]),
        "reconstruction improves: {} -> {}",
        mean(&m[..5]),
        mean(&m[15..])
    );
    let cfg: Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "mgvq");
    assert_eq!(cfg["mgvq"], tiny_mgvq());
    assert_eq!(cfg["decoder"]["width_list"], json!([16, 16, 8, 8, 8]));
    // Held-out originals above their reconstructions: 4 images of 32 px with 4 px margins.
    let grid = image::open(out.join("recon.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (4 * 36 + 4, 2 * 36 + 4));
    assert!(image::open(out.join("loss.png")).is_ok());

    let img = sm.data.join("val/000000.png");
    let recon = sm.root.join("recon-one.png");
    let o = htc(&["tokenize", "--model", s(&out), "--image", s(&img), "--json", "--recon", s(&recon)]);
    let v: Value = serde_json::from_str(&ok(&o, "tokenize")).unwrap();
    assert_eq!((v["side"].as_u64(), v["groups"].as_u64()), (Some(2), Some(2)));
    let codes = v["codes"].as_array().unwrap();
    assert_eq!(codes.len(), 4, "2x2 positions");
    assert!(codes.iter().all(|p| p.as_array().unwrap().iter().all(|c| c.as_u64().unwrap() < 16)));
    let r = image::open(&recon).unwrap();
    assert_eq!((r.width(), r.height()), (32, 32));
    let grid_text = ok(&htc(&["tokenize", "--model", s(&out), "--image", s(&img)]), "tokenize grid");
    assert_eq!(grid_text.lines().count(), 3, "a header and one line per latent row: {grid_text}");
}

#[test]
fn a_model_built_from_scratch_trains_and_answers() {
    let sm = smoke("demo-model");
    let mgvq = sm.root.join("mgvq");
    train_tokenizer(&sm, &mgvq);
    let cfg = sm.root.join("model.json");
    std::fs::write(&cfg, tiny_model(&tiny_mgvq(), 128).to_string()).unwrap();
    let init = sm.root.join("init");
    ok(
        &htc(&[
            "init",
            "--config",
            s(&cfg),
            "--tokenizer",
            s(&sm.tok),
            "--mgvq",
            s(&mgvq.join("model.safetensors")),
            "--out",
            s(&init),
        ]),
        "init --config",
    );
    for f in ["config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"] {
        assert!(init.join(f).is_file(), "init wrote {f}");
    }
    // The trained tokenizer is inside the model: both give the same codes.
    let img = sm.data.join("val/000001.png");
    let codes =
        |dir: &Path| ok(&htc(&["tokenize", "--model", s(dir), "--image", s(&img), "--json"]), "tokenize");
    assert_eq!(codes(&init), codes(&mgvq));
    // HTC models carry the encoder only.
    let e = err(&htc(&[
        "tokenize",
        "--model",
        s(&init),
        "--image",
        s(&img),
        "--recon",
        s(&sm.root.join("x.png")),
    ]));
    assert!(e.contains("has no MGVQ decoder"), "{e}");

    let run = sm.root.join("run");
    let o = htc(&[
        "train",
        "--model",
        s(&init),
        "--data",
        s(&sm.data.join("train.json")),
        "--images",
        s(&sm.data),
        "--out",
        s(&run),
        "--train",
        "voco,projector,discrete,llm,vision",
        "--max-steps",
        "20",
        "--global-batch",
        "4",
        "--micro-batch",
        "4",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "2",
        "--quiet",
    ]);
    ok(&o, "train");
    let m = lines(&run.join("metrics.jsonl"));
    assert_eq!(m.len(), 20);
    assert!(m.iter().all(|l| l["loss"].as_f64().unwrap().is_finite()));
    assert!(
        m[19]["loss"].as_f64().unwrap() < m[0]["loss"].as_f64().unwrap(),
        "the loss falls from the uniform guess: {} -> {}",
        m[0]["loss"],
        m[19]["loss"]
    );
    let ckpt = run.join("checkpoint-20");
    let saved: Value = serde_json::from_slice(&std::fs::read(ckpt.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["htc"]["chat_format"], "user_assistant", "the chat format travels with the model");
    ok(
        &htc(&[
            "ask",
            "--model",
            s(&ckpt),
            "--image",
            s(&img),
            "--prompt",
            "What color is the star?",
            "--max-new-tokens",
            "3",
        ]),
        "ask",
    );
}

#[test]
fn bad_recipe_inputs_are_refused_with_clear_errors() {
    let sm = smoke("demo-bad");
    let empty = sm.root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = sm.root.join("never");
    let base = |images: &Path, widths: &str| {
        htc(&[
            "train-tokenizer",
            "--images",
            s(images),
            "--config",
            s(&sm.mgvq_cfg),
            "--out",
            s(&out),
            "--steps",
            "1",
            "--decoder-widths",
            widths,
            "--quiet",
        ])
    };
    let e = err(&base(&empty, "16,16,8,8,8"));
    assert!(e.contains("no images"), "{e}");
    let e = err(&base(&sm.data.join("train"), "16,8"));
    assert!(e.contains("the decoder needs 5 widths"), "{e}");
    let e = err(&htc(&[
        "train-tokenizer",
        "--images",
        s(&sm.data.join("train")),
        "--config",
        s(&sm.mgvq_cfg),
        "--out",
        s(&out),
        "--foreground-weight",
        "0",
    ]));
    assert!(e.contains("--foreground-weight must be a positive number"), "{e}");
    let bad_cfg = sm.root.join("bad-mgvq.json");
    std::fs::write(&bad_cfg, json!({"width_list": [8]}).to_string()).unwrap();
    let e = err(&htc(&[
        "train-tokenizer",
        "--images",
        s(&sm.data.join("train")),
        "--config",
        s(&bad_cfg),
        "--out",
        s(&out),
    ]));
    assert!(e.contains("invalid MGVQ config"), "{e}");

    let init = |cfg: &Value, mgvq: Option<&Path>| {
        let p = sm.root.join("cfg.json");
        std::fs::write(&p, cfg.to_string()).unwrap();
        let mut args = vec!["init", "--config", s(&p), "--tokenizer", s(&sm.tok), "--out", s(&out)];
        if let Some(m) = mgvq {
            args.extend(["--mgvq", s(m)]);
        }
        htc(&args)
    };
    let mut no_htc = tiny_model(&tiny_mgvq(), 128);
    no_htc.as_object_mut().unwrap().remove("htc");
    assert!(err(&init(&no_htc, None)).contains("has no `htc` section"));
    let e = err(&init(&tiny_model(&tiny_mgvq(), 16), None));
    assert!(e.contains("but text_config.vocab_size is 16"), "{e}");
    // A tokenizer trained for another MGVQ shape.
    let mgvq = sm.root.join("mgvq");
    train_tokenizer(&sm, &mgvq);
    let mut other = tiny_mgvq();
    other["codebook_size"] = json!(64);
    let e = err(&init(&tiny_model(&other, 128), Some(&mgvq.join("model.safetensors"))));
    assert!(e.contains("do not match the config's `htc.mgvq`"), "{e}");
    assert!(!out.exists(), "nothing is written when the inputs are refused");
    let e = err(&htc(&["tokenize", "--model", s(&sm.root), "--image", s(&sm.data.join("val/000000.png"))]));
    assert!(e.contains("cannot read") && e.contains("config.json"), "{e}");
}

#[test]
fn cells_under_patches_and_foreground_weights() {
    use htc_worker::train::tokenizer::pixel_weights;
    use htc_worker::train::vision::cell_of_patch;
    assert_eq!((0..9).map(|p| cell_of_patch(p, 3)).collect::<Vec<_>>(), (0..9).collect::<Vec<_>>());
    // 6×6 patches: each cell holds a 2×2 block of them.
    assert_eq!([0, 1, 2, 3, 6, 7, 35].map(|p| cell_of_patch(p, 6)), [0, 0, 1, 1, 0, 0, 8]);
    assert_eq!([0, 1, 2, 3].map(|p| cell_of_patch(p, 2)), [0, 2, 6, 8]);
    // A plain 4×4 background with one red pixel: only that pixel is weighted.
    let mut px = vec![0.9f32; 3 * 16];
    px[5] = -0.5; // red channel of pixel 5
    let w = pixel_weights(&px, 4, 10.0);
    assert_eq!(w.iter().filter(|&&x| x == 10.0).count(), 1);
    assert_eq!(w[5], 10.0);
    // Corners that disagree: no background to tell apart, every weight is 1.
    px[0] = -1.0;
    assert!(pixel_weights(&px, 4, 10.0).iter().all(|&x| x == 1.0));
}

#[test]
fn vision_pretraining_teaches_the_tower_and_touches_nothing_else() {
    let sm = smoke("demo-vision");
    let init = scratch_model(&sm);
    let out = sm.root.join("pretrained");
    let o = htc(&[
        "pretrain-vision",
        "--model",
        s(&init),
        "--scenes",
        s(&sm.data.join("train.scenes.json")),
        "--images",
        s(&sm.data),
        "--val-scenes",
        s(&sm.data.join("val.scenes.json")),
        "--out",
        s(&out),
        "--steps",
        "20",
        "--batch",
        "4",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "2",
        "--pooled-weight",
        "1",
        "--quiet",
    ]);
    let summary = ok(&o, "pretrain-vision");
    for head in ["shape", "color", "size", "texture"] {
        assert!(summary.contains(&format!("{head} ")), "{summary}");
    }
    let m = lines(&out.join("vision_metrics.jsonl"));
    assert_eq!(m.len(), 20);
    assert!(m[19]["loss"].as_f64().unwrap() < m[0]["loss"].as_f64().unwrap(), "the cell loss falls");
    for head in ["shape", "color", "size", "texture"] {
        for key in [format!("acc_{head}"), format!("pooled_acc_{head}")] {
            assert!((0.0..=1.0).contains(&m[19][&key].as_f64().unwrap()), "{key}");
        }
    }
    assert!(summary.contains("from the mean patch feature: shape "), "{summary}");
    // Only the vision tower changed.
    let read = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    let (a, b) = (read(&init), read(&out));
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    let mut changed = Vec::new();
    for (name, t) in a.tensors() {
        if b.tensor(&name).unwrap().data() != t.data() {
            changed.push(name);
        }
    }
    assert!(!changed.is_empty());
    assert!(changed.iter().all(|n| n.starts_with("vision_tower.")), "{changed:?}");
    assert!(!b.names().iter().any(|n| n.contains("_heads")), "the heads are not saved");
    let img = sm.data.join("val/000000.png");
    ok(
        &htc(&[
            "ask",
            "--model",
            s(&out),
            "--image",
            s(&img),
            "--prompt",
            "What color is the star?",
            "--max-new-tokens",
            "2",
        ]),
        "ask",
    );

    // Refusals, naming the problem.
    let run_with = |scenes: &Path, out: &Path, extra: &[&str]| {
        let mut a = vec![
            "pretrain-vision",
            "--model",
            s(&init),
            "--scenes",
            s(scenes),
            "--images",
            s(&sm.data),
            "--out",
            s(out),
            "--steps",
            "1",
            "--quiet",
        ];
        a.extend_from_slice(extra);
        htc(&a)
    };
    let run = |scenes: &Path, out: &Path| run_with(scenes, out, &[]);
    let e = err(&run(&sm.root.join("nope.json"), &sm.root.join("x")));
    assert!(e.contains("cannot read") && e.contains("nope.json"), "{e}");
    let bad = sm.root.join("bad-scenes.json");
    std::fs::write(&bad, r#"[{"image": "train/000000.png", "objects": [{"cell": 12}]}]"#).unwrap();
    let e = err(&run(&bad, &sm.root.join("x")));
    assert!(e.contains("bad `cell`"), "{e}");
    std::fs::write(&bad, "{}").unwrap();
    assert!(err(&run(&bad, &sm.root.join("x"))).contains("not a JSON list of scenes"));
    let e = err(&run(&sm.data.join("train.scenes.json"), &init));
    assert!(e.contains("--out must differ from --model"), "{e}");
    let neg = run_with(&sm.data.join("train.scenes.json"), &sm.root.join("y"), &["--pooled-weight=-1"]);
    assert!(err(&neg).contains("--pooled-weight must be a number ≥ 0"));
}

#[test]
fn training_stages_switch_modes_and_eval_answers_in_another_mode() {
    let sm = smoke("demo-modes");
    let init = scratch_model(&sm);
    let train = |from: &Path, out: &Path, mode: &str| {
        let (data, out_s) = (sm.data.join("train.json"), out.to_path_buf());
        let mut a = common::train_args(from, &data, &sm.data, &out_s, "3");
        a.extend(["--mode", mode, "--train", "voco,projector,discrete,llm"]);
        htc(&a)
    };
    let mode_of = |ckpt: &Path| -> String {
        let c: Value =
            serde_json::from_str(&std::fs::read_to_string(ckpt.join("config.json")).unwrap()).unwrap();
        c["htc"]["mode"].as_str().unwrap().to_string()
    };
    let names = |ckpt: &Path| -> Vec<String> {
        let b = std::fs::read(ckpt.join("model.safetensors")).unwrap();
        safetensors::SafeTensors::deserialize(&b).unwrap().names().into_iter().map(String::from).collect()
    };

    // Stage 1 in mode `none`: recorded in the checkpoint, which keeps the anchors' weights.
    ok(&train(&init, &sm.root.join("none"), "none"), "train --mode none");
    let none = sm.root.join("none/checkpoint-3");
    assert_eq!(mode_of(&none), "none");
    let n = names(&none);
    assert!(n.iter().any(|k| k == "htc.discrete_projector.linear_1.weight"), "anchor MLP kept");
    assert!(n.iter().any(|k| k.starts_with("mgvq.")), "MGVQ kept");
    // Stage 2 in mode `htc` from it.
    ok(&train(&none, &sm.root.join("htc"), "htc"), "train --mode htc");
    let hybrid = sm.root.join("htc/checkpoint-3");
    assert_eq!(mode_of(&hybrid), "htc");

    let eval = |model: &Path, mode: &str| {
        htc(&[
            "eval",
            "--model",
            s(model),
            "--data",
            s(&sm.data.join("val.json")),
            "--images",
            s(&sm.data),
            "--out",
            s(&sm.root.join(format!("preds-{mode}.jsonl"))),
            "--mode",
            mode,
            "--quiet",
        ])
    };
    let n_val =
        serde_json::from_str::<Vec<Value>>(&std::fs::read_to_string(sm.data.join("val.json")).unwrap())
            .unwrap()
            .len();
    for mode in ["htc", "voco", "discrete", "none"] {
        let out = ok(&eval(&hybrid, mode), mode);
        assert!(out.contains("overall"), "{mode}: {out}");
        assert_eq!(lines(&sm.root.join(format!("preds-{mode}.jsonl"))).len(), n_val, "{mode}");
    }
    // Refusals, naming the problem.
    let e = err(&eval(&none, "htc"));
    assert!(e.contains("no trained <voco>"), "{e}");
    let e = err(&eval(&hybrid, "sideways"));
    assert!(e.contains("invalid value 'sideways' for '--mode"), "{e}");
    let e = err(&train(&init, &sm.root.join("bad"), "sideways"));
    assert!(e.contains("invalid value 'sideways' for '--mode"), "{e}");
}

#[test]
fn the_scene_probe_teaches_voco_and_leaves_no_trace_in_the_checkpoint() {
    let sm = smoke("demo-probe");
    let init = scratch_model(&sm);
    let data = sm.data.join("train.json");
    let scenes = sm.data.join("train.scenes.json");
    let train = |out: &str, extra: &[&str]| {
        let out = sm.root.join(out);
        let mut a = common::train_args(&init, &data, &sm.data, &out, "3");
        a.extend_from_slice(extra);
        htc(&a)
    };
    let weights = |run: &str| -> Vec<(String, Vec<u8>)> {
        let b = std::fs::read(sm.root.join(run).join("checkpoint-3/model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&b).unwrap();
        let mut v: Vec<(String, Vec<u8>)> =
            st.tensors().into_iter().map(|(k, t)| (k.to_string(), t.data().to_vec())).collect();
        v.sort();
        v
    };
    ok(&train("plain", &[]), "train");
    ok(&train("probed", &["--scene-loss", "0.5", "--scenes", s(&scenes)]), "train --scene-loss");
    let (plain, probed) =
        (lines(&sm.root.join("plain/metrics.jsonl")), lines(&sm.root.join("probed/metrics.jsonl")));
    // The probe adds a loss; it does not change the forward pass, so the first step's answer
    // loss is the same, and it reports its own loss and accuracy.
    assert_eq!(plain[0]["loss"], probed[0]["loss"]);
    assert!(plain[0].get("scene_loss").is_none());
    for m in &probed {
        let (l, acc) = (m["scene_loss"].as_f64().unwrap(), m["scene_accuracy"].as_f64().unwrap());
        assert!(l.is_finite() && l > 0.0, "{m}");
        assert!((0.0..=1.0).contains(&acc), "{m}");
    }
    // Its gradient reaches the model (the <voco> token above all); its heads are not saved.
    let (a, b) = (weights("plain"), weights("probed"));
    assert_eq!(a.iter().map(|x| &x.0).collect::<Vec<_>>(), b.iter().map(|x| &x.0).collect::<Vec<_>>());
    let voco = |w: &[(String, Vec<u8>)]| w.iter().find(|(k, _)| k.contains("voco")).unwrap().1.clone();
    assert_ne!(voco(&a), voco(&b), "the probe's loss moved <voco>");

    // --probe-only: the compression learns from the probe alone; no answer is scored, so the
    // LM head, which only the answers reach, keeps its weights, while <voco> moves.
    ok(&train("probe-only", &["--scene-loss", "1", "--scenes", s(&scenes), "--probe-only"]), "--probe-only");
    let only = lines(&sm.root.join("probe-only/metrics.jsonl"));
    assert_eq!(only.len(), 3);
    for m in &only {
        assert_eq!(m["loss"].as_f64(), Some(0.0), "no answer loss: {m}");
        assert!(m["scene_loss"].as_f64().unwrap() > 0.0, "{m}");
    }
    let init_w = {
        let b = std::fs::read(init.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&b).unwrap();
        st.tensor("language_model.lm_head.weight").map(|t| t.data().to_vec()).unwrap()
    };
    let c = weights("probe-only");
    let head = |w: &[(String, Vec<u8>)]| {
        w.iter().find(|(k, _)| k == "language_model.lm_head.weight").unwrap().1.clone()
    };
    assert_eq!(head(&c), init_w, "the LM head does not move without answers");
    assert_ne!(head(&a), init_w, "(it does when answers are scored)");
    assert_ne!(voco(&c), voco(&a));
    let e = err(&train("bad0", &["--probe-only"]));
    assert!(e.contains("--scene-loss"), "{e}");

    // Refusals, naming the problem.
    let e = err(&train("bad1", &["--scene-loss", "0.5"]));
    assert!(e.contains("--scenes"), "{e}");
    let e = err(&train("bad2", &["--scene-loss=-1", "--scenes", s(&scenes)]));
    assert!(e.contains("--scene-loss must be a positive number"), "{e}");
    let e = err(&train("bad3", &["--scene-loss", "0.5", "--scenes", s(&sm.data.join("val.scenes.json"))]));
    assert!(e.contains("has no scene for"), "{e}");
    let e = err(&train("bad4", &["--scene-loss", "0.5", "--scenes", s(&sm.root.join("missing.json"))]));
    assert!(e.contains("missing.json"), "{e}");
    let e = err(&train("bad5", &["--scene-loss", "0.5", "--scenes", s(&scenes), "--mode", "none"]));
    assert!(e.contains("<voco>"), "{e}");
    let e = err(&train("bad6", &["--scene-loss", "0.5", "--scenes", s(&scenes), "--scene-layer", "2"]));
    assert!(e.contains("--scene-layer 2: the LLM has 2 layers (0 to 1)"), "{e}");
    let e = err(&train("probed", &["--scene-loss", "0.5", "--scenes", s(&scenes), "--resume"]));
    assert!(e.contains("--resume cannot continue a run with --scene-loss"), "{e}");
}

#[test]
fn the_recipe_script_runs_end_to_end_at_toy_sizes_and_skips_what_is_done() {
    let root = tmp("demo-recipe", "");
    let (work, out) = (root.join("work"), root.join("out"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/train-demo.sh");
    let run = || {
        std::process::Command::new("bash")
            .arg(&script)
            .arg(&work)
            .env("HTC_BIN", env!("CARGO_BIN_EXE_htc"))
            .env("HTC_DEMO_OUT", &out)
            .env("HTC_LOG", "warn")
            .envs([("IMAGES", "12"), ("VAL_IMAGES", "8"), ("TEST_IMAGES", "6"), ("TOK_STEPS", "2")])
            .envs([("VISION_STEPS", "2"), ("LLAVA_STEPS", "2"), ("PROBE_STEPS", "2"), ("STEPS", "2")])
            .envs([("QA_STEPS", "2")])
            .output()
            .unwrap()
    };
    let o = run();
    let log = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "the recipe failed: {log}");
    assert!(log.contains("done in"), "{log}");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
        "loss.png",
        "llava_metrics.jsonl",
        "qa_metrics.jsonl",
        "vision_metrics.jsonl",
        "tokenizer/model.safetensors",
        "tokenizer/recon.png",
    ] {
        assert!(out.join(f).is_file(), "the recipe wrote no {f}");
    }
    let eval = std::fs::read_to_string(out.join("eval.txt")).unwrap();
    assert!(eval.lines().any(|l| l.starts_with("overall") && l.ends_with("/6)")), "6 test questions: {eval}");
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["htc"]["mode"], "htc");
    assert_eq!(cfg["htc"]["n_voco"], 1);
    assert_eq!(cfg["htc"]["n_discrete"], 4);
    let m = lines(&out.join("metrics.jsonl"));
    assert_eq!(m.len(), 2);
    assert!(m.iter().all(|l| l["scene_loss"].as_f64().is_some()), "the HTC stage trains with the probe");
    let q = std::fs::read_to_string(work.join("qa/checkpoint-2/trainer_state.json")).unwrap();
    assert!(q.contains("\"train_on_inputs\": true"), "stage 1b scores the questions too: {q}");
    let c = lines(&out.join("compress_metrics.jsonl"));
    assert_eq!(c.len(), 2);
    assert!(c.iter().all(|l| l["loss"].as_f64() == Some(0.0)), "the compression stage scores no answer");
    // The model it wrote answers.
    let img = work.join("data/test/000000.png");
    let a = ok(
        &htc(&["ask", "--model", s(&out), "--image", s(&img), "--prompt", "What color is the star?"]),
        "ask",
    );
    assert!(!a.trim().is_empty());
    // A second run finds every stage done and only evaluates and copies again.
    let o = run();
    let log = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "the rerun failed: {log}");
    assert_eq!(log.matches("(already done:").count(), 8, "{log}");
}
