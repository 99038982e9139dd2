//! Browser tests: the trunk-built web app, served by the worker's HTTP router on loopback
//! with the bundled demo model, in headless Chromium:
//! - it reports its compute path: WebGPU when Chromium grants an adapter
//!   (`--enable-unsafe-webgpu`, SwiftShader), the CPU fallback when not;
//! - a person can choose an image, ask, and read the streamed answer the model really gives
//!   (the same as `htc ask`), see the attention heatmap drawn, ask a follow-up from the
//!   one-token cache, stop, and get a clear error for a file that is not an image; the page
//!   fits a 375-px-wide screen; the keyboard alone asks and regenerates, and the console
//!   shows no error;
//! - a newcomer reads what the model knows, picks one of its sample scenes and a suggested
//!   question, and reads the answer `htc ask` gives for them;
//! - the page's Web Worker runs the model's MGVQ encoder on the CPU, its codes go with the
//!   image and the worker accepts them (it refuses codes that differ from its own); the
//!   encoder's weights come from the browser's cache after a reload (no weight bytes served).
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

fn chromium_caps(profile: &std::path::Path, webgpu: bool) -> serde_json::Map<String, serde_json::Value> {
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
    // The browser's console, read back by [`ConsoleLog`].
    caps.insert("goog:loggingPrefs".into(), serde_json::json!({"browser": "ALL"}));
    caps
}

/// Chromedriver's log endpoint: the browser console's entries since the last read (messages the
/// page logged, uncaught errors, failed requests), each `{level, message, ...}`.
#[derive(Debug)]
struct ConsoleLog;

impl fantoccini::wd::WebDriverCompatibleCommand for ConsoleLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (::http::Method, Option<String>) {
        (::http::Method::POST, Some(serde_json::json!({"type": "browser"}).to_string()))
    }
}

/// The console's errors (level SEVERE) since the last read, one line each.
async fn console_errors(client: &fantoccini::Client) -> Vec<String> {
    let entries = client.issue_cmd(ConsoleLog).await.expect("chromedriver's log endpoint");
    entries
        .as_array()
        .expect("a list of log entries")
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Types `keys` (characters, or WebDriver key codes such as `\u{E004}`, Tab) as a keyboard
/// does, into whatever has the focus, and returns what has the focus then: its accessible
/// name, else its text.
async fn press(client: &fantoccini::Client, keys: &str) -> String {
    use fantoccini::actions::{InputSource, KeyAction, KeyActions};
    let mut typed = KeyActions::new("keyboard".into());
    for value in keys.chars() {
        typed = typed.then(KeyAction::Down { value }).then(KeyAction::Up { value });
    }
    client.perform_actions(typed).await.unwrap();
    let js = "const e = document.activeElement;
              const label = e.labels && e.labels.length ? e.labels[0].textContent.trim() : '';
              return e.getAttribute('aria-label') || label || e.textContent.trim().slice(0, 40);";
    client.execute(js, vec![]).await.unwrap().as_str().unwrap_or_default().to_string()
}

async fn open(driver_port: u16, profile: &std::path::Path, webgpu: bool) -> fantoccini::Client {
    ClientBuilder::rustls()
        .expect("rustls client")
        .capabilities(chromium_caps(profile, webgpu))
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("connect to chromedriver")
}

async fn wait_for(client: &fantoccini::Client, css: &str) -> fantoccini::elements::Element {
    match client.wait().at_most(Duration::from_secs(60)).for_element(Locator::Css(css)).await {
        Ok(el) => el,
        Err(e) => {
            // What the page said instead: its status line and any notice.
            let said = client
                .execute("return [...document.querySelectorAll('#status, .error')].map(e => e.textContent).join(' | ');", vec![])
                .await
                .map(|v| v.to_string())
                .unwrap_or_default();
            panic!("the page never showed `{css}` ({e}); it said: {said}")
        }
    }
}

async fn compute_path(driver_port: u16, url: &str, webgpu: bool) -> (String, String) {
    let profile = tempdir();
    let client = open(driver_port, &profile, webgpu).await;
    client.goto(url).await.unwrap();
    let el = wait_for(&client, "#compute-path:not([data-path='probing'])").await;
    let path = el.attr("data-path").await.unwrap().unwrap_or_default();
    let text = el.text().await.unwrap();
    client.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
    (path, text)
}

/// Asks `question` in the page and waits for the answer to finish; returns the live region's
/// text.
async fn ask(client: &fantoccini::Client, question: &str) -> String {
    let before = client.find_all(Locator::Css(".turn")).await.unwrap().len();
    let q = client.find(Locator::Css("textarea[aria-label='Question']")).await.unwrap();
    q.send_keys(question).await.unwrap();
    client.find(Locator::XPath("//button[normalize-space()='Ask']")).await.unwrap().click().await.unwrap();
    let css = format!(".turn:nth-child({}) .turn-status", before + 1);
    wait_for(client, &css).await;
    wait_for(client, "#answer[data-state='done']").await;
    client.find(Locator::Css("[aria-label='Answer']")).await.unwrap().text().await.unwrap()
}

/// Saves a screenshot of the page as `screenshots/NAME.png` (ignored by git; the copies the
/// docs show are in docs/screenshots, see docs/browser.md#accessibility-and-screenshots).
async fn screenshot(client: &fantoccini::Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), client.screenshot().await.unwrap()).unwrap();
}

/// Runs axe-core (node_modules, from `npm ci`) on the page; returns its serious and critical
/// violations, in words.
async fn axe_serious(client: &fantoccini::Client) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node_modules/axe-core/axe.min.js");
    let src =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run npm ci)", path.display()));
    let loaded = client.execute(&format!("{src}\nreturn typeof axe;"), vec![]).await.unwrap();
    assert_eq!(loaded.as_str(), Some("object"), "axe-core loaded in the page");
    let found = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] }).then((r) => done([r.passes.length, r.violations
               .filter((v) => v.impact === 'serious' || v.impact === 'critical')
               .map((v) => `${v.id} (${v.impact}): ${v.help}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`)]));",
            vec![],
        )
        .await
        .unwrap();
    let (passed, serious): (usize, Vec<String>) = serde_json::from_value(found).unwrap();
    assert!(passed > 0, "axe-core checked rules");
    eprintln!("axe-core: {passed} rules passed, {} serious or critical violations", serious.len());
    serious
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("htc-chromium-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium, chromedriver and a trunk build in dist/; run by scripts/test.sh"]
async fn web_app_reports_webgpu_and_cpu_fallback() {
    let (url, port, _driver) = server(None).await;
    let (path, text) = compute_path(port, &url, true).await;
    eprintln!("with --enable-unsafe-webgpu: {path}: {text}");
    assert_eq!(path, "webgpu", "{text}");
    let (path, text) = compute_path(port, &url, false).await;
    eprintln!("without WebGPU: {path}: {text}");
    assert_eq!(path, "cpu", "{text}");
    assert!(text.contains("CPU fallback"), "{text}");
}

