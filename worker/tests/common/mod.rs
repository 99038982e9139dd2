//! Helpers for the parity tests: fixture paths, reading expected tensors, tolerances.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub mod http;
pub mod ws;

use burn::tensor::{Distribution, Tensor};
use htc_shared::config::{ClipVisionConfig, HtcConfig, HtcMode, LlamaConfig, ProjectorKind};
use htc_shared::mask::Topology;
use htc_worker::backend::Backend;
use htc_worker::models::htc::ImageTensors;
use htc_worker::models::llava;
use safetensors::{Dtype, SafeTensors};

/// Runs the `htc` binary with quiet logs.
pub fn htc(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_htc")).args(args).env("HTC_LOG", "warn").output().unwrap()
}

/// A path in this test process's scratch directory (`group` keeps test files apart).
/// Writes CI's fresh ShapesVQA test questions for the demo model into `dir` (`test.json`
/// and its images): 100 scenes of seed 4242, a seed no training used, 3 questions each.
pub fn ci_test_set(dir: &Path) {
    let out = htc(&[
        "data",
        "shapes",
        "--out",
        s(dir),
        "--split",
        "test",
        "--images",
        "100",
        "--seed",
        "4242",
        "--questions-per-image",
        "3",
    ]);
    assert!(out.status.success(), "htc data shapes: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn tmp(group: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("htc-{group}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

pub fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

pub struct Expected {
    bytes: Vec<u8>,
}

impl Expected {
    pub fn open(rel: &str) -> Self {
        let p = fixtures().join(rel);
        Self { bytes: std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display())) }
    }

    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let v = st.tensor(name).unwrap();
        assert_eq!(v.dtype(), Dtype::F32, "{name}");
        (
            v.shape().to_vec(),
            v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        )
    }

    pub fn f64(&self, name: &str) -> Vec<f64> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let v = st.tensor(name).unwrap();
        assert_eq!(v.dtype(), Dtype::F64, "{name}");
        v.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap())).collect()
    }

    /// Every tensor name that starts with `prefix`, without it.
    pub fn names_under(&self, prefix: &str) -> Vec<String> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let mut v: Vec<String> =
            st.names().into_iter().filter_map(|n| n.strip_prefix(prefix).map(str::to_string)).collect();
        v.sort();
        v
    }

    pub fn i64(&self, name: &str) -> Vec<i64> {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let v = st.tensor(name).unwrap();
        assert_eq!(v.dtype(), Dtype::I64, "{name}");
        v.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
    }
}

pub fn to_vec<const D: usize>(t: Tensor<Backend, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

/// Asserts `max |a - b| <= rel * max(1, max |b|)`: an error bound relative to the output scale.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    let err = got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err.is_finite() && err <= rel * scale,
        "{what}: max abs error {err:.3e} exceeds {rel:.0e} x scale {scale:.3}"
    );
    eprintln!("{what}: max abs error {err:.3e} (scale {scale:.3}, bound {:.3e})", rel * scale);
}

/// The tiny LLaVA shape the HTC tests use (CLIP 32 wide at 28 px with 16 patches, LLM 64 wide).
pub fn llava_config() -> llava::Config {
    let vision = ClipVisionConfig {
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_channels: 3,
        image_size: 28,
        patch_size: 7,
        layer_norm_eps: 1e-5,
    };
    let text = LlamaConfig::from_json(&serde_json::json!({"vocab_size": 96, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5})).unwrap();
    llava::Config {
        layout: llava::Layout::LlavaHf,
        text,
        vision,
        image_token_id: 95,
        select_layer: -2,
        projector_mlp: true,
    }
}

/// An HTC section over the tiny MGVQ fixture.
pub fn htc_config(mode: HtcMode, topology: Topology, n_voco: usize) -> HtcConfig {
    let mgvq =
        serde_json::from_slice(&std::fs::read(fixtures().join("mgvq-tiny/config.json")).unwrap()).unwrap();
    HtcConfig {
        mode,
        n_discrete: 4,
        n_voco,
        topology,
        continuous_projector: ProjectorKind::Mlp2xGelu,
        discrete_hidden: 48,
        discrete_layers: 2,
        fusion: Default::default(),
        mgvq: Some(mgvq),
        chat_format: Default::default(),
    }
}

/// Random image tensors for the tiny shapes, reproducible by `seed`.
pub fn image<B: burn::tensor::backend::Backend>(seed: u64) -> ImageTensors<B> {
    let d = B::Device::default();
    B::seed(&d, seed);
    ImageTensors {
        clip: Tensor::random([1, 3, 28, 28], Distribution::Normal(0.0, 1.0), &d),
        mgvq: Some(Tensor::random([1, 3, 64, 64], Distribution::Uniform(-1.0, 1.0), &d)),
        codes: None,
    }
}

/// `htc train` on the colour task with the settings every training test uses: global batch 6
/// in micro-batches of 3, lr 3e-3 after 5 warmup steps, no weight decay, no progress bar.
pub fn train_args<'a>(
    model: &'a Path, data: &'a Path, images: &'a Path, out: &'a Path, steps: &'a str,
) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        s(model),
        "--data",
        s(data),
        "--images",
        s(images),
        "--out",
        s(out),
        "--max-steps",
        steps,
        "--global-batch",
        "6",
        "--micro-batch",
        "3",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "5",
        "--weight-decay",
        "0.0",
        "--quiet",
    ]
}
