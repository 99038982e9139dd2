//! `htc-shared`: what the browser and the worker both compute or exchange.
//!
//! - [`config`]: model configs parsed from HF `config.json` with transformers' defaults.
//! - [`preprocess`]: image decoding with limits and the LLaVA/CLIP preprocessing pipeline.
//! - [`mask`]: the disentanglement attention mask over the hybrid sequence.
//!
//! This crate builds for `wasm32-unknown-unknown`; it has no native-only dependencies.

pub mod config;
pub mod mask;
pub mod preprocess;

/// Errors that name the problem in one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    #[error("image: {0}")]
    Image(String),
}
