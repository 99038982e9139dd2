//! `htc-shared`: what the browser and the worker both compute or exchange.
//!
//! - [`config`]: model configs parsed from HF `config.json` with transformers' defaults.
//! - [`preprocess`]: image decoding with limits and the LLaVA/CLIP preprocessing pipeline.
//! - [`mask`]: the disentanglement attention mask over the hybrid sequence.
//! - [`mgvq`]: the MGVQ encoder and multi-group quantiser.
//! - [`protocol`]: the worker's WebSocket protocol (messages, binary frames, validation).
//! - [`weights`]: building burn modules from named tensors ([`weights::Loader`]).
//!
//! Model code here is generic over the burn `Backend`. This crate builds for
//! `wasm32-unknown-unknown`; it has no native-only dependencies.

pub mod config;
pub mod mask;
pub mod mgvq;
pub mod preprocess;
pub mod protocol;
pub mod weights;

/// Errors that name the problem in one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    #[error("image: {0}")]
    Image(String),
}
