//! The `htc-web` entry point: installs the panic hook and mounts [`htc_web::App`] on the app's
//! own page (`<body data-htc-app>`). The same module serves the widget (`widget.js` imports it
//! on other sites and calls `mount_widget`), where it mounts nothing by itself.

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
