//! Entry points of the fuzz targets (`fuzz_targets/`, run by `scripts/fuzz.sh`) and of the
//! corpus regression test (`worker/tests/fuzz_corpus.rs`), which include this file: each takes
//! arbitrary bytes and must return, refusing what is malformed with an error, without
//! panicking, hanging or allocating without bound. Kept out of the crates so that no build of
//! the worker or the page carries them.

#![allow(dead_code)] // each includer uses some of them

use htc_shared::config::{ClipVisionConfig, HtcConfig, LlamaConfig, LlavaConfig, MgvqConfig};
use htc_shared::loader::host_from_view;
use htc_shared::preprocess::{decode_image, DecodeLimits};
use htc_shared::protocol::{
    decode_attention_f16, decode_binary, decode_client, decode_codes, BinaryKind, ClientMessage,
};
use htc_worker::formats::gguf::GgufFile;
use safetensors::SafeTensors;

/// What a client sends over the WebSocket: a control frame (JSON text) or a binary frame,
/// whose codes payload is checked against the shape its `image` message declared.
pub fn protocol(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(ClientMessage::Image { codes: Some(shape), .. }) = decode_client(text) {
            let _ = decode_codes(&[], shape, 1024);
        }
    }
    if let Ok(frame) = decode_binary(data) {
        match frame.kind {
            BinaryKind::Codes => {
                // The first payload bytes stand for the shape a preceding `image` declared.
                if let [p, g, rest @ ..] = frame.payload {
                    let shape =
                        htc_shared::protocol::CodesShape { positions: *p as usize, groups: *g as usize };
                    let _ = decode_codes(rest, shape, 256);
                }
            }
            BinaryKind::AttentionF16 => {
                let _ = decode_attention_f16(frame.payload);
            }
            BinaryKind::ImageBytes => {}
        }
    }
}

/// An uploaded image, under limits small enough for a fuzzer (the server's are larger; the
/// same checks apply).
pub fn image(data: &[u8]) {
    let limits = DecodeLimits { max_width: 1024, max_height: 1024, max_alloc_bytes: 16 << 20 };
    let _ = decode_image(data, limits);
}

/// A checkpoint's `config.json` (and an MGVQ config), read by every config type.
pub fn config(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = LlavaConfig::from_json(&v, None);
    let _ = LlamaConfig::from_json(&v);
    let _ = ClipVisionConfig::from_json(&v);
    let _ = MgvqConfig::from_json(&v);
    let _ = HtcConfig::from_json(&v);
    let _ = LlavaConfig::from_json(&v, Some(&v));
}

/// Larger tensors are not dequantised (their bytes are checked to exist all the same).
const MAX_ELEMENTS: usize = 1 << 20;

/// The number of elements of a shape, if it fits in a `usize`.
fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// A GGUF file: its header and metadata, every tensor (dequantised), the LLaMA config and the
/// tokenizer built from its metadata.
pub fn gguf(data: &[u8]) {
    let Ok(g) = GgufFile::from_bytes(data.to_vec()) else { return };
    let names: Vec<String> = g.tensors.keys().cloned().collect();
    for name in names {
        if elements(&g.tensors[&name].shape).is_some_and(|n| n <= MAX_ELEMENTS) {
            let _ = g.dequantize(&name);
        }
    }
    let _ = g.llama_config();
    let _ = g.tokenizer_json();
    let _ = g.chat_template();
}

/// A safetensors file: its header, then every tensor read as f32 the way checkpoints are.
pub fn safetensors(data: &[u8]) {
    let Ok(st) = SafeTensors::deserialize(data) else { return };
    for (name, view) in st.tensors() {
        if elements(view.shape()).is_some_and(|n| n <= MAX_ELEMENTS) {
            let _ = host_from_view(&name, &view);
        }
    }
}
