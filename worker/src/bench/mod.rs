//! The benchmarks behind `htc bench`: each suite builds its models, times them and writes its
//! report to the writer it is given (the command line passes stdout). The reports' lines are
//! read by `bench/*.sh` and `tests/bench_cli.rs`, so their formats are part of the interface.
//!
//! - [`backend`]: matmuls, a SmolLM2-width decoder with and without the row split, and the
//!   host attention kernels.
//! - [`htc`]: compress, answer without the cache and answer from the compressed image.
//! - [`llm`]: a real checkpoint's prefill and decoding.
//! - [`e2e`]: one image and question end to end, stage by stage, per mode; and the memory of
//!   one answer.
//! - [`train`]: training steps of one shape.

pub mod backend;
pub mod e2e;
pub mod htc;
pub mod llm;
pub mod train;

use std::time::Instant;

use anyhow::Result;
use burn::tensor::backend::Backend as _;
use htc_shared::config::ClipVisionConfig;

/// Where a suite writes its report. `Send`, since the LLM suite runs on the thread pool the
/// engine decodes on.
pub type Out<'a> = &'a mut (dyn std::io::Write + Send);

/// Seconds per call of `f`, after one warm-up call.
fn time<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

/// Seconds per call of `f`, after one warm-up call, waiting for the device after each call.
fn time_synced<F: FnMut() -> Result<()>>(reps: usize, mut f: F) -> Result<f64> {
    use crate::backend::Backend;
    let device = crate::backend::device();
    let sync = || Backend::sync(&device).map_err(|e| anyhow::anyhow!("device sync failed: {e:?}"));
    f()?;
    sync()?;
    let t = Instant::now();
    for _ in 0..reps {
        f()?;
        sync()?;
    }
    Ok(t.elapsed().as_secs_f64() / reps.max(1) as f64)
}

/// The prompt token ids every side of the LLM benchmark feeds (`bench/bench-llm.sh` gives
/// the same to llama.cpp): a fixed walk over the vocabulary, clear of the first 100 ids.
pub fn bench_ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| (100 + (i * 7919) % (vocab - 100)) as u32).collect()
}

/// The process's peak resident memory in MiB (Linux `VmHWM`), when the system reports it.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A CLIP ViT-/14 at 336 px (576 patches) of `width` and `layers`, 64-wide heads.
fn clip336(width: usize, layers: usize) -> ClipVisionConfig {
    ClipVisionConfig {
        hidden_size: width,
        intermediate_size: 4 * width,
        num_hidden_layers: layers,
        num_attention_heads: width / 64,
        num_channels: 3,
        image_size: 336,
        patch_size: 14,
        layer_norm_eps: 1e-5,
    }
}
