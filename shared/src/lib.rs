//! `htc-shared`: what the browser and the worker both compute or exchange.
//!
//! - [`config`]: every model config, parsed from HF `config.json` with transformers' defaults.
//! - [`preprocess`]: image decoding with limits and the LLaVA/CLIP preprocessing pipeline.
//! - [`mask`]: the disentanglement attention mask over the hybrid sequence.
//! - [`mgvq`]: the MGVQ encoder and multi-group quantiser.
//! - `mgvq_wgsl` (feature `wgsl`): the same encoder as hand-written WGSL kernels on WebGPU.
//! - [`protocol`]: the worker's WebSocket protocol (messages, binary frames, typed errors).
//! - [`loader`]: building burn modules from named tensors ([`loader::Loader`]), including a
//!   safetensors file held in memory.
//! - [`params`]: stable, parameter ids derived from checkpoint keys.
//!
//! Model code here is generic over the burn `Backend`. This crate builds for
//! `wasm32-unknown-unknown`; it has no native-only dependencies. Errors are the typed
//! [`Error`] (no `anyhow` here).

pub mod config;
pub mod loader;
pub mod mask;
pub mod mgvq;
#[cfg(feature = "wgsl")]
pub mod mgvq_wgsl;
pub mod params;
pub mod preprocess;
pub mod protocol;

/// Errors that name the problem in one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    #[error("image: {0}")]
    Image(String),
    /// A missing, misshapen or unreadable tensor.
    #[error("{0}")]
    Weights(String),
    /// A tensor that could not be read back from the device.
    #[error("tensor: {0}")]
    Tensor(String),
}