/// Chromedriver's passthrough to the DevTools protocol: `source` runs in every new document
/// before the page's own scripts.
#[derive(Debug)]
struct BeforePageScripts(&'static str);

impl fantoccini::wd::WebDriverCompatibleCommand for BeforePageScripts {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/goog/cdp/execute", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (::http::Method, Option<String>) {
        let body =
            serde_json::json!({"cmd": "Page.addScriptToEvaluateOnNewDocument", "params": {"source": self.0}});
        (::http::Method::POST, Some(body.to_string()))
    }
}

/// The fallback matrix: WebGPU granted, `navigator.gpu` removed, no adapter granted, CPU
/// chosen in the settings, and the WebGPU device lost after the encoder loaded on it; and the
/// same with burn-wgpu's kernels chosen instead of the WGSL ones (granted, then lost). In each
/// the page answers, its compute path says truthfully what it found, the status names the
/// backend its encoder really ran on, and the codes it sends are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium, chromedriver and a trunk build in dist/; run by scripts/test.sh"]
async fn every_compute_path_answers_truthfully_with_the_same_codes() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (url, port, _driver) = server(Some(root.join("models/shapes-demo"))).await;
    struct Case {
        name: &'static str,
        webgpu_flag: bool,
        remove_gpu: bool,
        /// The compute backend stored in the settings before the page loads.
        choice: Option<&'static str>,
        lose_device: bool,
        path: &'static str,
        words: &'static str,
        backend: &'static str,
    }
    let case = |name, webgpu_flag, remove_gpu, choice, lose_device, path, words, backend| Case {
        name,
        webgpu_flag,
        remove_gpu,
        choice,
        lose_device,
        path,
        words,
        backend,
    };
    let cases = [
        case(
            "WebGPU granted",
            true,
            false,
            None,
            false,
            "webgpu",
            "WebGPU (software fallback adapter)",
            "webgpu",
        ),
        case(
            "navigator.gpu removed",
            true,
            true,
            None,
            false,
            "cpu",
            "navigator.gpu is not available",
            "cpu",
        ),
        case("no adapter granted", false, false, None, false, "cpu", "no WebGPU adapter was granted", "cpu"),
        case(
            "CPU chosen in the settings",
            true,
            false,
            Some("cpu"),
            false,
            "cpu",
            "CPU (chosen in the settings)",
            "cpu",
        ),
        case(
            "WebGPU device lost",
            true,
            false,
            None,
            true,
            "cpu",
            "WebGPU failed in the encoder (the WebGPU device was lost",
            "cpu",
        ),
        case(
            "burn-wgpu chosen",
            true,
            false,
            Some("burn-wgpu"),
            false,
            "webgpu",
            "WebGPU (software fallback adapter)",
            "webgpu-burn",
        ),
        case(
            "burn-wgpu's device lost",
            true,
            false,
            Some("burn-wgpu"),
            true,
            "cpu",
            "WebGPU failed in the encoder (the WebGPU device was lost",
            "cpu",
        ),
    ];
    let mut all_codes: Vec<(String, String)> = Vec::new();
    for c in cases {
        let profile = tempdir();
        let client = open(port, &profile, c.webgpu_flag).await;
        if c.remove_gpu {
            client.issue_cmd(BeforePageScripts("delete Navigator.prototype.gpu;")).await.unwrap();
        }
        client.goto(&url).await.unwrap();
        if let Some(choice) = c.choice {
            let js =
                format!("localStorage.setItem('htc-vlm.settings', JSON.stringify({{backend: '{choice}'}}));");
            client.execute(&js, vec![]).await.unwrap();
            client.refresh().await.unwrap();
        }
        wait_for(&client, "#status[data-connection='ready']").await;
        if c.lose_device {
            let ready = wait_for(&client, "#encoder[data-encoder='ready']").await.text().await.unwrap();
            assert!(ready.contains("ready on webgpu"), "{}: {ready}", c.name);
            client.execute("window.dispatchEvent(new Event('htc-lose-device'));", vec![]).await.unwrap();
            wait_for(&client, "#compute-path[data-path='cpu']").await;
        }
        let el = wait_for(&client, "#compute-path:not([data-path='probing'])").await;
        let (got_path, text) =
            (el.attr("data-path").await.unwrap().unwrap_or_default(), el.text().await.unwrap());
        eprintln!("{}: {got_path}: {text}", c.name);
        assert_eq!(got_path, c.path, "{}: {text}", c.name);
        assert!(text.contains(c.words), "{}: {text}", c.name);
        let input = client.find(Locator::Css("input[type='file'][aria-label='Image']")).await.unwrap();
        input.send_keys(root.join("docs/demo-star.png").to_str().unwrap()).await.unwrap();
        let codes = wait_for(&client, "#browser-codes[data-image]").await;
        let codes = codes.attr("data-codes").await.unwrap().unwrap_or_default();
        assert_eq!(codes.split(',').count(), 36 * 4, "{}", c.name);
        let answer = ask(&client, "What color is the star?").await;
        assert_eq!(answer.trim(), "red", "{}", c.name);
        let encoder = client.find(Locator::Css("#encoder")).await.unwrap().text().await.unwrap();
        assert!(encoder.contains(&format!("ready on {}", c.backend)), "{}: {encoder}", c.name);
        let by = client.find(Locator::Css("#tokenised-by")).await.unwrap().text().await.unwrap();
        eprintln!("{}: {encoder}; {by}", c.name);
        assert!(
            by.contains(&format!("image tokenised by: browser, backend: {}", c.backend)),
            "{}: {by}",
            c.name
        );
        all_codes.push((c.name.to_string(), codes));
        client.close().await.unwrap();
        let _ = std::fs::remove_dir_all(profile);
    }
    for (case, codes) in &all_codes[1..] {
        assert_eq!(codes, &all_codes[0].1, "{case}: the same codes as with WebGPU granted");
    }
}

/// Starts the worker (with `model`, or its random default) serving the web app, checks
/// `/healthz`, and starts chromedriver; returns the page URL, the driver's port and the driver.
async fn server(model: Option<PathBuf>) -> (String, u16, Driver) {
    let mut args = htc_worker::server::ServeArgs::local(dist());
    args.model = model;
    server_with(args).await
}

