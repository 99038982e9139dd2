//! `htc-web`: the HTC-VLM browser UI (leptos, client-side rendered), as a library so that the
//! binary (`main.rs`) and `wasm_bindgen_test` tests mount the same components.
//!
//! - [`app`]: the page ([`App`]).
//! - [`compute`]: the WebGPU probe and the compute path it picks for the in-browser MGVQ encoder.
//! - [`layout`]: the hybrid sequence layout, computed with `htc-shared`'s mask code.

pub mod app;
pub mod compute;
pub mod layout;

pub use app::App;
