//! The in-browser model runner: the model's MGVQ encoder and grouped quantiser, run on the
//! encoder thread (a Web Worker) so the page stays responsive while it encodes, on the backend
//! the page asks for ([`EncoderBackend`]): on WebGPU through the hand-written WGSL kernels of
//! `shaders/` (`htc_shared::mgvq_wgsl`, the default; docs/performance.md compares it with
//! burn-wgpu), on WebGPU through burn-wgpu (the `htc_shared::mgvq` code the worker runs,
//! compiled to wasm; the settings' `burn-wgpu`), or on the CPU (the same code on burn-ndarray
//! in wasm), the fallback when WebGPU is missing or fails.
//!
//! - here: [`Request`] / [`Reply`], the messages between the page and the encoder thread, the
//!   backends, and the encoder's URLs on the worker;
//! - `page`: [`Runner`], the page's side: starts the encoder thread (the `encoder` binary's
//!   `encoder.js` and `encoder_bg.wasm`, from the page's origin or the widget's worker), asks
//!   it to load the worker's encoder and to encode images, and hands every reply to one
//!   callback;
//! - `encoder_thread` (wasm32 only): `encoder_thread_main`, the Web Worker's side: fetches
//!   `/api/encoder` and the content-addressed weights through the Cache API (a reload
//!   downloads no weight bytes), checks their SHA-256, loads them and answers each image with
//!   its codes.
//!
//! A message is a two-element array: the JSON text of a [`Request`] or [`Reply`], and the
//! bytes that go with it (the image to encode; the codes as the protocol's little-endian
//! `u16`s, `[h*w][G]`) or `undefined`.

#[cfg(target_arch = "wasm32")]
mod encoder_thread;
mod page;

use serde::{Deserialize, Serialize};

/// Page → encoder thread.
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
    /// Destroy the WebGPU device, as a GPU reset or a driver crash would: the encoder thread
    /// reports the loss like any other, and the page falls back to the CPU. For trying the
    /// fallback (the page answers the `htc-lose-device` window event with it).
    LoseDevice,
    /// Encode the image whose bytes come with this message.
    Encode { id: u32 },
}

/// Encoder thread → page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// The encoder thread runs and takes requests.
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

/// Where the encoder thread runs the encoder.
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

#[cfg(target_arch = "wasm32")]
pub use encoder_thread::encoder_thread_main;
pub use page::Runner;

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
