//! The in-browser model runner: the model's MGVQ encoder and grouped quantiser, run in a Web
//! Worker so the page stays responsive while it encodes, as the page asks
//! ([`EncoderBackend`]): on WebGPU through the hand-written WGSL kernels of `shaders/`
//! (`htc_shared::mgvq_wgsl`, the default: faster per image than burn-wgpu, and ready far
//! sooner, since its few kernels compile quickly; see docs/performance.md#browser), on
//! WebGPU through burn-wgpu (the `htc_shared::mgvq` code the worker runs, compiled to wasm;
//! the settings' `burn-wgpu`), or on the CPU (the same code on burn-ndarray in wasm).
//!
//! - [`Request`] / [`Reply`]: the messages between the page and the Web Worker;
//! - [`Runner`] (page side): starts the Web Worker (the `encoder` binary's `encoder.js` and
//!   `encoder_bg.wasm`, from the page's origin or the widget's worker), asks it to load the worker's encoder and to encode images, and hands every reply
//!   to one callback;
//! - [`worker_main`] (Web Worker side): fetches `/api/encoder` and the content-addressed
//!   weights through the Cache API (a reload downloads no weight bytes), checks their
//!   SHA-256, loads them and answers each image with its codes.
//!
//! A message is a two-element array: the JSON text of a [`Request`] or [`Reply`], and the
//! bytes that go with it (the image to encode; the codes as the protocol's little-endian
//! `u16`s, `[h*w][G]`) or `undefined`.

use serde::{Deserialize, Serialize};

/// Page → Web Worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Load the encoder the manifest at `manifest_url` describes (`/api/encoder`, with the
    /// token in its query if the worker wants one), on `backend`.
    Load {
        manifest_url: String,
        #[serde(default)]
        backend: EncoderBackend,
    },
    /// Destroy the WebGPU device, as a GPU reset or a driver crash would: the Web Worker
    /// reports the loss like any other, and the page falls back to the CPU. For trying the
    /// fallback (the page answers the `htc-lose-device` window event with it).
    LoseDevice,
    /// Encode the image whose bytes come with this message.
    Encode { id: u32 },
}

/// Web Worker → page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// The Web Worker runs and takes requests.
    Started,
    /// Weight bytes received so far (`from_cache`: read from the browser's cache).
    Progress { loaded: u64, total: u64, from_cache: bool },
    /// The encoder is ready: `downloaded` weight bytes came over the network (0 when the
    /// cache had them), in `ms` milliseconds from the request to a loaded model, of which
    /// `warmup_ms` encoded a blank image once (on WebGPU: compiling the kernels).
    Loaded {
        sha256: String,
        bytes: u64,
        downloaded: u64,
        ms: f64,
        #[serde(default)]
        warmup_ms: f64,
        backend: EncoderBackend,
    },
    /// The codes of image `id` (they come with the message), `positions × groups`.
    Codes { id: u32, positions: usize, groups: usize, ms: f64, backend: EncoderBackend },
    /// A request failed; `id` names the image when it was an encoding. `device` is set when
    /// the compute device failed (WebGPU refused, lost or erred), not the input.
    Failed {
        id: Option<u32>,
        message: String,
        #[serde(default)]
        device: bool,
    },
}

/// Where the Web Worker's encoder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderBackend {
    /// burn-ndarray compiled to wasm.
    #[default]
    Cpu,
    /// The browser's WebGPU through the hand-written WGSL kernels (`htc_shared::mgvq_wgsl`).
    Webgpu,
    /// The browser's WebGPU through burn-wgpu's kernels (the `htc_shared::mgvq` module).
    #[serde(rename = "burn-wgpu")]
    BurnWgpu,
}

impl EncoderBackend {
    /// `cpu` or `webgpu`, as the status prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Webgpu => "webgpu",
            Self::BurnWgpu => "webgpu-burn",
        }
    }

    /// Whether it runs on WebGPU (a device failure falls back to the CPU).
    pub fn on_webgpu(self) -> bool {
        matches!(self, Self::Webgpu | Self::BurnWgpu)
    }
}