/// [`server`] with these settings.
async fn server_with(args: htc_worker::server::ServeArgs) -> (String, u16, Driver) {
    server_on(args, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await
}

/// [`server_with`] on this listener.
async fn server_on(
    args: htc_worker::server::ServeArgs, listener: tokio::net::TcpListener,
) -> (String, u16, Driver) {
    let dist = dist();
    assert!(dist.join("index.html").is_file(), "no trunk build at {} (run trunk build)", dist.display());
    let app = htc_worker::server::App::new(args).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        htc_worker::server::serve_on(listener, app, std::future::pending()).await.unwrap()
    });
    // The server answers on loopback.
    let health = http::http_get(addr, "/healthz").await.trim().to_string();
    assert!(health.ends_with("ok"), "healthz: {health}");
    let port = free_port();
    let driver = Driver(
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
    (format!("http://{addr}/"), port, driver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium, chromedriver and a trunk build in dist/; run by scripts/test.sh"]
async fn a_person_asks_about_an_image_and_reads_the_answer() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (url, port, _driver) = server(Some(root.join("models/shapes-demo"))).await;
    let profile = tempdir();
    let client = open(port, &profile, false).await;
    client.set_window_size(1280, 1100).await.unwrap();
    client.goto(&url).await.unwrap();
    let status = wait_for(&client, "#status[data-connection='ready']").await;
    let status = status.text().await.unwrap();
    assert!(status.contains("model: shapes-demo"), "{status}");
    screenshot(&client, "empty").await;

    // A file that is not an image is refused in words, before anything is sent.
    let not_image = profile.join("notes.txt");
    std::fs::write(&not_image, "hello").unwrap();
    let input = client.find(Locator::Css("input[type='file'][aria-label='Image']")).await.unwrap();
    input.send_keys(not_image.to_str().unwrap()).await.unwrap();
    let err = wait_for(&client, "#image-error:not(:empty)").await.text().await.unwrap();
    assert!(err.contains("not an image"), "{err}");
    screenshot(&client, "error").await;

    // Asking before choosing an image says so.
    let q = client.find(Locator::Css("textarea[aria-label='Question']")).await.unwrap();
    q.send_keys("What color is the star?").await.unwrap();
    client.find(Locator::XPath("//button[normalize-space()='Ask']")).await.unwrap().click().await.unwrap();
    let err = wait_for(&client, "#ask-error:not(:empty)").await.text().await.unwrap();
    assert!(err.contains("choose an image"), "{err}");
    q.clear().await.unwrap();

    // The demo picture: the answer the model gives from the command line.
    let star = root.join("docs/demo-star.png");
    let input = client.find(Locator::Css("input[type='file'][aria-label='Image']")).await.unwrap();
    input.send_keys(star.to_str().unwrap()).await.unwrap();
    wait_for(&client, ".preview img").await;
    // The page's Web Worker loads the model's MGVQ encoder and encodes the picture itself.
    let codes = wait_for(&client, "#browser-codes[data-image]").await.text().await.unwrap();
    assert!(codes.contains("36×4 codes"), "the demo tokenizer's 6×6 latents, 4 groups: {codes}");
    eprintln!("in the page:{codes}");
    let answer = ask(&client, "What color is the star?").await;
    assert_eq!(answer.trim(), "red");
    // The worker took the page's codes as sent and did not run its own encoder.
    let by = client.find(Locator::Css("#tokenised-by")).await.unwrap().text().await.unwrap();
    assert!(by.contains("image tokenised by: browser, backend: cpu"), "{by}");
    assert!(!by.contains("differed"), "{by}");
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
    let m = http::http_get(addr, "/metrics").await;
    assert!(m.contains("htc_client_codes_used_total 1\n"), "the page's codes were used: {m}");
    assert!(m.contains("htc_mgvq_encodes_total 0\n"), "the worker's encoder did not run: {m}");

    // The attention view is drawn: the heatmap canvas holds the image with a red overlay,
    // and the bars show 4 anchors and the patches.
    wait_for(&client, "#attention[data-ready='true']").await;
    let bars = client.find_all(Locator::Css("#attention .bar")).await.unwrap();
    assert_eq!(bars.len(), 5, "4 anchors + the patches");
    // The heatmap: over the background of the cell `<voco>` attended most, the canvas is red;
    // over a cell it barely attended, it stays grey. Sampled 3 px inside each cell's corner,
    // where a ShapesVQA scene is always background (objects sit ≥ 6 px from a cell's edge).
    let canvas = wait_for(&client, "#heatmap[data-drawn='true']").await;
    let heat: Vec<f64> =
        canvas.attr("data-heat").await.unwrap().unwrap().split(',').map(|h| h.parse().unwrap()).collect();
    assert_eq!(heat.len(), 9, "the demo model's 3×3 patch grid");
    let corner = |i: usize| {
        let cell = 336 / 3;
        ((i % 3) * cell + 3, (i / 3) * cell + 3)
    };
    let redness = |x: usize, y: usize| {
        let client = client.clone();
        async move {
            let script = format!(
                "const d = document.querySelector('#heatmap').getContext('2d').getImageData({x}, {y}, 1, 1).data; \
                 return d[0] - d[1];"
            );
            client.execute(&script, vec![]).await.unwrap().as_i64().unwrap()
        }
    };
    let hottest = (0..9).max_by(|&a, &b| heat[a].total_cmp(&heat[b])).unwrap();
    let (x, y) = corner(hottest);
    assert!(redness(x, y).await > 80, "the hottest cell is drawn red (heat {heat:?})");
    if let Some(cold) = (0..9).find(|&i| heat[i] < 0.05) {
        let (x, y) = corner(cold);
        assert!(redness(x, y).await < 20, "a cold cell stays grey (heat {heat:?})");
    }

    screenshot(&client, "answer-with-heatmap").await;
    // The page built the served model's sequence layout (sent with the image, checked by the
    // worker) from the shared mask code.
    // (Read as textContent: it sits in the closed "About the model" section.)
    let layout = client
        .execute("return document.querySelector('#sequence-layout').textContent;", vec![])
        .await
        .unwrap();
    let layout = layout.as_str().unwrap_or_default().to_string();
    assert!(
        layout.contains("This model's sequence layout: BOS + 4 anchors + 9 patches + 1 <voco>"),
        "{layout}"
    );
    // The protocol version and the mask topology the page shows come from the shared crate.
    let shared = client
        .execute(
            "return [document.querySelector('#protocol-version').dataset.version, \
             document.querySelector('#attention-mask').dataset.topology];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(shared, serde_json::json!([htc_shared::protocol::PROTOCOL_VERSION.to_string(), "star"]));
    // axe-core finds nothing serious on the page with an answer and its attention view.
    let serious = axe_serious(&client).await;
    assert!(serious.is_empty(), "axe-core: {serious:#?}");

    // A follow-up comes from the worker's one-token cache, and the page says what it saved.
    let answer = ask(&client, "What shape is the red object?").await;
    assert_eq!(answer.trim(), "star");
    let saved = client.find(Locator::Css("#cache-saving")).await.unwrap().text().await.unwrap();
    assert!(saved.starts_with("image compressed once:") && saved.ends_with("ms saved"), "{saved}");
    let turns = client.find_all(Locator::Css(".turn")).await.unwrap();
    assert_eq!(turns.len(), 2);
    let second = turns[1].text().await.unwrap();
    assert!(second.contains("one-token cache"), "{second}");

    // Enter sends too; Regenerate asks the last question again.
    let q = client.find(Locator::Css("textarea[aria-label='Question']")).await.unwrap();
    q.send_keys("What color is the star?\u{E007}").await.unwrap();
    wait_for(&client, ".turn:nth-child(3) .turn-status").await;
    wait_for(&client, "#answer[data-state='done']").await;
    client
        .find(Locator::XPath("//button[normalize-space()='Regenerate']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&client, ".turn:nth-child(4) .turn-status").await;
    wait_for(&client, "#answer[data-state='done']").await;
    let last = client.find(Locator::Css("[aria-label='Answer']")).await.unwrap().text().await.unwrap();
    assert_eq!(last.trim(), "red");

    // Compare: the same question in mode `none` (all patches) and in the model's own mode,
    // both answers with their times.
    client.find(Locator::Css("#compare")).await.unwrap().click().await.unwrap();
    let before = client.find_all(Locator::Css(".turn")).await.unwrap().len();
    let own = ask(&client, "What color is the star?").await;
    assert_eq!(own.trim(), "red", "the live region shows the model's own mode");
    wait_for(&client, &format!(".turn:nth-child({}) .turn-status", before + 1)).await;
    let pair = client.find_all(Locator::Css(".turn.compare")).await.unwrap();
    assert_eq!(pair.len(), 2);
    let (none, htc) = (pair[0].text().await.unwrap(), pair[1].text().await.unwrap());
    eprintln!("compare:\n{none}\n---\n{htc}");
    assert!(none.contains("mode none: all patches"), "{none}");
    assert!(htc.contains("mode htc: the image through the compressed tokens"), "{htc}");
    for t in [&none, &htc] {
        assert!(t.contains("first token"), "each answer with its time: {t}");
    }
    screenshot(&client, "compare").await;
    client.find(Locator::Css("#compare")).await.unwrap().click().await.unwrap();

    // The mode setting (the demo model offers htc and none): asked in mode `none` alone, the
    // answer says so; then back to the model's own.
    let choose_mode = |value: &'static str| {
        let client = client.clone();
        async move {
            let js = format!(
                "document.querySelector('details.settings').open = true;
                 const s = [...document.querySelectorAll('details.settings label')]
                   .find(l => l.textContent.startsWith('Mode')).querySelector('select');
                 s.value = '{value}'; s.dispatchEvent(new Event('change'));
                 [...document.querySelectorAll('details.settings button')]
                   .find(b => b.textContent.trim() === 'Save settings').click();"
            );
            client.execute(&js, vec![]).await.unwrap();
            let saved = wait_for(&client, "#settings-message").await.text().await.unwrap();
            assert_eq!(saved, "saved");
        }
    };
    choose_mode("none").await;
    assert_eq!(ask(&client, "What color is the star?").await.trim(), "red");
    let last = client.find_all(Locator::Css(".turn")).await.unwrap().pop().unwrap().text().await.unwrap();
    assert!(last.contains("mode none: all patches"), "{last}");
    choose_mode("").await;
    assert_eq!(ask(&client, "What color is the star?").await.trim(), "red");
    let last = client.find_all(Locator::Css(".turn")).await.unwrap().pop().unwrap().text().await.unwrap();
    assert!(!last.contains("mode none"), "the model's own mode again: {last}");
    client.execute("document.querySelector('details.settings').open = false;", vec![]).await.unwrap();

    // A phone-width screen: nothing wider than the window.
    client.set_window_size(375, 800).await.unwrap();
    let overflow = client
        .execute("return document.documentElement.scrollWidth - window.innerWidth;", vec![])
        .await
        .unwrap();
    assert!(overflow.as_i64().unwrap() <= 0, "the page is {overflow} px wider than a 375-px window");
    screenshot(&client, "mobile-375px").await;

    client.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
}

/// Stop ends an answer mid-stream: the tokens that came stay, nothing more arrives, the turn
/// says "stopped", and the page can ask again. (The random default model stops only at the
/// token limit, which the settings raise, so the answer is still coming when Stop is pressed.)
/// The model: the demo model's shape and tokenizer with fresh random weights (`htc init`) and a
/// longer context, so the question is tokenised and greedy decoding runs on instead of to an
/// early end-of-answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium, chromedriver and a trunk build in dist/; run by scripts/test.sh"]
async fn stop_ends_an_answer_mid_stream() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let profile = tempdir();
    let model = profile.join("random-demo");
    // A context of 4,096 positions instead of 512: the answer runs for tens of seconds, so Stop
    // lands mid-stream however slowly a loaded machine takes the screenshot before it.
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("recipes/shapes-demo/model.json")).unwrap()).unwrap();
    config["text_config"]["max_position_embeddings"] = 4096.into();
    let config_path = profile.join("random-demo.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    htc_worker::cli::init::run(htc_worker::cli::init::InitArgs {
        llava: None,
        config: Some(config_path),
        tokenizer: Some(root.join("models/shapes-demo/tokenizer.json")),
        mgvq: Some(root.join("models/shapes-demo/tokenizer/model.safetensors")),
        init_std: 0.02,
        mgvq_config: "f16c32_g8".into(),
        out: model.clone(),
        mode: htc_worker::cli::Mode::Htc,
        n_discrete: 4,
        n_voco: 1,
        topology: htc_shared::mask::Topology::Star,
        discrete_hidden: 256,
        discrete_layers: 2,
        fusion: htc_worker::cli::init::FusionArg::Before,
        dtype: None,
        seed: 0,
    })
    .unwrap();
    let (url, port, _driver) = server(Some(model)).await;
    let client = open(port, &profile, false).await;
    client.set_window_size(1280, 1100).await.unwrap();
    client.goto(&url).await.unwrap();
    client
        .execute("localStorage.setItem('htc-vlm.settings', JSON.stringify({max_new_tokens: 4096}));", vec![])
        .await
        .unwrap();
    client.refresh().await.unwrap();
    wait_for(&client, "#status[data-connection='ready']").await;
    let input = client.find(Locator::Css("input[type='file'][aria-label='Image']")).await.unwrap();
    input.send_keys(root.join("docs/demo-star.png").to_str().unwrap()).await.unwrap();
    wait_for(&client, ".preview img").await;
    let q = client.find(Locator::Css("textarea[aria-label='Question']")).await.unwrap();
    q.send_keys("Describe the image.").await.unwrap();
    client.find(Locator::XPath("//button[normalize-space()='Ask']")).await.unwrap().click().await.unwrap();
    // Tokens are arriving.
    wait_for(&client, "#answer[data-state='streaming']:not(:empty)").await;
    screenshot(&client, "answering").await;
    // The streaming answer grows and can move the button under WebDriver's pointer between
    // its locating and its click; the element's own click() lands on it wherever it is.
    let click_stop =
        "[...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Stop').click()";
    client.execute(click_stop, vec![]).await.unwrap();
    wait_for(&client, "#answer[data-state='stopped']").await;
    let status = wait_for(&client, ".turn:nth-child(1) .turn-status").await.text().await.unwrap();
    assert!(status.contains("stopped"), "{status}");
    let answer = || {
        let client = client.clone();
        async move { client.find(Locator::Css("[aria-label='Answer']")).await.unwrap().text().await.unwrap() }
    };
    let kept = answer().await;
    assert!(!kept.trim().is_empty(), "the tokens that came before Stop are kept");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(answer().await, kept, "nothing arrives after Stop");
    // The page can ask again at once (Ask is enabled, the socket still open).
    let ask_button = client.find(Locator::XPath("//button[normalize-space()='Ask']")).await.unwrap();
    assert!(ask_button.is_enabled().await.unwrap(), "Ask is enabled after Stop");
    let q = client.find(Locator::Css("textarea[aria-label='Question']")).await.unwrap();
    q.send_keys("What color is the star?").await.unwrap();
    ask_button.click().await.unwrap();
    wait_for(&client, ".turn:nth-child(2) .turn-status").await;
    wait_for(&client, "#answer[data-state='streaming']:not(:empty)").await;
    client.execute(click_stop, vec![]).await.unwrap();
    wait_for(&client, "#answer[data-state='stopped']").await;
    wait_for(&client, "#status[data-connection='ready']").await;
    client.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
}

