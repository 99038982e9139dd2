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
