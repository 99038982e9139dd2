//! The encoder thread: the Web Worker that runs the model's MGVQ encoder for the page
//! (`htc_web::runner`); trunk
//! builds it as `encoder.js` + `encoder_bg.wasm` with a loader, `/encoder_loader.js`.

fn main() {
    #[cfg(target_arch = "wasm32")]
    htc_web::runner::encoder_thread_main();
}