/// The encoder weights are fetched once: after a reload the page's encoder reads them from
/// the browser's cache and the worker serves no weight bytes (its own counter, `/metrics`).
/// With WebGPU granted, the encoder loads and runs on it, and the status says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium, chromedriver and a trunk build in dist/; run by scripts/test.sh"]
async fn a_reload_downloads_no_encoder_weights() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (url, port, _driver) = server(Some(root.join("models/shapes-demo"))).await;
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
    let served = || async move {
        let m = http::http_get(addr, "/metrics").await;
        let line = m.lines().find(|l| l.starts_with("htc_encoder_weight_bytes_total ")).expect("the counter");
        line.split(' ').nth(1).unwrap().parse::<u64>().unwrap()
    };
    let profile = tempdir();
    let client = open(port, &profile, true).await;
    client.goto(&url).await.unwrap();
    let first = wait_for(&client, "#encoder[data-encoder='ready']").await.text().await.unwrap();
    assert!(first.contains("downloaded") && first.contains("ready on webgpu"), "{first}");
    let bytes = served().await;
    assert!(bytes > 0, "the first visit downloads the weights");
    client.refresh().await.unwrap();
    let again = wait_for(&client, "#encoder[data-encoder='ready']").await.text().await.unwrap();
    assert!(again.contains("cached"), "{again}");
    eprintln!("first visit:{first}\nafter a reload:{again}");
    // The page's own marks on a warm cache, in ms from navigation: connected (interactive:
    // an image and a question can go, the worker tokenising meanwhile) and the encoder loaded
    // (its weights from the cache, its kernels compiled by one blank image).
    let at = |name: &'static str| {
        let client = client.clone();
        async move {
            let js = format!(
                "const m = performance.getEntriesByName('{name}'); return m.length ? m[0].startTime : -1;"
            );
            client.execute(&js, vec![]).await.unwrap().as_f64().unwrap()
        }
    };
    let (connected, encoder) = (at("htc-connected").await, at("htc-encoder-ready").await);
    assert!(connected > 0.0 && encoder > 0.0, "the page marks both milestones");
    eprintln!("warm-cache reload: interactive (connected) at {connected:.0} ms, encoder ready on WebGPU at {encoder:.0} ms");
    assert_eq!(served().await, bytes, "a reload downloads no weight bytes");
    let star = root.join("docs/demo-star.png");
    let input = client.find(Locator::Css("input[type='file'][aria-label='Image']")).await.unwrap();
    input.send_keys(star.to_str().unwrap()).await.unwrap();
    wait_for(&client, "#browser-codes[data-image]").await;
    assert_eq!(ask(&client, "What color is the star?").await.trim(), "red");
    let status = client.find(Locator::Css("#status")).await.unwrap().text().await.unwrap();
    assert!(status.contains("backend: webgpu") && !status.contains("backend: cpu"), "{status}");
    client.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
}

