//! `htc init` builds untrained HTC checkpoints from both LLaVA layouts; `htc ask` runs every
//! mode on them and writes the `<voco>` attention maps.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{fixtures, htc, s};
use htc_worker::formats::WeightSource;

fn tmp(name: &str) -> PathBuf {
    common::tmp("init", name)
}

fn init(llava: &str, mode: &str, out: &Path, extra: &[&str]) -> Output {
    let mgvq = fixtures().join("mgvq-tiny/model.safetensors");
    let mcfg = fixtures().join("mgvq-tiny/config.json");
    let llava = fixtures().join(llava);
    let mut args: Vec<String> = [
        "init",
        "--llava",
        s(&llava),
        "--mgvq",
        s(&mgvq),
        "--mgvq-config",
        s(&mcfg),
        "--out",
        s(out),
        "--mode",
        mode,
        "--discrete-hidden",
        "32",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    if !extra.contains(&"--dtype") {
        args.extend(["--dtype".to_string(), "f32".to_string()]);
    }
    args.extend(extra.iter().map(|x| x.to_string()));
    htc(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn every_mode_initialises_and_answers_with_attention_maps() {
    let img = fixtures().join("images/gradient-45x30.png");
    for mode in ["htc", "voco", "discrete", "none", "avgpool"] {
        let out = tmp(&format!("ckpt-{mode}"));
        let r = init("llava-hf-tiny", mode, &out, &[]);
        assert!(r.status.success(), "init {mode}: {}", String::from_utf8_lossy(&r.stderr));
        let att = tmp(&format!("att-{mode}.json"));
        let r = htc(&[
            "ask",
            "--model",
            s(&out),
            "--image",
            s(&img),
            "--prompt-ids",
            "5,6,7",
            "--max-new-tokens",
            "3",
            "--greedy",
            "--attention",
            s(&att),
        ]);
        assert!(r.status.success(), "ask {mode}: {}", String::from_utf8_lossy(&r.stderr));
        let ids: Vec<u32> =
            String::from_utf8_lossy(&r.stdout).split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(ids.len(), 3, "{mode}");
        let a: serde_json::Value = serde_json::from_slice(&std::fs::read(&att).unwrap()).unwrap();
        assert_eq!(a["mode"], mode);
        let layers = a["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2, "one map per LLM layer");
        let (nd, nv) = (a["n_discrete"].as_u64().unwrap() as usize, a["n_visual"].as_u64().unwrap() as usize);
        match mode {
            "htc" => assert_eq!((nd, nv), (4, 16)),
            "voco" => assert_eq!((nd, nv), (0, 16)),
            "discrete" => assert_eq!((nd, nv), (4, 0)),
            _ => {}
        }
        if matches!(mode, "htc" | "voco" | "discrete") {
            let row = layers[0][0].as_array().unwrap();
            assert_eq!(row.len(), nd + nv);
            assert!(row.iter().all(|x| x.as_f64().unwrap() >= 0.0));
        }
    }
}

#[test]
fn liuhaotian_snapshots_convert_to_the_hub_layout() {
    let out = tmp("ckpt-liu");
    let r = init("llava-liuhaotian-tiny", "htc", &out, &["--n-voco", "2", "--topology", "causal"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let src = WeightSource::open_dir(&fixtures().join("llava-liuhaotian-tiny")).unwrap();
    let dst = WeightSource::open_dir(&out).unwrap();
    for (a, b) in [
        ("model.embed_tokens.weight", "language_model.model.embed_tokens.weight"),
        ("model.mm_projector.2.weight", "multi_modal_projector.linear_2.weight"),
        (
            "model.vision_tower.vision_tower.vision_model.pre_layrnorm.weight",
            "vision_tower.vision_model.pre_layrnorm.weight",
        ),
        ("lm_head.weight", "language_model.lm_head.weight"),
    ] {
        assert_eq!(src.read(a).unwrap().data, dst.read(b).unwrap().data, "{a} -> {b}");
    }
    assert_eq!(dst.read("htc.voco_embeddings").unwrap().shape, vec![2, 64]);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["htc"]["topology"], "causal");
    assert_eq!(cfg["htc"]["n_voco"], 2);
}

#[test]
fn bad_init_and_ask_inputs_are_named() {
    // Flags clap checks: the mask topology and the stored dtype.
    let r = htc(&["init", "--topology", "ring", "--out", s(&tmp("bad-topology"))]);
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && e.contains("unknown mask topology `ring` (expected star, causal or full)"),
        "{e}"
    );
    let r = htc(&["init", "--dtype", "f8", "--out", s(&tmp("bad-dtype"))]);
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && e.contains("possible values: f16, f32"), "{e}");
    // MGVQ weights that do not fit the (default f16c32_g8) config.
    let r = htc(&[
        "init",
        "--llava",
        s(&fixtures().join("llava-hf-tiny")),
        "--mgvq",
        s(&fixtures().join("mgvq-tiny/model.safetensors")),
        "--out",
        s(&tmp("bad")),
        "--dtype",
        "f32",
    ]);
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("do not match the MGVQ config"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let out = tmp("ckpt-errors");
    assert!(init("llava-hf-tiny", "htc", &out, &["--dtype", "f16"]).status.success());
    // Without an image the LLM alone answers (as a LLaVA answers a text-only question).
    let r = htc(&["ask", "--model", s(&out), "--prompt-ids", "5,6", "--max-new-tokens", "2"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let pv = fixtures().join("llava-expected.safetensors");
    let r = htc(&["ask", "--model", s(&out), "--pixel-values", s(&pv), "--prompt-ids", "5,6"]);
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("pass --image instead"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let r = init("llava-hf-tiny", "sideways", &tmp("bad-mode"), &[]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("invalid value 'sideways' for '--mode"));
}
