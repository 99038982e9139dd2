//! `htc-worker`: the native side of HTC-VLM, in layers (each may use only those above it in
//! this list; `tests/layers.rs` checks it):
//!
//! - [`backend`]: the burn backend chosen by cargo feature.
//! - [`kernels`]: what the models compute with besides burn's operations: shared ops, RoPE,
//!   thread-split linear products, attention over the key/value cache, and the CPU kernels
//!   (fused host kernels, the host cache, the thread team).
//! - [`models`]: CLIP, LLaMA, LLaVA-1.5 and HTC: plain forward passes, generic over the backend.
//! - [`text`]: chat templates, the tokenizer and its stop ids, streaming detokenisation.
//! - [`data`]: data sets the project generates (ShapesVQA).
//! - [`figures`]: what the PNG figures share (the compiled-in font).
//! - [`formats`]: safetensors and GGUF weight sources, checkpoint opening, random weights,
//!   checkpoint writing, and a model's `about.json` with its sample images (drawn by a
//!   generator of [`data`]).
//! - [`runtime`]: sampling, the decoding core, image tensors, one-shot asking and the
//!   server's engine.
//! - [`server`]: HTTP, WebSocket and OpenAI front ends over the engine.
//! - [`train`]: the training objective, optimizer, data, checkpoints and loop (beside `server`).
//! - [`eval`]: batched greedy answering of a question set and exact-match scoring.
//! - [`loadtest`]: a WebSocket load client for a running service (uses `eval`'s question
//!   reader only).
//! - [`bench`]: the `htc bench` suites (backend, LLM, HTC stages, end to end, training,
//!   memory), each writing its report to a writer it is given (beside `server` and `eval`).
//! - [`cli`]: the `htc` subcommands.

pub mod backend;
pub mod bench;
pub mod cli;
pub mod data;
pub mod eval;
pub mod figures;
pub mod formats;
pub mod kernels;
pub mod loadtest;
pub mod models;
pub mod runtime;
pub mod server;
pub mod text;
pub mod train;