/// The keyboard alone: from the top of the page, Tab reaches the image input, the question
/// box and the settings; the question goes with Enter and its answer arrives; Tab reaches
/// Regenerate and Enter asks again. (Choosing the file is the one step done by WebDriver: a
/// keyboard opens the system's file dialog, which no WebDriver can drive.) The console shows
/// no error of the page's own all along, the favicon included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium, chromedriver and a trunk build in dist/; run by scripts/test.sh"]
async fn the_keyboard_alone_asks_and_the_console_stays_clean() {
    const TAB: &str = "\u{E004}";
    const ENTER: &str = "\u{E007}";
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (url, port, _driver) = server(Some(root.join("models/shapes-demo"))).await;
    let profile = tempdir();
    let client = open(port, &profile, true).await;
    client.goto(&url).await.unwrap();
    wait_for(&client, "#status[data-connection='ready']").await;
    wait_for(&client, "#encoder[data-encoder='ready']").await;
    // The console so far: nothing but a probe of the check itself.
    client.execute("console.error('htc-test-probe');", vec![]).await.unwrap();
    let errors = console_errors(&client).await;
    assert!(
        errors.len() == 1 && errors[0].contains("htc-test-probe"),
        "the console shows the probe alone: {errors:#?}"
    );
    // Tab from the top through the page, once round: what it reaches, in order.
    client.execute("document.activeElement.blur(); window.focus();", vec![]).await.unwrap();
    let mut reached = Vec::new();
    for _ in 0..40 {
        let now = press(&client, TAB).await;
        if reached.first() == Some(&now) {
            break;
        }
        reached.push(now);
    }
    eprintln!("Tab reaches, in order: {reached:?}");
    for name in ["Image", "Question", "Settings"] {
        assert!(reached.iter().any(|r| r.starts_with(name)), "Tab never reaches {name}: {reached:?}");
    }
    let input = client.find(Locator::Css("input[type='file'][aria-label='Image']")).await.unwrap();
    input.send_keys(root.join("docs/demo-star.png").to_str().unwrap()).await.unwrap();
    wait_for(&client, "#browser-codes[data-image]").await;
    // To the question box by Tab, the question typed, Enter.
    let mut on = String::new();
    for _ in 0..40 {
        on = press(&client, TAB).await;
        if on == "Question" {
            break;
        }
    }
    assert_eq!(on, "Question", "Tab reaches the question box");
    press(&client, &format!("What color is the star?{ENTER}")).await;
    wait_for(&client, ".turn:nth-child(1) .turn-status").await;
    wait_for(&client, "#answer[data-state='done']").await;
    let answer = client.find(Locator::Css("[aria-label='Answer']")).await.unwrap().text().await.unwrap();
    assert_eq!(answer.trim(), "red");
    // On to Regenerate by Tab, and Enter.
    for _ in 0..40 {
        on = press(&client, TAB).await;
        if on == "Regenerate" {
            break;
        }
    }
    assert_eq!(on, "Regenerate", "Tab reaches Regenerate");
    press(&client, ENTER).await;
    wait_for(&client, ".turn:nth-child(2) .turn-status").await;
    wait_for(&client, "#answer[data-state='done']").await;
    let answer = client.find(Locator::Css("[aria-label='Answer']")).await.unwrap().text().await.unwrap();
    assert_eq!(answer.trim(), "red");
    let errors = console_errors(&client).await;
    assert!(errors.is_empty(), "the console shows errors: {errors:#?}");
    client.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
}

