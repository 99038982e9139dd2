//! Mounts the page in a real browser (`wasm-bindgen-test-runner`, headless Chromium) and checks
//! its stable hooks: the values from `htc-shared` and the compute path leaving `probing`.

#![cfg(target_arch = "wasm32")]

use htc_shared::mask::MaskLayout;
use htc_shared::protocol::PROTOCOL_VERSION;
use leptos::prelude::document;
use wasm_bindgen::JsCast;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

fn element(id: &str) -> web_sys::Element {
    document().get_element_by_id(id).unwrap_or_else(|| panic!("no #{id}"))
}

/// Resolves after `ms` milliseconds (lets the probe's promise settle).
async fn sleep(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        web_sys::window()
            .unwrap()
            .set_timeout_with_callback_and_timeout_and_arguments_0(resolve.unchecked_ref(), ms)
            .unwrap();
    });
    wasm_bindgen_futures::JsFuture::from(promise).await.unwrap();
}

#[wasm_bindgen_test]
async fn the_page_shows_shared_values_and_a_compute_path() {
    leptos::mount::mount_to_body(htc_web::App);

    let version = element("protocol-version");
    assert_eq!(version.get_attribute("data-version"), Some(PROTOCOL_VERSION.to_string()));
    assert_eq!(version.text_content().unwrap(), format!("Worker protocol: version {PROTOCOL_VERSION}"));

    let layout = element("sequence-layout");
    let paper = MaskLayout { bos: true, n_discrete: 4, n_visual: 576, n_voco: 1, n_text: 0 };
    assert_eq!(layout.get_attribute("data-positions"), Some(paper.len().to_string()));
    assert_eq!(
        layout.text_content().unwrap(),
        "The paper's sequence layout: BOS + 4 anchors + 576 patches + 1 <voco> = 582 positions before the question"
    );
    assert_eq!(element("attention-mask").get_attribute("data-topology").as_deref(), Some("star"));

    let path = element("compute-path");
    let mut id = path.get_attribute("data-path").unwrap();
    for _ in 0..200 {
        if id != "probing" {
            break;
        }
        sleep(50).await;
        id = path.get_attribute("data-path").unwrap();
    }
    let text = path.text_content().unwrap();
    match id.as_str() {
        "webgpu" => assert!(text.starts_with("Compute path: WebGPU"), "{text}"),
        "cpu" => assert!(text.starts_with("Compute path: CPU fallback: "), "{text}"),
        other => panic!("data-path stayed {other:?}: {text}"),
    }
}
