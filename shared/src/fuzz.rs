//! Entry points of the fuzz targets (`fuzz/`, run by `scripts/fuzz.sh`) and of the corpus
//! regression test (`worker/tests/fuzz_corpus.rs`): each takes arbitrary bytes and must return,
//! refusing what is malformed with an error, without panicking, hanging or allocating without
//! bound. The worker's own parsers (GGUF, safetensors) have theirs in `htc_worker::formats`.

use crate::config::{ClipVisionConfig, HtcConfig, LlamaConfig, LlavaConfig, MgvqConfig};
use crate::preprocess::{decode_image, DecodeLimits};
use crate::protocol::{
    decode_attention_f16, decode_binary, decode_client, decode_codes, BinaryKind, ClientMessage,
};

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
                    let shape = crate::protocol::CodesShape { positions: *p as usize, groups: *g as usize };
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
