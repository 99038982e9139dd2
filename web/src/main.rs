//! The `htc-web` entry point: installs the panic hook and mounts [`htc_web::App`] on `<body>`.

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(htc_web::App);
}
