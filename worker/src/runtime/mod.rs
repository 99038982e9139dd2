//! Running models: how tokens are chosen ([`sampling`]), the decoding core both front ends
//! share ([`decode`]), images to tensors ([`image`]), one question end to end for the CLI
//! ([`ask`]), and the server's [`engine`] (one model thread, queue, micro-batching, cache).
//! Typed errors at the protocol boundary live in [`error`]. No HTTP, WebSocket or argument
//! parsing here.

pub mod ask;
pub mod decode;
pub mod engine;
pub mod error;
pub mod image;
pub mod sampling;

use crate::backend::{self, KvCacheChoice};
use crate::kernels::kv_cache::KvDtype;

/// How the models store the key/value cache they decode on in f32 CPU inference, as
/// `--kv-cache` chose it ([`backend::kv_cache`]; see `Llama::with_kv_dtype`).
pub fn kv_dtype() -> KvDtype {
    match backend::kv_cache() {
        KvCacheChoice::F32 => KvDtype::F32,
        KvCacheChoice::F16 => KvDtype::F16,
    }
}
