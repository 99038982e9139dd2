//! The `htc-web` entry point: installs the panic hook and mounts [`htc_web::App`] on the app's
//! own page (`<body data-htc-app>`). The same module serves the widget: `widget.js` imports it
//! on other sites and calls [`mount_widget`] for each `<htc-vlm-widget>`; there it mounts
//! nothing by itself.

use wasm_bindgen::prelude::*;

fn main() {
    console_error_panic_hook::set_once();
    let own_page = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.body())
        .is_some_and(|b| b.has_attribute("data-htc-app"));
    if own_page {
        leptos::mount::mount_to_body(htc_web::App);
    }
}

/// A mounted widget; `unmount` (the element's `disconnectedCallback`) removes it.
#[wasm_bindgen]
pub struct WidgetHandle {
    mounted: Option<Box<dyn std::any::Any>>,
}

#[wasm_bindgen]
impl WidgetHandle {
    /// Unmounts the app (its reactive state, listeners and connection go with it).
    pub fn unmount(&mut self) {
        self.mounted.take();
    }
}

/// The widget's entry point (see `htc_web::widget::mount`).
#[wasm_bindgen]
pub fn mount_widget(
    root: web_sys::ShadowRoot, host: web_sys::HtmlElement, worker: String, token: String, backend: String,
    assets: String,
) -> Result<WidgetHandle, JsValue> {
    htc_web::widget::mount(root, host, worker, token, backend, assets)
        .map(|m| WidgetHandle { mounted: Some(m) })
}
