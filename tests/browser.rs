//! Browser smoke test: the trunk-built web app, served by the worker's HTTP router on
//! loopback, loads in headless Chromium and reports its compute path: WebGPU when Chromium
//! grants an adapter (`--enable-unsafe-webgpu`, SwiftShader), the CPU fallback when not.
//!
//! Needs chromium, chromedriver and `dist/` from `trunk build`; `scripts/test.sh` provides them.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};

#[path = "../worker/tests/common/http.rs"]
mod http;

struct Driver(Child);
impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn dist() -> PathBuf {
    std::env::var("HTC_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dist"))
}

async fn compute_path(driver_port: u16, url: &str, webgpu: bool) -> (String, String) {
    let profile = tempdir();
    let mut args = vec![
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        format!("--user-data-dir={}", profile.display()),
    ];
    if webgpu {
        args.push("--enable-unsafe-webgpu".into());
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"args": args, "binary": "/usr/bin/chromium"}),
    );
    let client = ClientBuilder::rustls()
        .expect("rustls client")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("connect to chromedriver");
    client.goto(url).await.unwrap();
    let el = client
        .wait()
        .at_most(Duration::from_secs(60))
        .for_element(Locator::Css("#compute-path:not([data-path='probing'])"))
        .await
        .expect("the page reports a compute path");
    let path = el.attr("data-path").await.unwrap().unwrap_or_default();
    let text = el.text().await.unwrap();
    client.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
    (path, text)
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("htc-chromium-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium, chromedriver and a trunk build in dist/; run by scripts/test.sh"]
async fn web_app_reports_webgpu_and_cpu_fallback() {
    let dist = dist();
    assert!(dist.join("index.html").is_file(), "no trunk build at {} (run trunk build)", dist.display());
    let app = htc_worker::server::App::new(htc_worker::server::ServeArgs::local(dist.clone())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        htc_worker::server::serve_on(listener, app, std::future::pending()).await.unwrap()
    });

    // The server answers on loopback.
    let health = http::http_get(addr, "/healthz").await.trim().to_string();
    assert!(health.ends_with("ok"), "healthz: {health}");

    let port = free_port();
    let _driver = Driver(
        Command::new(std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver on PATH"),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = format!("http://{addr}/");
    let (path, text) = compute_path(port, &url, true).await;
    eprintln!("with --enable-unsafe-webgpu: {path}: {text}");
    assert_eq!(path, "webgpu", "{text}");
    let (path, text) = compute_path(port, &url, false).await;
    eprintln!("without WebGPU: {path}: {text}");
    assert_eq!(path, "cpu", "{text}");
    assert!(text.contains("CPU fallback"), "{text}");
}