/// The largest encoder the page downloads by itself: the paper's full MGVQ encoder is about
/// 348 MB in f32, too much to fetch unasked; the worker tokenises for such models.
pub const MAX_DOWNLOAD_BYTES: u64 = 64 << 20;

/// Why the page does not download weights of `bytes` bytes by itself, if it does not.
pub fn too_large(bytes: u64) -> Option<String> {
    (bytes > MAX_DOWNLOAD_BYTES).then(|| {
        format!(
            "the encoder's weights are {:.0} MB, over the {} MB the page downloads by itself",
            bytes as f64 / 1e6,
            MAX_DOWNLOAD_BYTES >> 20
        )
    })
}

/// The worker's `/api/encoder` URL for its WebSocket URL (`ws[s]://host/…/ws?query` →
/// `http[s]://host/…/api/encoder?query`, the token kept).
pub fn manifest_url(socket_url: &str) -> Option<String> {
    let card = crate::state::model_card_url(socket_url)?;
    let (path, query) =
        card.split_once('?').map(|(p, q)| (p, format!("?{q}"))).unwrap_or((&card, String::new()));
    Some(format!("{}/api/encoder{query}", path.strip_suffix("/api/model")?))
}

/// The URL of the weights (`path` from the manifest) next to `manifest_url`, and the cache key
/// they are kept under: the same URL without its query, so a token change keeps the cache.
pub fn weights_urls(manifest_url: &str, path: &str) -> Option<(String, String)> {
    let (base, query) = match manifest_url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (manifest_url, String::new()),
    };
    let root = base.strip_suffix("/api/encoder")?;
    let key = format!("{root}{path}");
    Some((format!("{key}{query}"), key))
}

/// The codes as the protocol's codes frame payload: little-endian `u16`, `[h*w][G]`.
pub fn codes_bytes(codes: &[Vec<u16>]) -> Vec<u8> {
    codes.iter().flatten().flat_map(|c| c.to_le_bytes()).collect()
}

pub use htc_shared::protocol::sha256_hex;

pub use page::Runner;
#[cfg(target_arch = "wasm32")]
pub use worker::worker_main;

mod page {
    use std::cell::RefCell;
    use std::rc::Rc;

    use js_sys::{Array, Reflect, Uint8Array};
    use wasm_bindgen::closure::Closure;
    use wasm_bindgen::{JsCast, JsValue};
    use web_sys::{Blob, BlobPropertyBag, MessageEvent, Url, Worker, WorkerOptions, WorkerType};

    use super::{EncoderBackend, Reply, Request};
    use crate::client::js_text;

    pub(super) fn pack(json: String, bytes: Option<&[u8]>) -> Array {
        let a = Array::new();
        a.push(&JsValue::from_str(&json));
        a.push(&bytes.map(|b| JsValue::from(Uint8Array::from(b))).unwrap_or(JsValue::UNDEFINED));
        a
    }

    pub(super) fn unpack(data: JsValue) -> Result<(String, Option<Vec<u8>>), String> {
        let a: Array = data.dyn_into().map_err(|_| "a runner message is not an array".to_string())?;
        let json = a.get(0).as_string().ok_or("a runner message has no JSON text")?;
        let bytes = a.get(1).dyn_into::<Uint8Array>().ok().map(|u| u.to_vec());
        Ok((json, bytes))
    }

    /// The page's handle on the Web Worker. Requests wait until the Web Worker says it has
    /// started: before its wasm is instantiated it has no message handler, and a message
    /// dispatched then would be lost.
    pub struct Runner {
        worker: Worker,
        backend: EncoderBackend,
        /// `None` once started; until then, the requests waiting.
        waiting: Rc<RefCell<Option<Vec<Array>>>>,
        _on_message: Closure<dyn FnMut(MessageEvent)>,
        _on_error: Closure<dyn FnMut(web_sys::Event)>,
    }

