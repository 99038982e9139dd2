//! The in-browser encoder as the status shows it: its state, and where the newest question's
//! image was tokenised.

/// The in-browser MGVQ encoder (see `runner`), as the status shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum EncoderState {
    /// Not running; the words say why (the worker tokenises images meanwhile).
    Off(String),
    /// Fetching the weights: bytes so far of `total`, from the browser's cache or the network.
    Loading { loaded: u64, total: u64, from_cache: bool },
    /// Loaded on `backend` in `ms`, of which `warmup_ms` ran a first blank image (on WebGPU:
    /// compiling its kernels); `downloaded` weight bytes came over the network for it.
    Ready { backend: String, bytes: u64, downloaded: u64, ms: f64, warmup_ms: f64 },
    /// Loading failed; the words say why (the worker tokenises images).
    Failed(String),
}

impl EncoderState {
    /// The stable id the page exposes as `data-encoder`.
    pub fn id(&self) -> &'static str {
        match self {
            Self::Off(_) => "off",
            Self::Loading { .. } => "loading",
            Self::Ready { .. } => "ready",
            Self::Failed(_) => "failed",
        }
    }

    /// The short form the status always shows: whether the encoder runs, and when it is
    /// ready, its backend and whether its weights came from the cache or the network.
    pub fn summary(&self) -> String {
        match self {
            Self::Off(_) => "in-browser encoder off; the worker tokenises".into(),
            Self::Loading { .. } => "in-browser encoder loading its weights…".into(),
            Self::Ready { backend, downloaded, .. } => {
                let weights = if *downloaded == 0 { "cached" } else { "downloaded" };
                format!("in-browser encoder ready on {backend}, weights {weights}")
            }
            Self::Failed(_) => "in-browser encoder failed; the worker tokenises".into(),
        }
    }

    /// The full words, for the status's details: why it is off or failed, the weights'
    /// progress, or their size, where they came from and the load time.
    pub fn describe(&self) -> String {
        let kb = |b: u64| format!("{:.0} KB", b as f64 / 1e3);
        match self {
            Self::Off(why) => format!("in-browser encoder off: {why}"),
            Self::Loading { loaded, total, from_cache } => {
                let from = if *from_cache { "from the browser cache" } else { "downloading" };
                format!("encoder weights {from}: {} of {}", kb(*loaded), kb(*total))
            }
            Self::Ready { backend, bytes, downloaded, ms, warmup_ms } => {
                let from = if *downloaded == 0 {
                    "cached".to_string()
                } else {
                    format!("{} downloaded", kb(*downloaded))
                };
                format!(
                    "in-browser encoder ready on {backend} ({} weights, {from}, {ms:.0} ms, {warmup_ms:.0} ms of it the first run)",
                    kb(*bytes)
                )
            }
            Self::Failed(why) => format!("in-browser encoder failed: {why}; the worker tokenises"),
        }
    }
}

/// Where the image of the newest question was tokenised, in words for the status.
pub fn tokenised_words(browser: Option<(&str, f64)>) -> String {
    match browser {
        Some((backend, ms)) => format!("browser, backend: {backend}, {ms:.0} ms"),
        None => "worker".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoder_state_in_words() {
        let r = EncoderState::Ready {
            backend: "cpu".into(),
            bytes: 780_000,
            downloaded: 0,
            ms: 41.0,
            warmup_ms: 12.4,
        };
        assert_eq!(
            r.describe(),
            "in-browser encoder ready on cpu (780 KB weights, cached, 41 ms, 12 ms of it the first run)"
        );
        assert_eq!(r.id(), "ready");
        let l = EncoderState::Loading { loaded: 1000, total: 4000, from_cache: false };
        assert_eq!(l.describe(), "encoder weights downloading: 1 KB of 4 KB");
        assert!(EncoderState::Failed("HTTP 404".into()).describe().contains("the worker tokenises"));
        assert_eq!(tokenised_words(Some(("cpu", 12.4))), "browser, backend: cpu, 12 ms");
        assert_eq!(tokenised_words(None), "worker");
    }

    #[test]
    fn the_short_form_keeps_the_backend_and_where_the_weights_came_from() {
        let ready = |downloaded| EncoderState::Ready {
            backend: "webgpu".into(),
            bytes: 780_000,
            downloaded,
            ms: 41.0,
            warmup_ms: 12.0,
        };
        assert_eq!(ready(0).summary(), "in-browser encoder ready on webgpu, weights cached");
        assert_eq!(ready(780_000).summary(), "in-browser encoder ready on webgpu, weights downloaded");
        let loading = EncoderState::Loading { loaded: 1000, total: 4000, from_cache: true };
        assert_eq!(loading.summary(), "in-browser encoder loading its weights…");
        let off = EncoderState::Off("the model takes no MGVQ codes".into());
        assert_eq!(off.summary(), "in-browser encoder off; the worker tokenises");
        assert!(off.describe().ends_with("the model takes no MGVQ codes"), "the details say why");
        let failed = EncoderState::Failed("HTTP 404".into());
        assert_eq!(failed.summary(), "in-browser encoder failed; the worker tokenises");
        assert!(failed.describe().contains("HTTP 404"), "the details say why");
    }
}
