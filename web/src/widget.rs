//! The embeddable widget: [`mount`], which `widget.js` (the module script that registers the
//! `<htc-vlm-widget>` custom element) calls for each element, as `mount_widget`. The whole app renders into
//! the element's shadow root with the app's stylesheet inside it, talks to the worker named by
//! the element's attributes (settings come from them, not from the host site's storage), and
//! fires a composed `htc-answer` event on the element for every finished answer.

use wasm_bindgen::JsCast;
use wasm_bindgen::JsValue;

use crate::session::Session;
use crate::state::{BackendChoice, Settings};

/// The app's stylesheet, the same file `index.html` links.
const STYLE: &str = include_str!("../style.css");

/// Mounts the app into `root`, the shadow root of `host`, for the worker at `worker`
/// (`ws://…/ws`) with `token` and `backend`; the encoder's files are under `assets`. Dropping
/// the result unmounts it. (The `htc-web` binary exports this to JavaScript as
/// `mount_widget`: an export here, in the library, would also land in the encoder's wasm.)
pub fn mount(
    root: web_sys::ShadowRoot, host: web_sys::HtmlElement, worker: String, token: String, backend: String,
    assets: String,
) -> Result<Box<dyn std::any::Any>, JsValue> {
    console_error_panic_hook::set_once();
    let settings = Settings {
        worker_url: worker,
        token,
        backend: BackendChoice::parse(&backend).unwrap_or_default(),
        ..Settings::default()
    };
    settings.validate().map_err(|e| JsValue::from_str(&format!("htc-vlm-widget: {e}")))?;
    let doc = web_sys::window().and_then(|w| w.document()).ok_or("no document")?;
    root.set_inner_html("");
    let style = doc.create_element("style")?;
    style.set_text_content(Some(STYLE));
    root.append_child(&style)?;
    let container: web_sys::HtmlElement = doc.create_element("div")?.dyn_into()?;
    container.set_class_name("htc-widget");
    root.append_child(&container)?;
    let on_answer = move |question: &str, answer: &str, request_id: u32| {
        let detail = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&detail, &"question".into(), &question.into());
        let _ = js_sys::Reflect::set(&detail, &"answer".into(), &answer.into());
        let _ = js_sys::Reflect::set(&detail, &"requestId".into(), &request_id.into());
        let init = web_sys::CustomEventInit::new();
        init.set_bubbles(true);
        init.set_composed(true);
        init.set_detail(&detail);
        if let Ok(ev) = web_sys::CustomEvent::new_with_event_init_dict("htc-answer", &init) {
            let _ = host.dispatch_event(&ev);
        }
    };
    let mounted = leptos::mount::mount_to(container, move || {
        crate::app::shell(Session::with(settings, assets, Some(Box::new(on_answer))))
    });
    Ok(Box::new(mounted))
}
