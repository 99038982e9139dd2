//! `htc-web`: the HTC-VLM browser UI (leptos, client-side rendered), as a library so that the
//! binary (`main.rs`) and `wasm_bindgen_test` tests mount the same components.
//!
//! - [`app`]: the page ([`App`]), composing one component per concern:
//!   [`status`], [`image_input`], [`chat`], [`samples`], [`attention`], [`settings`];
//! - [`session`]: the shared reactive state and the actions (connect, ask, stop);
//! - [`client`]: the worker client (the WebSocket protocol of `htc_shared::protocol`);
//! - [`runner`]: the in-browser model runner: the MGVQ encoder on its encoder thread (a Web
//!   Worker), on WebGPU (the WGSL kernels, or burn-wgpu's) with a CPU fallback (burn-ndarray);
//! - [`state`]: the rules without the DOM (conversation, connection and backoff, encoder
//!   words, settings, modes, attention maps, image files), tested natively;
//! - [`widget`]: `<htc-vlm-widget>`, the app in a shadow root for other sites (`widget.js`);
//! - [`compute`]: the WebGPU probe; [`layout`]: the hybrid sequence layout from `htc-shared`.

pub mod app;
pub mod attention;
pub mod chat;
pub mod client;
pub mod compute;
pub mod image_input;
pub mod layout;
pub mod runner;
pub mod samples;
pub mod session;
pub mod settings;
pub mod state;
pub mod status;
pub mod widget;

pub use app::App;
