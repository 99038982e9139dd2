//! The fuzz targets' inputs as regression tests: every seed of `fuzz/corpus/<target>/` and
//! every input a fuzzer once crashed on (`fuzz/regressions/<target>/`) goes through the
//! target's entry point and must return without a panic. The seeds themselves must be valid
//! inputs that reach the parsers' depths (a seed refused at its first byte would teach a
//! fuzzer nothing).

use std::path::{Path, PathBuf};

#[path = "../../fuzz/entry.rs"]
mod entry;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for dir in [root.join("corpus").join(target), root.join("regressions").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

fn run(target: &str, f: fn(&[u8])) -> Vec<(PathBuf, Vec<u8>)> {
    let all = inputs(target);
    assert!(!all.is_empty(), "no inputs for the {target} target");
    for (p, data) in &all {
        let r = std::panic::catch_unwind(|| f(data));
        assert!(r.is_ok(), "{} panicked the {target} target", p.display());
    }
    all
}

#[test]
fn protocol_inputs() {
    for (p, data) in run("protocol", entry::protocol) {
        let text = std::str::from_utf8(&data).ok();
        let ok = text.is_some_and(|t| htc_shared::protocol::decode_client(t).is_ok())
            || htc_shared::protocol::decode_binary(&data).is_ok();
        assert!(ok, "seed {} is not a valid message or frame", p.display());
    }
}

#[test]
fn image_inputs() {
    for (p, data) in run("image", entry::image) {
        let img = htc_shared::preprocess::decode_image(&data, Default::default());
        assert!(img.is_ok(), "seed {} does not decode: {:?}", p.display(), img.err());
    }
}

#[test]
fn config_inputs() {
    for (p, data) in run("config", entry::config) {
        assert!(serde_json::from_slice::<serde_json::Value>(&data).is_ok(), "{} is not JSON", p.display());
    }
}

#[test]
fn gguf_inputs() {
    for (p, data) in run("gguf", entry::gguf) {
        let g = htc_worker::formats::gguf::GgufFile::from_bytes(data).unwrap();
        let cfg = g.llama_config().unwrap();
        assert_eq!((cfg.hidden_size, cfg.num_hidden_layers), (8, 1), "{}", p.display());
        assert!(g.tokenizer_json().is_ok());
        let (shape, q) = g.dequantize("blk.0.attn_q.weight").unwrap();
        assert_eq!((shape, q.len()), (vec![1, 32], 32));
        assert!((q[3] - 0.15).abs() < 1e-3, "Q8_0 block: scale 0.05 × 3 = {}", q[3]);
    }
}

#[test]
fn safetensors_inputs() {
    for (p, data) in run("safetensors", entry::safetensors) {
        assert!(safetensors::SafeTensors::deserialize(&data).is_ok(), "{}", p.display());
    }
}

/// The hardening the fuzzers asked for, on inputs written by hand: shapes whose element count
/// overflows and offsets past the end are refused in words, not by a panic.
#[test]
fn gguf_sizes_that_overflow_are_refused() {
    let seed = inputs("gguf").into_iter().find(|(p, _)| p.ends_with("tiny-llama.gguf")).unwrap().1;
    // Rewrite the Q8_0 tensor's two dims (u64 each, after its name) to 2^32 × 2^32.
    let name = b"blk.0.attn_q.weight";
    let at = seed.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4;
    let mut bad = seed.clone();
    bad[at..at + 8].copy_from_slice(&(1u64 << 32).to_le_bytes());
    bad[at + 8..at + 16].copy_from_slice(&(1u64 << 32).to_le_bytes());
    let g = htc_worker::formats::gguf::GgufFile::from_bytes(bad).unwrap();
    let e = g.dequantize("blk.0.attn_q.weight").unwrap_err().to_string();
    assert!(e.contains("lies outside the GGUF file"), "{e}");
    entry::gguf(&seed);
}
