//! The compute path for the in-browser MGVQ encoder: [`ComputePath`] and the WebGPU [`probe`]
//! that picks it (WebGPU when `navigator.gpu` grants an adapter, the CPU fallback otherwise).

use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

/// The compute path the page found.
#[derive(Debug, Clone, PartialEq)]
pub enum ComputePath {
    Probing,
    WebGpu {
        fallback_adapter: bool,
    },
    Cpu {
        reason: String,
    },
    /// The user chose the CPU in the settings (no probe).
    CpuChosen,
}

impl ComputePath {
    /// The stable id the page exposes as `data-path`: `probing`, `webgpu` or `cpu`.
    pub fn id(&self) -> &'static str {
        match self {
            ComputePath::Probing => "probing",
            ComputePath::WebGpu { .. } => "webgpu",
            ComputePath::Cpu { .. } | ComputePath::CpuChosen => "cpu",
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            ComputePath::Probing => "Probing for WebGPU…".into(),
            ComputePath::WebGpu { fallback_adapter: false } => "WebGPU (hardware adapter)".into(),
            ComputePath::WebGpu { fallback_adapter: true } => "WebGPU (software fallback adapter)".into(),
            ComputePath::Cpu { reason } => format!("CPU fallback: {reason}"),
            ComputePath::CpuChosen => "CPU (chosen in the settings)".into(),
        }
    }
}

/// Asks `navigator.gpu` for an adapter.
pub async fn probe() -> ComputePath {
    let Some(window) = web_sys::window() else {
        return ComputePath::Cpu { reason: "no window".into() };
    };
    let nav: JsValue = window.navigator().into();
    let gpu = js_sys::Reflect::get(&nav, &"gpu".into()).unwrap_or(JsValue::UNDEFINED);
    if gpu.is_undefined() || gpu.is_null() {
        return ComputePath::Cpu { reason: "navigator.gpu is not available".into() };
    }
    let request = js_sys::Reflect::get(&gpu, &"requestAdapter".into())
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
    let Some(request) = request else {
        return ComputePath::Cpu { reason: "navigator.gpu.requestAdapter is missing".into() };
    };
    let promise = match request.call0(&gpu).map(js_sys::Promise::from) {
        Ok(p) => p,
        Err(_) => return ComputePath::Cpu { reason: "requestAdapter() threw".into() },
    };
    match JsFuture::from(promise).await {
        Ok(adapter) if !adapter.is_null() && !adapter.is_undefined() => {
            let fallback = js_sys::Reflect::get(&adapter, &"isFallbackAdapter".into())
                .ok()
                .and_then(|v| v.as_bool())
                .or_else(|| {
                    let info = js_sys::Reflect::get(&adapter, &"info".into()).ok()?;
                    js_sys::Reflect::get(&info, &"isFallbackAdapter".into()).ok()?.as_bool()
                })
                .unwrap_or(false);
            ComputePath::WebGpu { fallback_adapter: fallback }
        }
        Ok(_) => ComputePath::Cpu { reason: "no WebGPU adapter was granted".into() },
        Err(_) => ComputePath::Cpu { reason: "requestAdapter() failed".into() },
    }
}
