//! The encoder thread: the Web Worker side of the runner (wasm32 only), the `encoder`
//! binary's entry point [`encoder_thread_main`]. It fetches `/api/encoder` and the
//! content-addressed weights through the Cache API (a reload downloads no weight bytes), checks
//! their SHA-256, loads them on the backend the page asks for, and answers each image with its
//! codes.

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

/// The encoder thread's entry point (the `encoder` binary's `main`, run in the Web Worker).
pub fn encoder_thread_main() {
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
    let resp =
        JsFuture::from(scope().fetch_with_str(url)).await.map_err(|e| format!("{url}: {}", js_text(&e)))?;
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
async fn weights(manifest_url: &str, manifest: &EncoderManifest) -> Result<(Vec<u8>, String, u64), String> {
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
        let stored =
            web_sys::Response::new_with_opt_u8_array(Some(&mut bytes.clone())).map_err(|e| js_text(&e))?;
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
            return Err(("this build of the page has no burn-wgpu (built without its feature)".into(), true))
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
            let mgvq = WgslMgvq::load(device, queue, &src, &prefix, &manifest.config).await.map_err(|e| {
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
        &Reply::Loaded { sha256: manifest.sha256, bytes: manifest.bytes, downloaded, ms, warmup_ms, backend },
        None,
    );
    Ok(())
}

async fn encode(bytes: Vec<u8>) -> Result<(Vec<Vec<u16>>, f64, EncoderBackend), (String, bool)> {
    let t0 = now_ms();
    let img = decode_image(&bytes, DecodeLimits::default()).map_err(|e| (e.to_string(), false))?;
    let loaded =
        MODEL.with_borrow(|m| m.clone()).ok_or_else(|| ("the encoder is not loaded".to_string(), false))?;
    let codes = loaded.encoder.codes(&img).await?;
    Ok((codes, now_ms() - t0, loaded.encoder.backend()))
}