/// The page's codes are the worker's: for fresh ShapesVQA test scenes (a seed no training
/// saw), the codes the page's Web Worker computes, on the CPU (burn-ndarray in wasm), on
/// WebGPU through the hand-written WGSL kernels (the default) and on WebGPU through burn-wgpu
/// (the settings' `burn-wgpu`), equal the ones the worker's own backend computes for the same PNG, position by
/// position. A difference must be a near tie between two codes, and at most 0.1% of codes
/// may differ; the test counts and prints them, with each backend's encoding times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium, chromedriver and a trunk build in dist/; run by scripts/test.sh"]
async fn the_pages_codes_equal_the_workers_on_fresh_test_scenes() {
    use htc_worker::backend::{self, Backend};
    use htc_worker::data::shapes::{rng_for, Scene};
    use htc_worker::formats::checkpoint::{AnyModel, Snapshot};

    const SCENES: usize = 40;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let demo = root.join("models/shapes-demo");
    let snap = Snapshot::<Backend>::open(&demo, &backend::device()).unwrap();
    let AnyModel::Htc { model, .. } = snap.model else { panic!("the demo model is an HTC model") };
    let mgvq = model.mgvq.as_ref().expect("the demo model has an MGVQ tokenizer");
    let (url, port, _driver) = server(Some(demo.clone())).await;
    for backend in ["cpu", "webgpu", "webgpu-burn"] {
        let profile = tempdir();
        let client = open(port, &profile, backend != "cpu").await;
        client.goto(&url).await.unwrap();
        if backend == "webgpu-burn" {
            let js = "localStorage.setItem('htc-vlm.settings', JSON.stringify({backend: 'burn-wgpu'}));";
            client.execute(js, vec![]).await.unwrap();
            client.refresh().await.unwrap();
        }
        let ready = wait_for(&client, "#encoder[data-encoder='ready']").await.text().await.unwrap();
        assert!(ready.contains(&format!("ready on {backend}")), "{ready}");
        let mut rng = rng_for(77, "test");
        let (mut differ, mut total, mut images_differing) = (0usize, 0usize, 0usize);
        let mut times = Vec::new();
        for i in 0..SCENES {
            let img = Scene::sample(&mut rng).render();
            let name = format!("scene-{i}.png");
            let path = profile.join(&name);
            img.save(&path).unwrap();
            let input = client.find(Locator::Css("input[type='file'][aria-label='Image']")).await.unwrap();
            input.send_keys(path.to_str().unwrap()).await.unwrap();
            let el = wait_for(&client, &format!("#browser-codes[data-file='{name}']")).await;
            times.push(el.attr("data-ms").await.unwrap().unwrap().parse::<f64>().unwrap());
            let page: Vec<u16> = el
                .attr("data-codes")
                .await
                .unwrap()
                .unwrap()
                .split(',')
                .map(|c| c.parse().unwrap())
                .collect();
            let png = std::fs::read(&path).unwrap();
            let decoded = htc_shared::preprocess::decode_image(&png, Default::default()).unwrap();
            let ours: Vec<u16> = mgvq.codes_of(&decoded).unwrap().into_iter().flatten().collect();
            assert_eq!(page.len(), ours.len(), "{name}: code count");
            let d = page.iter().zip(&ours).filter(|(a, b)| a != b).count();
            if d > 0 {
                // A difference must be a near tie: the worker's latent sits as close (within 1e-4 in
                // squared distance between unit vectors) to the page's code as to its own.
                let side = mgvq.config().image_size;
                let px = htc_shared::mgvq::preprocess(&decoded, side as u32);
                let x = burn::tensor::Tensor::<Backend, 4>::from_data(
                    burn::tensor::TensorData::new(px, [1, 3, side, side]),
                    &backend::device(),
                );
                let latent = mgvq.latent(x);
                let [_, c, h, w] = latent.dims();
                let lat = latent.into_data().to_vec::<f32>().unwrap();
                let book = mgvq.codebook_host().unwrap();
                let (g, gd, per) =
                    (mgvq.config().groups, mgvq.config().group_dim(), mgvq.config().codes_per_group());
                assert_eq!(c, g * gd);
                let unit = |v: Vec<f64>| {
                    let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
                    v.into_iter().map(|a| a / n).collect::<Vec<f64>>()
                };
                for (i, (a, b)) in page.iter().zip(&ours).enumerate().filter(|(_, (a, b))| a != b) {
                    let (pos, grp) = (i / g, i % g);
                    let z = unit((0..gd).map(|k| lat[(grp * gd + k) * h * w + pos] as f64).collect());
                    let dist = |code: u16| {
                        let row = grp * per + code as usize;
                        let e = unit(book[row * gd..(row + 1) * gd].iter().map(|&v| v as f64).collect());
                        z.iter().zip(&e).map(|(p, q)| (p - q) * (p - q)).sum::<f64>()
                    };
                    let gap = (dist(*a) - dist(*b)).abs();
                    assert!(
                    gap < 1e-4,
                    "{name}: position {pos} group {grp}: page {a}, worker {b}, not a near tie (gap {gap:e})"
                );
                    eprintln!("{backend}: {name}: near tie at position {pos} group {grp}: page {a}, worker {b}, squared-distance gap {gap:.2e}");
                }
            }
            differ += d;
            total += ours.len();
            images_differing += usize::from(d > 0);
        }
        eprintln!("{backend}: {SCENES} fresh test scenes: {differ} of {total} codes differ between the page and the worker ({images_differing} images), every one a near tie");
        times.sort_by(f64::total_cmp);
        eprintln!(
            "{backend}: {ready}; encoding a scene in the page (decode, preprocess, encoder, read-back): median {:.1} ms, min {:.1}, max {:.1}",
            times[SCENES / 2],
            times[0],
            times[SCENES - 1]
        );
        assert!(
            differ * 1000 <= total,
            "{backend}: the page's codes differ from the worker's at {differ} of {total} positions"
        );
        client.close().await.unwrap();
        let _ = std::fs::remove_dir_all(profile);
    }
}

