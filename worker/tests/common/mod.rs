//! Helpers for the parity tests: fixture paths, reading expected tensors, tolerances.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::Tensor;
use htc_worker::backend::Backend;
use safetensors::{Dtype, SafeTensors};

/// Runs the `htc` binary with quiet logs.
pub fn htc(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_htc")).args(args).env("HTC_LOG", "warn").output().unwrap()
}

/// A path in this test process's scratch directory (`group` keeps test files apart).
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
