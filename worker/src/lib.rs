//! `htc-worker`: the native side of HTC-VLM.
//!
//! - [`models`]: CLIP vision tower, LLaMA decoder and LLaVA-1.5, generic over the burn backend.
//! - [`weights`] and [`gguf`]: safetensors snapshots and GGUF files as weight sources.
//! - [`snapshot`]: opening any supported model directory or file.
//! - [`chat`], [`generate`], [`ask`]: prompts, decoding and streaming answers.
//! - [`init`]: `htc init`, untrained HTC checkpoints from LLaVA + MGVQ.
//! - [`serve`]: the HTTP server for the web UI; [`bench`]: backend measurements.
//! - [`backend`]: the burn backend chosen by cargo feature.

pub mod ask;
pub mod backend;
pub mod bench;
pub mod chat;
pub mod demo;
pub mod engine;
pub mod generate;
pub mod gguf;
pub mod init;
pub mod models;
pub mod openai;
pub mod serve;
pub mod snapshot;
pub mod weights;