    impl Runner {
        /// Starts the Web Worker from the encoder's files under `assets` (a URL ending in `/`,
        /// maybe on another origin: the widget's); every reply (with its bytes) goes to
        /// `on_reply`. The Web Worker is a `blob:` script that imports them, since a page may
        /// only start Web Workers from its own origin.
        pub fn start(
            assets: &str, backend: EncoderBackend, on_reply: impl Fn(Reply, Option<Vec<u8>>) + 'static,
        ) -> Result<Self, String> {
            let script = format!(
                "importScripts({:?}); wasm_bindgen({{ module_or_path: {:?} }});",
                format!("{assets}encoder.js"),
                format!("{assets}encoder_bg.wasm")
            );
            let fail = |e: JsValue| format!("cannot start the encoder's Web Worker: {}", js_text(&e));
            let bag = BlobPropertyBag::new();
            bag.set_type("text/javascript");
            let blob =
                Blob::new_with_str_sequence_and_options(&Array::of1(&script.into()), &bag).map_err(fail)?;
            let url = Url::create_object_url_with_blob(&blob).map_err(fail)?;
            let opts = WorkerOptions::new();
            opts.set_type(WorkerType::Classic);
            // The URL stays valid for the page's life (a few bytes): a Web Worker may fetch its
            // script after construction.
            let worker = Worker::new_with_options(&url, &opts).map_err(fail)?;
            let on_reply = Rc::new(on_reply);
            let r1 = on_reply.clone();
            let waiting: Rc<RefCell<Option<Vec<Array>>>> = Rc::new(RefCell::new(Some(Vec::new())));
            let (w1, worker1) = (waiting.clone(), worker.clone());
            let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
                match unpack(ev.data()).and_then(|(json, bytes)| {
                    serde_json::from_str::<Reply>(&json).map(|r| (r, bytes)).map_err(|e| e.to_string())
                }) {
                    Ok((Reply::Started, _)) => {
                        for m in w1.borrow_mut().take().unwrap_or_default() {
                            let _ = worker1.post_message(&m);
                        }
                    }
                    Ok((reply, bytes)) => r1(reply, bytes),
                    Err(why) => r1(
                        Reply::Failed {
                            id: None,
                            message: format!("unreadable runner reply: {why}"),
                            device: false,
                        },
                        None,
                    ),
                }
            });
            let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |ev: web_sys::Event| {
                let msg = Reflect::get(&ev, &"message".into()).ok().and_then(|m| m.as_string());
                // A Web Worker that dies on WebGPU (a panic aborts it) counts as the device's
                // failure, so the page falls back to the CPU.
                on_reply(
                    Reply::Failed {
                        id: None,
                        message: format!(
                            "the encoder's Web Worker failed: {}",
                            msg.unwrap_or_else(|| "no message".into())
                        ),
                        device: backend.on_webgpu(),
                    },
                    None,
                )
            });
            worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
            worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
            Ok(Self { worker, backend, waiting, _on_message: on_message, _on_error: on_error })
        }

        /// The backend this Web Worker's encoder runs on.
        pub fn backend(&self) -> EncoderBackend {
            self.backend
        }

        pub fn send(&self, req: &Request, bytes: Option<&[u8]>) -> Result<(), String> {
            let json = serde_json::to_string(req).expect("requests serialise");
            let message = pack(json, bytes);
            if let Some(queue) = self.waiting.borrow_mut().as_mut() {
                queue.push(message);
                return Ok(());
            }
            self.worker.post_message(&message).map_err(|e| js_text(&e))
        }
    }

    impl Drop for Runner {
        fn drop(&mut self) {
            self.worker.set_onmessage(None);
            self.worker.set_onerror(None);
            self.worker.terminate();
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod worker {
    use std::cell::RefCell;
    use std::rc::Rc;

    #[cfg(feature = "burn-wgpu")]
    use burn::backend::wgpu::{graphics::WebGpu, init_setup_async, RuntimeOptions, Wgpu, WgpuDevice};
    use burn::backend::NdArray;
    use htc_shared::loader::{Loader, SafetensorsBytes};
    #[cfg(feature = "burn-wgpu")]
    use htc_shared::mgvq::codes_from_data;
    use htc_shared::mgvq::{preprocess, Mgvq};
    use htc_shared::mgvq_wgsl::{wgpu, WgslMgvq};
    use htc_shared::preprocess::{decode_image, DecodeLimits};
    use htc_shared::protocol::EncoderManifest;
    use image::RgbImage;
    use js_sys::{Reflect, Uint8Array};
    use wasm_bindgen::closure::Closure;
    use wasm_bindgen::JsCast;
    use wasm_bindgen_futures::JsFuture;
    use web_sys::{DedicatedWorkerGlobalScope, MessageEvent};

    use super::page::{pack, unpack};
    use super::{codes_bytes, sha256_hex, weights_urls, EncoderBackend, Reply, Request};
    use crate::client::js_text;

    type Cpu = NdArray<f32>;
    #[cfg(feature = "burn-wgpu")]
    type Gpu = Wgpu<f32, i32>;

    fn now_ms() -> f64 {
        js_sys::Reflect::get(&js_sys::global(), &"performance".into())
            .ok()
            .and_then(|p| p.dyn_into::<web_sys::Performance>().ok())
            .map(|p| p.now())
            .unwrap_or(0.0)
    }

    /// The same `Mgvq` module on either burn backend, or the hand-written WGSL kernels.
    enum Encoder {
        Cpu(Box<Mgvq<Cpu>>),
        #[cfg(feature = "burn-wgpu")]
        Gpu(Box<Mgvq<Gpu>>),
        Wgsl(Box<WgslMgvq>),
    }

    impl Encoder {
        fn backend(&self) -> EncoderBackend {
            match self {
                Self::Cpu(_) => EncoderBackend::Cpu,
                #[cfg(feature = "burn-wgpu")]
                Self::Gpu(_) => EncoderBackend::BurnWgpu,
                Self::Wgsl(_) => EncoderBackend::Webgpu,
            }
        }

        fn image_size(&self) -> usize {
            match self {
                Self::Cpu(m) => m.config().image_size,
                #[cfg(feature = "burn-wgpu")]
                Self::Gpu(m) => m.config().image_size,
                Self::Wgsl(m) => m.config().image_size,
            }
        }

        /// The codes of `img`; an `Err` says whether the device failed.
        async fn codes(&self, img: &RgbImage) -> Result<Vec<Vec<u16>>, (String, bool)> {
            match self {
                Self::Cpu(m) => m.codes_of(img).map_err(|e| (e.to_string(), false)),
                #[cfg(feature = "burn-wgpu")]
                Self::Gpu(m) => {
                    if LOST.get() {
                        return Err(("the WebGPU device was lost".into(), true));
                    }
                    // WebGPU reads results back asynchronously only.
                    let data = m
                        .code_tensor(img)
                        .into_data_async()
                        .await
                        .map_err(|e| (format!("WebGPU could not run the encoder: {e:?}"), true))?;
                    codes_from_data(data).map_err(|e| (e.to_string(), true))
                }
                Self::Wgsl(m) => {
                    if LOST.get() {
                        return Err(("the WebGPU device was lost".into(), true));
                    }
                    let px = preprocess(img, m.config().image_size as u32);
                    let (codes, _) = m.encode(&px, false).await.map_err(|e| (e.to_string(), true))?;
                    Ok(codes)
                }
            }
        }
    }

    struct Loaded {
        sha256: String,
        encoder: Encoder,
    }

    /// burn's handle on the WebGPU device, and a way to destroy the device (to try the
    /// fallback).
    #[cfg(feature = "burn-wgpu")]
    #[derive(Clone)]
    struct GpuDevice {
        device: WgpuDevice,
        destroy: Rc<dyn Fn()>,
    }

    thread_local! {
        static MODEL: RefCell<Option<Rc<Loaded>>> = const { RefCell::new(None) };
        /// burn-wgpu's WebGPU device, once set up (one per Web Worker).
        #[cfg(feature = "burn-wgpu")]
        static GPU: RefCell<Option<GpuDevice>> = const { RefCell::new(None) };
        /// The WGSL encoder's own WebGPU device, once set up.
        static WGSL_DEVICE: RefCell<Option<(wgpu::Device, wgpu::Queue)>> = const { RefCell::new(None) };
        /// Set when the WebGPU device is lost: every later encoding on it fails.
        static LOST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    fn scope() -> DedicatedWorkerGlobalScope {
        js_sys::global().unchecked_into()
    }

    fn post(reply: &Reply, bytes: Option<&[u8]>) {
        let json = serde_json::to_string(reply).expect("replies serialise");
        let _ = scope().post_message(&pack(json, bytes));
    }

    fn failed(id: Option<u32>, message: String, device: bool) {
        post(&Reply::Failed { id, message, device }, None)
    }

    /// The Web Worker's entry point (the `encoder` binary's `main`).
    pub fn worker_main() {
        console_error_panic_hook::set_once();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
            wasm_bindgen_futures::spawn_local(async move {
                let (json, bytes) = match unpack(ev.data()) {
                    Ok(x) => x,
                    Err(message) => return failed(None, message, false),
                };
                match serde_json::from_str::<Request>(&json) {
                    Ok(Request::Load { manifest_url, backend }) => {
                        if let Err((message, device)) = load(&manifest_url, backend).await {
                            failed(None, message, device);
                        }
                    }
                    Ok(Request::Encode { id }) => match encode(bytes.unwrap_or_default()).await {
                        Ok((codes, ms, backend)) => {
                            let (positions, groups) = (codes.len(), codes.first().map_or(0, Vec::len));
                            let reply = Reply::Codes { id, positions, groups, ms, backend };
                            post(&reply, Some(&codes_bytes(&codes)));
                        }
                        Err((message, device)) => failed(Some(id), message, device),
                    },
                    Ok(Request::LoseDevice) => {
                        #[cfg(feature = "burn-wgpu")]
                        if let Some(destroy) = GPU.with_borrow(|g| g.as_ref().map(|g| g.destroy.clone())) {
                            return destroy();
                        }
                        match WGSL_DEVICE.with_borrow(|d| d.as_ref().map(|d| d.0.clone())) {
                            Some(device) => device.destroy(),
                            None => failed(None, "no WebGPU device to lose".into(), false),
                        }
                    }
                    Err(e) => failed(None, format!("unreadable request: {e}"), false),
                }
            });
        });
        scope().set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        on_message.forget();
        post(&Reply::Started, None);
    }

    /// Checks that the Web Worker has `navigator.gpu` and is granted an adapter (burn's setup
    /// panics without them).
    async fn check_adapter() -> Result<(), String> {
        let nav = Reflect::get(&js_sys::global(), &"navigator".into()).map_err(|e| js_text(&e))?;
        let gpu = Reflect::get(&nav, &"gpu".into()).unwrap_or(wasm_bindgen::JsValue::UNDEFINED);
        if gpu.is_undefined() || gpu.is_null() {
            return Err("navigator.gpu is not available in the Web Worker".into());
        }
        let request: js_sys::Function = Reflect::get(&gpu, &"requestAdapter".into())
            .ok()
            .and_then(|f| f.dyn_into().ok())
            .ok_or("navigator.gpu.requestAdapter is missing")?;
        let promise = request.call0(&gpu).map_err(|e| js_text(&e))?;
        let adapter = JsFuture::from(js_sys::Promise::from(promise)).await.map_err(|e| js_text(&e))?;
        if adapter.is_null() || adapter.is_undefined() {
            return Err("no WebGPU adapter was granted to the Web Worker".into());
        }
        Ok(())
    }

    /// burn-wgpu's WebGPU device, set up on first use; a lost device is reported.
    #[cfg(feature = "burn-wgpu")]
    async fn gpu() -> Result<WgpuDevice, String> {
        if let Some(gpu) = GPU.with_borrow(|g| g.clone()) {
            return Ok(gpu.device);
        }
        check_adapter().await?;
        let device = WgpuDevice::DefaultDevice;
        let setup = init_setup_async::<WebGpu>(&device, RuntimeOptions::default()).await;
        setup.device.set_device_lost_callback(|reason, message| {
            LOST.set(true);
            failed(None, format!("the WebGPU device was lost ({reason:?}): {message}"), true);
        });
        let handle = setup.device.clone();
        let destroy: Rc<dyn Fn()> = Rc::new(move || handle.destroy());
        GPU.with_borrow_mut(|g| *g = Some(GpuDevice { device: device.clone(), destroy }));
        Ok(device)
    }

    /// The WGSL encoder's WebGPU device, set up on first use; a lost device is reported.
    async fn wgsl_device() -> Result<(wgpu::Device, wgpu::Queue), String> {
        if let Some(d) = WGSL_DEVICE.with_borrow(|d| d.clone()) {
            return Ok(d);
        }
        check_adapter().await?;
        let (device, queue) = htc_shared::mgvq_wgsl::request_device().await.map_err(|e| e.to_string())?;
        device.set_device_lost_callback(|reason, message| {
            LOST.set(true);
            failed(None, format!("the WebGPU device was lost ({reason:?}): {message}"), true);
        });
        WGSL_DEVICE.with_borrow_mut(|d| *d = Some((device.clone(), queue.clone())));
        Ok((device, queue))
    }

    async fn fetch(url: &str) -> Result<web_sys::Response, String> {
        let resp = JsFuture::from(scope().fetch_with_str(url))
            .await
            .map_err(|e| format!("{url}: {}", js_text(&e)))?;
        let resp: web_sys::Response = resp.dyn_into().map_err(|_| format!("{url}: not a response"))?;
        if !resp.ok() {
            let text = match resp.text() {
                Ok(p) => JsFuture::from(p).await.ok().and_then(|t| t.as_string()).unwrap_or_default(),
                Err(_) => String::new(),
            };
            return Err(format!("{url}: HTTP {} {}", resp.status(), text.trim()));
        }
        Ok(resp)
    }

    /// Reads a response body chunk by chunk, posting progress.
    async fn read_body(resp: &web_sys::Response, total: u64, from_cache: bool) -> Result<Vec<u8>, String> {
        let body = resp.body().ok_or("the weights response has no body")?;
        let reader: web_sys::ReadableStreamDefaultReader =
            body.get_reader().dyn_into().map_err(|_| "cannot read the weights stream")?;
        let mut out = Vec::with_capacity(total as usize);
        loop {
            let chunk = JsFuture::from(reader.read()).await.map_err(|e| js_text(&e))?;
            if Reflect::get(&chunk, &"done".into()).ok().and_then(|d| d.as_bool()).unwrap_or(true) {
                break;
            }
            let value: Uint8Array = Reflect::get(&chunk, &"value".into())
                .map_err(|e| js_text(&e))?
                .dyn_into()
                .map_err(|_| "a weights chunk is not bytes")?;
            out.extend(value.to_vec());
            post(&Reply::Progress { loaded: out.len() as u64, total, from_cache }, None);
        }
        Ok(out)
    }

    /// The weights the manifest names: from the browser's cache, else downloaded (then kept),
    /// checked against the manifest's SHA-256. Returns them and the bytes downloaded.
    async fn weights(
        manifest_url: &str, manifest: &EncoderManifest,
    ) -> Result<(Vec<u8>, String, u64), String> {
        let (url, key) =
            weights_urls(manifest_url, &manifest.path).ok_or("the manifest URL has no /api/encoder")?;
        let caches = scope().caches().map_err(|e| format!("no Cache API: {}", js_text(&e)))?;
        let cache: web_sys::Cache = JsFuture::from(caches.open("htc-encoder-weights"))
            .await
            .map_err(|e| format!("cannot open the weights cache: {}", js_text(&e)))?
            .unchecked_into();
        let hit = JsFuture::from(cache.match_with_str(&key)).await.map_err(|e| js_text(&e))?;
        let (bytes, downloaded) = match hit.dyn_into::<web_sys::Response>() {
            Ok(resp) => (read_body(&resp, manifest.bytes, true).await?, 0),
            Err(_) => {
                if let Some(why) = super::too_large(manifest.bytes) {
                    return Err(why);
                }
                let resp = fetch(&url).await?;
                let bytes = read_body(&resp, manifest.bytes, false).await?;
                let n = bytes.len() as u64;
                (bytes, n)
            }
        };
        let digest = sha256_hex(&bytes);
        if digest != manifest.sha256 {
            let _ = JsFuture::from(cache.delete_with_str(&key)).await;
            return Err(format!(
                "the encoder weights' SHA-256 is {digest}, the manifest says {}",
                manifest.sha256
            ));
        }
        if downloaded > 0 {
            let stored = web_sys::Response::new_with_opt_u8_array(Some(&mut bytes.clone()))
                .map_err(|e| js_text(&e))?;
            JsFuture::from(cache.put_with_str(&key, &stored))
                .await
                .map_err(|e| format!("cannot keep the weights in the cache: {}", js_text(&e)))?;
        }
        Ok((bytes, key, downloaded))
    }

    /// Loads the manifest's encoder on `backend`; an `Err` says whether the device failed.
    async fn load(manifest_url: &str, backend: EncoderBackend) -> Result<(), (String, bool)> {
        let input = |e: String| (e, false);
        let t0 = now_ms();
        let manifest_text =
            JsFuture::from(fetch(manifest_url).await.map_err(input)?.text().map_err(|e| input(js_text(&e)))?)
                .await
                .map_err(|e| input(js_text(&e)))?
                .as_string()
                .unwrap_or_default();
        let manifest: EncoderManifest = serde_json::from_str(&manifest_text)
            .map_err(|e| input(format!("the encoder manifest is unreadable: {e}")))?;
        let same = MODEL.with_borrow(|m| {
            m.as_ref().is_some_and(|m| m.sha256 == manifest.sha256 && m.encoder.backend() == backend)
        });
        if same {
            post(
                &Reply::Loaded {
                    sha256: manifest.sha256,
                    bytes: manifest.bytes,
                    downloaded: 0,
                    ms: 0.0,
                    warmup_ms: 0.0,
                    backend,
                },
                None,
            );
            return Ok(());
        }
        let (bytes, key, downloaded) = weights(manifest_url, &manifest).await.map_err(input)?;
        let src = SafetensorsBytes::new(bytes, &key).map_err(|e| input(e.to_string()))?;
        let encoder = match backend {
            EncoderBackend::Cpu => {
                let device = Default::default();
                let vb = Loader::<Cpu>::new(&src, &device);
                let mgvq = Mgvq::load(&vb.pp(&manifest.prefix), &manifest.config);
                Encoder::Cpu(Box::new(mgvq.map_err(|e| input(e.to_string()))?))
            }
            #[cfg(not(feature = "burn-wgpu"))]
            EncoderBackend::BurnWgpu => {
                return Err((
                    "this build of the page has no burn-wgpu (built without its feature)".into(),
                    true,
                ))
            }
            #[cfg(feature = "burn-wgpu")]
            EncoderBackend::BurnWgpu => {
                let device = gpu().await.map_err(|e| (e, true))?;
                let vb = Loader::<Gpu>::new(&src, &device);
                let mgvq = Mgvq::load(&vb.pp(&manifest.prefix), &manifest.config);
                Encoder::Gpu(Box::new(mgvq.map_err(|e| input(e.to_string()))?))
            }
            EncoderBackend::Webgpu => {
                let (device, queue) = wgsl_device().await.map_err(|e| (e, true))?;
                let prefix = match manifest.prefix.as_str() {
                    "" => String::new(),
                    p => format!("{p}."),
                };
                // Missing or misshapen weights are the input's fault; WebGPU refusing the
                // kernels or their buffers is the device's, and falls back to the CPU.
                let mgvq =
                    WgslMgvq::load(device, queue, &src, &prefix, &manifest.config).await.map_err(|e| {
                        let device = matches!(e, htc_shared::Error::Tensor(_));
                        (e.to_string(), device)
                    })?;
                Encoder::Wgsl(Box::new(mgvq))
            }
        };
        // One blank image through the encoder: on WebGPU this compiles its kernels, so the
        // first real image does not pay for it.
        let t1 = now_ms();
        let side = encoder.image_size() as u32;
        encoder.codes(&RgbImage::new(side, side)).await?;
        let warmup_ms = now_ms() - t1;
        MODEL.with_borrow_mut(|m| *m = Some(Rc::new(Loaded { sha256: manifest.sha256.clone(), encoder })));
        let ms = now_ms() - t0;
        post(
            &Reply::Loaded {
                sha256: manifest.sha256,
                bytes: manifest.bytes,
                downloaded,
                ms,
                warmup_ms,
                backend,
            },
            None,
        );
        Ok(())
    }

    async fn encode(bytes: Vec<u8>) -> Result<(Vec<Vec<u16>>, f64, EncoderBackend), (String, bool)> {
        let t0 = now_ms();
        let img = decode_image(&bytes, DecodeLimits::default()).map_err(|e| (e.to_string(), false))?;
        let loaded = MODEL
            .with_borrow(|m| m.clone())
            .ok_or_else(|| ("the encoder is not loaded".to_string(), false))?;
        let codes = loaded.encoder.codes(&img).await?;
        Ok((codes, now_ms() - t0, loaded.encoder.backend()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_socket_and_keep_the_token_out_of_the_cache_key() {
        let m = manifest_url("ws://127.0.0.1:8080/ws").unwrap();
        assert_eq!(m, "http://127.0.0.1:8080/api/encoder");
        let m = manifest_url("wss://h.example/htc/ws?token=a%20b").unwrap();
        assert_eq!(m, "https://h.example/htc/api/encoder?token=a%20b");
        let (url, key) = weights_urls(&m, "/api/encoder/ab12.safetensors").unwrap();
        assert_eq!(url, "https://h.example/htc/api/encoder/ab12.safetensors?token=a%20b");
        assert_eq!(key, "https://h.example/htc/api/encoder/ab12.safetensors");
        assert!(manifest_url("http://not-a-socket/ws").is_none());
        assert!(weights_urls("http://h/api/model", "/x").is_none());
    }

    #[test]
    fn messages_round_trip_and_codes_are_little_endian_rows() {
        for r in [
            Reply::Started,
            Reply::Progress { loaded: 3, total: 9, from_cache: true },
            Reply::Codes { id: 7, positions: 2, groups: 2, ms: 1.5, backend: EncoderBackend::Webgpu },
            Reply::Loaded {
                sha256: "ab".into(),
                bytes: 9,
                downloaded: 0,
                ms: 2.0,
                warmup_ms: 1.0,
                backend: EncoderBackend::Cpu,
            },
            Reply::Failed { id: Some(7), message: "x".into(), device: true },
        ] {
            let back: Reply = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
            assert_eq!(back, r);
        }
        for q in [
            Request::Load { manifest_url: "http://h/api/encoder".into(), backend: EncoderBackend::Webgpu },
            Request::LoseDevice,
        ] {
            assert_eq!(serde_json::from_str::<Request>(&serde_json::to_string(&q).unwrap()).unwrap(), q);
        }
        // A load request without a backend is a CPU one; the backend's words are the status's.
        let old: Request = serde_json::from_str(r#"{"type":"load","manifest_url":"u"}"#).unwrap();
        assert_eq!(old, Request::Load { manifest_url: "u".into(), backend: EncoderBackend::Cpu });
        assert_eq!(serde_json::to_string(&EncoderBackend::Webgpu).unwrap(), r#""webgpu""#);
        assert_eq!(EncoderBackend::Webgpu.name(), "webgpu");
        // burn-wgpu's path runs on WebGPU too: its status words say so, and a device failure
        // on it falls back to the CPU like the WGSL kernels'.
        assert_eq!(serde_json::to_string(&EncoderBackend::BurnWgpu).unwrap(), r#""burn-wgpu""#);
        assert_eq!(EncoderBackend::BurnWgpu.name(), "webgpu-burn");
        assert!(EncoderBackend::BurnWgpu.on_webgpu() && EncoderBackend::Webgpu.on_webgpu());
        assert!(!EncoderBackend::Cpu.on_webgpu());
        assert_eq!(codes_bytes(&[vec![1, 258], vec![3, 4]]), vec![1, 0, 2, 1, 3, 0, 4, 0]);
        let decoded = htc_shared::protocol::decode_codes(
            &codes_bytes(&[vec![1, 258], vec![3, 4]]),
            htc_shared::protocol::CodesShape { positions: 2, groups: 2 },
            300,
        )
        .unwrap();
        assert_eq!(decoded, vec![vec![1, 258], vec![3, 4]]);
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn large_encoders_are_not_downloaded_unasked() {
        assert_eq!(too_large(784_000), None);
        let why = too_large(348_000_000).unwrap();
        assert_eq!(why, "the encoder's weights are 348 MB, over the 64 MB the page downloads by itself");
    }
}
