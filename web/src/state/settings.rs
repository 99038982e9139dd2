//! The settings: what the user set (kept in localStorage), their validation, and the socket
//! URL they make.

use serde::{Deserialize, Serialize};

/// The compute backend the user asks for the in-browser encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    #[default]
    Auto,
    Webgpu,
    Cpu,
    /// WebGPU through burn-wgpu's kernels instead of the hand-written WGSL ones of `shaders/`
    /// (which `auto` and `webgpu` use).
    #[serde(rename = "burn-wgpu")]
    BurnWgpu,
}

impl BackendChoice {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "webgpu" => Some(Self::Webgpu),
            "cpu" => Some(Self::Cpu),
            "burn-wgpu" => Some(Self::BurnWgpu),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Webgpu => "webgpu",
            Self::Cpu => "cpu",
            Self::BurnWgpu => "burn-wgpu",
        }
    }
}

/// What the user set, kept in localStorage under [`Settings::STORAGE_KEY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `ws://` or `wss://` URL of the worker's `/ws`; empty: the page's own origin.
    pub worker_url: String,
    /// Bearer token, sent as `?token=` (browsers cannot set WebSocket headers).
    pub token: String,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    pub backend: BackendChoice,
    /// The mode to ask in, when the model offers several; `None`: the model's own.
    pub mode: Option<htc_shared::config::HtcMode>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            worker_url: String::new(),
            token: String::new(),
            temperature: 0.0,
            top_p: 1.0,
            max_new_tokens: 64,
            backend: BackendChoice::Auto,
            mode: None,
        }
    }
}

impl Settings {
    pub const STORAGE_KEY: &'static str = "htc-vlm.settings";

    /// Settings from stored JSON; anything unreadable falls back to the defaults.
    pub fn from_stored(json: Option<&str>) -> Self {
        json.and_then(|j| serde_json::from_str::<Settings>(j).ok())
            .filter(|s| s.validate().is_ok())
            .unwrap_or_default()
    }

    /// The first problem with these settings, in words.
    pub fn validate(&self) -> Result<(), String> {
        let url = self.worker_url.trim();
        if !(url.is_empty() || url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(format!("worker URL must start with ws:// or wss:// (got `{url}`)"));
        }
        if !(0.0..=2.0).contains(&self.temperature) || !self.temperature.is_finite() {
            return Err(format!("temperature must be in 0..2 (got {})", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p must be in (0, 1] (got {})", self.top_p));
        }
        if !(1..=4096).contains(&self.max_new_tokens) {
            return Err(format!("max tokens must be in 1..4096 (got {})", self.max_new_tokens));
        }
        Ok(())
    }

    /// The URL to open: the set one, else `/ws` on the page's origin (`http(s)://host`), with
    /// the page's `session` (a load balancer that hashes it keeps the page on one worker and
    /// spreads pages over workers; kept if the set URL has one) and the token as query
    /// parameters.
    pub fn socket_url(&self, page_origin: &str, session: &str) -> String {
        let base = match self.worker_url.trim() {
            "" => {
                let ws = page_origin
                    .strip_prefix("https://")
                    .map(|h| format!("wss://{h}"))
                    .or_else(|| page_origin.strip_prefix("http://").map(|h| format!("ws://{h}")))
                    .unwrap_or_else(|| format!("ws://{page_origin}"));
                format!("{}/ws", ws.trim_end_matches('/'))
            }
            url => url.to_string(),
        };
        let mut url = base;
        let has = |url: &str, key: &str| {
            url.split_once('?').is_some_and(|(_, q)| q.split('&').any(|kv| kv.split('=').next() == Some(key)))
        };
        let add = |url: &mut String, key: &str, value: &str| {
            let sep = if url.contains('?') { '&' } else { '?' };
            url.push_str(&format!("{sep}{key}={}", percent_encode(value)));
        };
        if !session.is_empty() && !has(&url, "session") {
            add(&mut url, "session", session);
        }
        if !self.token.is_empty() {
            add(&mut url, "token", &self.token);
        }
        url
    }
}

/// Query-component percent-encoding of a token (unreserved characters kept).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::model_card_url;

    #[test]
    fn settings_validate_round_trip_and_build_the_socket_url() {
        let s = Settings::default();
        assert!(s.validate().is_ok());
        assert_eq!(s.socket_url("http://127.0.0.1:8080", ""), "ws://127.0.0.1:8080/ws");
        assert_eq!(s.socket_url("https://example.org", "p1"), "wss://example.org/ws?session=p1");
        let t = Settings { token: "a b&c".into(), ..Settings::default() };
        assert_eq!(t.socket_url("http://h:1", "p1"), "ws://h:1/ws?session=p1&token=a%20b%26c");
        let u = Settings { worker_url: "wss://gpu.example/ws?x=1".into(), token: "t".into(), ..s.clone() };
        assert_eq!(u.socket_url("http://ignored", "p1"), "wss://gpu.example/ws?x=1&session=p1&token=t");
        let own = Settings { worker_url: "ws://lb/ws?session=mine".into(), ..s.clone() };
        assert_eq!(own.socket_url("http://ignored", "p1"), "ws://lb/ws?session=mine");
        assert_eq!(
            model_card_url("ws://ws.host:1/ws?token=t").as_deref(),
            Some("http://ws.host:1/api/model?token=t")
        );
        assert_eq!(model_card_url("wss://h/ws").as_deref(), Some("https://h/api/model"));
        assert_eq!(model_card_url("wss://h/socket"), None);
        let json = serde_json::to_string(&u).unwrap();
        assert_eq!(Settings::from_stored(Some(&json)), u);
        // Unreadable or invalid stored settings fall back to the defaults.
        assert_eq!(Settings::from_stored(Some("{not json")), Settings::default());
        assert_eq!(Settings::from_stored(Some(r#"{"top_p": 7}"#)), Settings::default());
        assert_eq!(Settings::from_stored(None), Settings::default());
        // Every compute backend round-trips by its name, burn-wgpu's included.
        for b in [BackendChoice::Auto, BackendChoice::Webgpu, BackendChoice::Cpu, BackendChoice::BurnWgpu] {
            assert_eq!(BackendChoice::parse(b.name()), Some(b));
            let stored = serde_json::json!({ "backend": b.name() }).to_string();
            assert_eq!(Settings::from_stored(Some(&stored)).backend, b);
        }
        assert_eq!(BackendChoice::parse("cuda"), None);
        for (bad, words) in [
            (Settings { worker_url: "http://x".into(), ..Settings::default() }, "ws://"),
            (Settings { temperature: -1.0, ..Settings::default() }, "temperature"),
            (Settings { top_p: 0.0, ..Settings::default() }, "top-p"),
            (Settings { max_new_tokens: 0, ..Settings::default() }, "max tokens"),
        ] {
            assert!(bad.validate().unwrap_err().contains(words), "{bad:?}");
        }
    }
}