/// A person who asks at once, before the page's encoder has its weights or its codes: the
/// question waits for the codes, and the worker compresses every image from the page's codes
/// without running its own encoder (its `/metrics` say so), near-ties or not, on fresh
/// ShapesVQA test scenes (the first asked while the encoder is still loading).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium, chromedriver and a trunk build in dist/; run by scripts/test.sh"]
async fn questions_asked_at_once_wait_for_the_pages_codes_and_the_worker_uses_them() {
    use htc_worker::data::shapes::{rng_for, Scene};
    const SCENES: usize = 6;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (url, port, _driver) = server(Some(root.join("models/shapes-demo"))).await;
    let profile = tempdir();
    let client = open(port, &profile, false).await;
    client.goto(&url).await.unwrap();
    wait_for(&client, "#status[data-connection='ready']").await;
    let mut rng = rng_for(91, "test");
    for i in 0..SCENES {
        let path = profile.join(format!("scene-{i}.png"));
        Scene::sample(&mut rng).render().save(&path).unwrap();
        let input = client.find(Locator::Css("input[type='file'][aria-label='Image']")).await.unwrap();
        input.send_keys(path.to_str().unwrap()).await.unwrap();
        // No wait for the codes: the question goes as soon as the page shows the new image
        // (the file input's change is handled asynchronously; before it, Ask would ask about
        // the previous image).
        let name = format!("scene-{i}.png");
        for _ in 0..600 {
            let info = client.find(Locator::Css("#image-info")).await.ok();
            if let Some(el) = info {
                if el.text().await.unwrap_or_default().starts_with(&name) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let answer = ask(&client, "How many objects are there?").await;
        assert!(!answer.trim().is_empty(), "scene {i}");
        let by = client.find(Locator::Css("#tokenised-by")).await.unwrap().text().await.unwrap();
        assert!(by.contains("image tokenised by: browser"), "scene {i}: {by}");
    }
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
    let m = http::http_get(addr, "/metrics").await;
    assert!(m.contains(&format!("htc_client_codes_used_total {SCENES}\n")), "{m}");
    assert!(m.contains("htc_mgvq_encodes_total 0\n"), "the worker's encoder never ran: {m}");
    client.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
}

/// The UI dev loop as docs/browser.md#running-it gives it: the worker on 8080 and `trunk serve`
/// on 8081 (its own build, into a scratch folder). The page on 8081 reaches the worker through
/// trunk's proxies: it connects, loads the in-page encoder (its manifest and weights come
/// through `/api/`), and the worker answers from the page's codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium, chromedriver, trunk and ports 8080 and 8081; run by scripts/test.sh"]
async fn the_dev_loop_under_trunk_serve_keeps_the_pages_encoder() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut args = htc_worker::server::ServeArgs::local(dist());
    args.model = Some(root.join("models/shapes-demo"));
    let listener =
        tokio::net::TcpListener::bind("127.0.0.1:8080").await.expect("port 8080 free for the worker");
    let (worker_url, port, _driver) = server_on(args, listener).await;
    let out = tempdir();
    let log = std::fs::File::create(out.join("trunk.log")).unwrap();
    let mut trunk = Command::new(std::env::var("TRUNK").unwrap_or_else(|_| "trunk".into()));
    trunk.current_dir(&root).args(["serve", "--no-autoreload", "--dist"]).arg(out.join("dist"));
    // The same toolchain as scripts/build-web.sh where rustup has no wasm32 std.
    if root.join(".cache/wasm-fallback").exists() {
        let target =
            std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| root.join("target").display().to_string());
        trunk
            .env("CARGO_TARGET_DIR", format!("{target}/wasm-fallback"))
            .env("PATH", format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()))
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_UNSTABLE_BUILD_STD", "std,panic_abort");
    }
    let _trunk = Driver(trunk.stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("trunk on PATH"));
    let dev: std::net::SocketAddr = "127.0.0.1:8081".parse().unwrap();
    let mut up = false;
    for _ in 0..600 {
        if std::net::TcpStream::connect(dev).is_ok() && http::http_get(dev, "/").await.contains("<html") {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let trunk_log = || std::fs::read_to_string(out.join("trunk.log")).unwrap_or_default();
    assert!(up, "trunk serve did not come up on 8081 in 5 minutes:\n{}", trunk_log());
    let profile = tempdir();
    let client = open(port, &profile, false).await;
    client.goto("http://127.0.0.1:8081/").await.unwrap();
    let status = wait_for(&client, "#status[data-connection='ready']").await.text().await.unwrap();
    assert!(status.contains("model: shapes-demo"), "{status}");
    let ready = wait_for(&client, "#encoder[data-encoder='ready']").await.text().await.unwrap();
    assert!(ready.contains("ready on cpu"), "{ready}");
    let input = client.find(Locator::Css("input[type='file'][aria-label='Image']")).await.unwrap();
    input.send_keys(root.join("docs/demo-star.png").to_str().unwrap()).await.unwrap();
    wait_for(&client, "#browser-codes[data-image]").await;
    let answer = ask(&client, "What color is the star?").await;
    assert_eq!(answer.trim(), "red");
    let by = client.find(Locator::Css("#tokenised-by")).await.unwrap().text().await.unwrap();
    assert!(by.contains("image tokenised by: browser, backend: cpu"), "{by}");
    let addr: std::net::SocketAddr =
        worker_url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
    let m = http::http_get(addr, "/metrics").await;
    assert!(m.contains("htc_mgvq_encodes_total 0\n"), "{m}");
    client.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
    let _ = std::fs::remove_dir_all(out);
}

/// Serves one HTML page at `/` on a loopback port of its own: a host site for the widget.
async fn host_site(listener: tokio::net::TcpListener, html: String) {
    let app =
        axum::Router::new().route("/", axum::routing::get(move || async move { axum::response::Html(html) }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
}

/// A host page on another origin that embeds the widget with one module script and listens
/// for its `htc-answer` events, under the strict Content-Security-Policy that
/// docs/widget.md#the-host-pages-content-security-policy documents (`web/examples/host.html`).
fn host_page(worker: std::net::SocketAddr) -> String {
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>A host site</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'self'; script-src 'self' 'unsafe-inline' 'wasm-unsafe-eval' http://{worker}; worker-src blob:; connect-src http://{worker} ws://{worker}; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'">
<script type="module" src="http://{worker}/widget.js"></script></head>
<body><h1>A host site</h1><ol id="answers"></ol>
<htc-vlm-widget worker="ws://{worker}/ws" backend="auto"></htc-vlm-widget>
<script>
document.addEventListener('htc-answer', (e) => {{
  const li = document.createElement('li');
  li.textContent = e.detail.question + ' -> ' + e.detail.answer;
  document.getElementById('answers').appendChild(li);
}});
</script></body></html>"#
    )
}

/// The element `css` inside the widget's shadow root, once it is there.
async fn in_widget(client: &fantoccini::Client, css: &str) -> fantoccini::elements::Element {
    let script = format!(
        "const w = document.querySelector('htc-vlm-widget'); return w && w.shadowRoot ? w.shadowRoot.querySelector({css:?}) : null;"
    );
    for _ in 0..600 {
        let v = client.execute(&script, vec![]).await.unwrap();
        if let Some(id) = v.as_object().and_then(|o| o.values().next()).and_then(|v| v.as_str()) {
            return fantoccini::elements::Element::from_element_id(client.clone(), id.to_string().into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = client
        .execute(
            "const w = document.querySelector('htc-vlm-widget'); const s = w && w.shadowRoot && w.shadowRoot.querySelector('#status'); return s ? s.textContent : 'no status';",
            vec![],
        )
        .await
        .unwrap();
    panic!("the widget never showed `{css}`; its status: {status}");
}

/// The widget on a host page from another origin (a second loopback port): it renders in its
/// shadow root, runs the encoder, answers, and its `htc-answer` events reach the host page; a
/// host origin that is not on the worker's `--allow-origin` list gets a visible error instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium, chromedriver and a trunk build in dist/; run by scripts/test.sh"]
async fn the_widget_works_on_another_site_and_the_allowlist_holds() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let allowed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (allowed_addr, refused_addr) = (allowed.local_addr().unwrap(), refused.local_addr().unwrap());
    let mut args = htc_worker::server::ServeArgs::local(dist());
    args.model = Some(root.join("models/shapes-demo"));
    args.allow_origins = vec![format!("http://{allowed_addr}")];
    let (url, port, _driver) = server_with(args).await;
    let worker: std::net::SocketAddr =
        url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
    host_site(allowed, host_page(worker)).await;
    host_site(refused, host_page(worker)).await;

    let profile = tempdir();
    let client = open(port, &profile, false).await;
    client.set_window_size(1280, 1100).await.unwrap();
    client.goto(&format!("http://{allowed_addr}/")).await.unwrap();
    in_widget(&client, "#status[data-connection='ready']").await;
    let input = in_widget(&client, "input[type='file']").await;
    input.send_keys(root.join("docs/demo-star.png").to_str().unwrap()).await.unwrap();
    in_widget(&client, "#browser-codes[data-image]").await;
    in_widget(&client, "textarea").await.send_keys("What color is the star?\u{E007}").await.unwrap();
    let answer = in_widget(&client, "#answer[data-state='done']").await.text().await.unwrap();
    assert_eq!(answer.trim(), "red");
    let by = in_widget(&client, "#tokenised-by").await.text().await.unwrap();
    assert!(by.contains("browser, backend: cpu"), "{by}");
    let event = wait_for(&client, "#answers li").await.text().await.unwrap();
    assert_eq!(event, "What color is the star? -> red", "the htc-answer event reached the host page");
    screenshot(&client, "widget").await;
    // Removing the element unmounts the app: its shadow root empties of the app.
    let left = client
        .execute(
            "const w = document.querySelector('htc-vlm-widget'); w.remove(); return w.shadowRoot.querySelectorAll('#status').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(left.as_i64(), Some(0), "unmounted");

    client.goto(&format!("http://{refused_addr}/")).await.unwrap();
    let status = in_widget(&client, "#status[data-connection='retrying']").await.text().await.unwrap();
    assert!(status.contains("does not allow this site"), "{status}");
    client.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
}

/// A newcomer's first minute: before any question the page says what the model knows and
/// offers its sample scenes; choosing one takes its picture as a chosen file would be (the
/// preview, the page's own MGVQ codes), a suggested question fills the question box, and
/// asking it streams the answer `htc ask` gives for that picture and question.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium, chromedriver and a trunk build in dist/; run by scripts/test.sh"]
async fn a_newcomer_tries_a_sample_scene_and_a_suggested_question() {
    use htc_worker::runtime::ask::{ask as ask_cli, AskRequest, ImageSource, PromptInput};
    use htc_worker::runtime::sampling::Sampling;

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let demo = root.join("models/shapes-demo");
    let (url, port, _driver) = server(Some(demo.clone())).await;
    let profile = tempdir();
    let client = open(port, &profile, false).await;
    client.set_window_size(1280, 1100).await.unwrap();
    client.goto(&url).await.unwrap();
    wait_for(&client, "#status[data-connection='ready']").await;

    // What the model knows, in its own words, before the first question.
    let about = wait_for(&client, "#model-about").await.text().await.unwrap();
    assert!(about.contains("ShapesVQA") && about.contains("86 words"), "{about}");
    let scenes = client.find_all(Locator::Css("button.sample-scene")).await.unwrap();
    assert_eq!(scenes.len(), 4, "the demo's about.json names 4 samples");

    // Choosing a sample selects its picture as a chosen file would.
    let first = client.find(Locator::Css("button[aria-label='Sample scene 1']")).await.unwrap();
    first.click().await.unwrap();
    wait_for(&client, "button[aria-label='Sample scene 1'][aria-pressed='true']").await;
    let info = wait_for(&client, "#image-info").await.text().await.unwrap();
    assert!(info.contains("sample-1.png") && info.contains("336×336"), "{info}");
    let codes = wait_for(&client, "#browser-codes[data-image]").await.text().await.unwrap();
    assert!(codes.contains("36×4 codes"), "the page encoded the sample itself: {codes}");

    // A suggested question fills the question box; asking it streams the answer.
    let suggested =
        client.find(Locator::Css("li.sample[data-sample='0'] button.suggested-question")).await.unwrap();
    let question = suggested.text().await.unwrap();
    suggested.click().await.unwrap();
    let boxed = client
        .find(Locator::Css("textarea[aria-label='Question']"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap_or_default();
    assert_eq!(boxed, question, "the suggested question fills the question box");
    client.find(Locator::XPath("//button[normalize-space()='Ask']")).await.unwrap().click().await.unwrap();
    wait_for(&client, ".turn:nth-child(1) .turn-status").await;
    let answer = wait_for(&client, "#answer[data-state='done']").await.text().await.unwrap();
    let turn = client.find(Locator::Css(".turn:nth-child(1) .question")).await.unwrap().text().await.unwrap();
    assert_eq!(turn, question);

    // The answer `htc ask` gives for the served picture and the question.
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
    let (_, png) = http::http_get_bytes(addr, "/api/samples/0.png").await;
    let path = profile.join("sample-1.png");
    std::fs::write(&path, png).unwrap();
    let req = AskRequest {
        image: Some(ImageSource::File(path)),
        prompt: PromptInput::Text(question.clone()),
        sampling: Sampling::greedy(64),
        no_template: false,
        dump_logits: None,
        attention: None,
    };
    // On a thread of its own: `ask` waits for the engine's replies, which a runtime's thread
    // may not do.
    let model = demo.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        ask_cli(&model, &req, &mut out).map(|_| out)
    })
    .await
    .unwrap()
    .unwrap();
    let want = String::from_utf8(out).unwrap();
    assert!(!want.trim().is_empty());
    assert_eq!(answer.trim(), want.trim(), "{question}");
    eprintln!("sample scene 1: {question} -> {}", answer.trim());
    screenshot(&client, "sample-scene").await;
    assert!(console_errors(&client).await.is_empty(), "console errors");
    client.close().await.unwrap();
    let _ = std::fs::remove_dir_all(profile);
}
