//! The app's state and its rules, free of the DOM so they run in native tests: the
//! conversation (turns fed by the worker's messages), the settings and their validation, the
//! reconnect backoff, the attention maps reduced to what the page draws, and the worker's
//! errors in words.

use htc_shared::protocol::{ErrorCode, ServerMessage, Timings};
use serde::{Deserialize, Serialize};

/// Where one turn stands.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnStatus {
    /// Sent, no token yet.
    Waiting,
    /// Tokens are arriving.
    Streaming,
    Done,
    /// Stopped by the user; the tokens that came are kept.
    Stopped,
    /// The worker refused or failed; the words say why.
    Failed(String),
}

/// One question and its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub request_id: u32,
    pub question: String,
    pub answer: String,
    pub status: TurnStatus,
    /// Milliseconds from sending to the first token, measured by the page.
    pub first_token_ms: Option<f64>,
    /// The worker's own figures, from `done`.
    pub timings: Option<Timings>,
    /// The image came from the worker's one-token cache.
    pub cached: bool,
    pub tokens: usize,
    /// Per layer, `<voco>`'s attention over `[anchors; patches]`.
    pub attention: Option<AttentionMaps>,
    /// Asked in another of the model's modes (the compare switch); `None`: its own.
    pub mode: Option<htc_shared::config::HtcMode>,
}

impl Turn {
    pub fn new(request_id: u32, question: impl Into<String>) -> Self {
        Self {
            request_id,
            question: question.into(),
            answer: String::new(),
            status: TurnStatus::Waiting,
            first_token_ms: None,
            timings: None,
            cached: false,
            tokens: 0,
            attention: None,
            mode: None,
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.status, TurnStatus::Waiting | TurnStatus::Streaming)
    }
}

/// The conversation about the current image.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversation {
    pub turns: Vec<Turn>,
    /// The worker's compress time for this image, the first time it was compressed: what
    /// every cached follow-up saves.
    pub compress_ms: Option<f64>,
}

impl Conversation {
    /// The turn for `request_id`.
    pub fn turn_mut(&mut self, request_id: u32) -> Option<&mut Turn> {
        self.turns.iter_mut().find(|t| t.request_id == request_id)
    }

    /// The turn still waiting or streaming, if any.
    pub fn open_turn(&self) -> Option<&Turn> {
        self.turns.iter().rev().find(|t| t.is_open())
    }

    /// Milliseconds the worker's cache saved over this conversation: one compress time per
    /// answer that came from the cache.
    pub fn saved_ms(&self) -> f64 {
        let cached = self.turns.iter().filter(|t| t.cached && t.status == TurnStatus::Done).count();
        self.compress_ms.unwrap_or(0.0) * cached as f64
    }

    /// Applies one worker message; `elapsed_ms` is how long ago the turn's question was sent
    /// (for the time to first token). Returns whether the message belonged to a turn here.
    pub fn apply(&mut self, msg: &ServerMessage, elapsed_ms: impl Fn(u32) -> f64) -> bool {
        match msg {
            ServerMessage::Token { request_id, text, .. } => {
                let Some(t) = self.turn_mut(*request_id) else { return false };
                if !t.is_open() {
                    return true;
                }
                if t.first_token_ms.is_none() {
                    t.first_token_ms = Some(elapsed_ms(*request_id));
                }
                t.answer.push_str(text);
                t.tokens += 1;
                t.status = TurnStatus::Streaming;
                true
            }
            ServerMessage::Attention { request_id, n_discrete, n_visual, layers } => {
                let Some(t) = self.turn_mut(*request_id) else { return false };
                t.attention = AttentionMaps::new(*n_discrete, *n_visual, layers.clone()).ok();
                true
            }
            ServerMessage::Done { request_id, cached, tokens, cancelled, timings, .. } => {
                let first_compress = !cached && self.compress_ms.is_none();
                let Some(t) = self.turn_mut(*request_id) else { return false };
                t.cached = *cached;
                t.tokens = *tokens;
                t.timings = Some(*timings);
                t.status = if *cancelled { TurnStatus::Stopped } else { TurnStatus::Done };
                if first_compress {
                    self.compress_ms = Some(timings.compress_ms);
                }
                true
            }
            ServerMessage::Error { request_id: Some(request_id), code, message } => {
                let Some(t) = self.turn_mut(*request_id) else { return false };
                t.status = TurnStatus::Failed(error_words(*code, message));
                true
            }
            _ => false,
        }
    }

    /// Marks every open turn failed (the connection dropped under it).
    pub fn fail_open(&mut self, why: &str) {
        for t in self.turns.iter_mut().filter(|t| t.is_open()) {
            t.status = TurnStatus::Failed(why.to_string());
        }
    }
}

/// A worker error in words a person can act on.
pub fn error_words(code: ErrorCode, message: &str) -> String {
    let what = match code {
        ErrorCode::Busy => "The worker is busy",
        ErrorCode::FrameTooLarge => "Too large for the worker",
        ErrorCode::BadImage => "The worker could not read this image",
        ErrorCode::BadCodes | ErrorCode::CodesMismatch => "The worker refused the image codes",
        ErrorCode::WrongVersion => "The worker speaks another protocol version",
        ErrorCode::UnknownImage => "The worker no longer has this image",
        ErrorCode::NotReady => "The connection is not ready",
        ErrorCode::BadRequest => "The worker refused the request",
        ErrorCode::BadJson | ErrorCode::UnknownMessage | ErrorCode::BadFrame => {
            "The page sent something wrong"
        }
        ErrorCode::Internal => "The worker failed",
    };
    format!("{what}: {message}")
}

/// Where the connection stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Connection {
    Connecting,
    /// `ready` came: the model card's name.
    Ready {
        model: String,
    },
    /// Closed; the next try is in `retry_ms` (attempt `attempt`).
    Retrying {
        attempt: u32,
        retry_ms: u32,
        why: String,
    },
    /// Refused for good (auth, version): retrying would not help until settings change.
    Refused {
        why: String,
    },
}

impl Connection {
    pub fn describe(&self) -> String {
        match self {
            Connection::Connecting => "connecting…".into(),
            Connection::Ready { model } => format!("connected, model {model}"),
            Connection::Retrying { attempt, retry_ms, why } => {
                format!("disconnected ({why}); retry {attempt} in {:.1} s", *retry_ms as f64 / 1000.0)
            }
            Connection::Refused { why } => format!("refused: {why}"),
        }
    }

    pub fn id(&self) -> &'static str {
        match self {
            Connection::Connecting => "connecting",
            Connection::Ready { .. } => "ready",
            Connection::Retrying { .. } => "retrying",
            Connection::Refused { .. } => "refused",
        }
    }
}

/// Reconnect delay before attempt `attempt` (1-based): 0.5 s doubling to a 15 s ceiling.
pub fn backoff_ms(attempt: u32) -> u32 {
    let exp = attempt.saturating_sub(1).min(10);
    (500u32 << exp).min(15_000)
}

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

/// The mode the compare switch adds for this model: `none` (all patches), when the model
/// answers in a compressed mode and offers `none` beside it.
pub fn compare_mode(card: &htc_shared::protocol::ModelCard) -> Option<htc_shared::config::HtcMode> {
    use htc_shared::config::HtcMode;
    (card.mode != Some(HtcMode::None) && card.modes.contains(&HtcMode::None)).then_some(HtcMode::None)
}

/// The mode a question goes in: the one chosen in the settings when this model offers it and
/// it is not the model's own, else `None` (the model's own; a mode chosen for another model
/// is ignored).
pub fn asked_mode(
    chosen: Option<htc_shared::config::HtcMode>, card: &htc_shared::protocol::ModelCard,
) -> Option<htc_shared::config::HtcMode> {
    chosen.filter(|m| card.modes.contains(m) && card.mode != Some(*m))
}

/// Where the image of the newest question was tokenised, in words for the status.
pub fn tokenised_words(browser: Option<(&str, f64)>) -> String {
    match browser {
        Some((backend, ms)) => format!("browser, backend: {backend}, {ms:.0} ms"),
        None => "worker".into(),
    }
}

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

/// The worker's model card URL (`/api/model`, same query) for a `/ws` socket URL, to ask
/// over HTTP why a socket was refused; `None` if the URL does not end its path in `/ws`.
pub fn model_card_url(socket_url: &str) -> Option<String> {
    let http = if let Some(rest) = socket_url.strip_prefix("wss://") {
        format!("https://{rest}")
    } else {
        format!("http://{}", socket_url.strip_prefix("ws://")?)
    };
    let (path, query) = match http.split_once('?') {
        Some((p, q)) => (p, format!("?{q}")),
        None => (http.as_str(), String::new()),
    };
    Some(format!("{}/api/model{query}", path.strip_suffix("/ws")?))
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

/// Which layers the attention view shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerPick {
    Mean,
    Layer(usize),
}

/// `<voco>`'s attention over the anchors and patches, per layer, as the worker sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionMaps {
    pub n_discrete: usize,
    pub n_visual: usize,
    pub layers: Vec<Vec<f32>>,
}

/// One layer pick reduced to what the page draws.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionView {
    /// Attention on each anchor.
    pub anchors: Vec<f32>,
    /// Attention on all patches together.
    pub patches_total: f32,
    /// Side of the square patch grid.
    pub grid: usize,
    /// Patch attention row-major over the grid, scaled so the largest cell is 1.
    pub heat: Vec<f32>,
}

impl AttentionMaps {
    /// Checks the worker's maps: every layer covers `n_discrete + n_visual` positions and the
    /// patches form a square grid.
    pub fn new(n_discrete: usize, n_visual: usize, layers: Vec<Vec<f32>>) -> Result<Self, String> {
        let width = n_discrete + n_visual;
        if layers.is_empty() {
            return Err("no attention layers".into());
        }
        if let Some((i, l)) = layers.iter().enumerate().find(|(_, l)| l.len() != width) {
            return Err(format!("attention layer {i} has {} values, expected {width}", l.len()));
        }
        let grid = (n_visual as f64).sqrt().round() as usize;
        if grid * grid != n_visual {
            return Err(format!("{n_visual} patches do not form a square grid"));
        }
        Ok(Self { n_discrete, n_visual, layers })
    }

    /// The view of one layer, or of the mean over layers.
    pub fn view(&self, pick: LayerPick) -> AttentionView {
        let width = self.n_discrete + self.n_visual;
        let row: Vec<f32> = match pick {
            LayerPick::Layer(i) => self.layers[i.min(self.layers.len() - 1)].clone(),
            LayerPick::Mean => (0..width)
                .map(|k| self.layers.iter().map(|l| l[k]).sum::<f32>() / self.layers.len() as f32)
                .collect(),
        };
        let (anchors, patches) = row.split_at(self.n_discrete);
        let max = patches.iter().cloned().fold(0.0f32, f32::max);
        let heat = patches.iter().map(|&p| if max > 0.0 { p / max } else { 0.0 }).collect();
        AttentionView {
            anchors: anchors.to_vec(),
            patches_total: patches.iter().sum(),
            grid: (self.n_visual as f64).sqrt().round() as usize,
            heat,
        }
    }
}

/// Image files the page accepts before sending: its type and size, checked in the page so
/// the user hears at once (the worker checks again).
pub fn check_image_file(mime: &str, bytes: usize, max_bytes: usize) -> Result<(), String> {
    const TYPES: [&str; 5] = ["image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp"];
    if !TYPES.contains(&mime) {
        let shown = if mime.is_empty() { "unknown type" } else { mime };
        return Err(format!("not an image the worker reads ({shown}); use PNG, JPEG, WebP, GIF or BMP"));
    }
    if bytes == 0 {
        return Err("the file is empty".into());
    }
    if bytes > max_bytes {
        return Err(format!(
            "the image is {:.1} MB, over the {:.0} MB limit",
            bytes as f64 / 1e6,
            max_bytes as f64 / 1e6
        ));
    }
    Ok(())
}

/// The size a large photo is scaled down to before upload (its longer side at most
/// `max_side`), or `None` if it is small enough.
pub fn downscaled(width: u32, height: u32, max_side: u32) -> Option<(u32, u32)> {
    let long = width.max(height);
    if long <= max_side || long == 0 {
        return None;
    }
    let s = max_side as f64 / long as f64;
    Some((((width as f64 * s).round() as u32).max(1), ((height as f64 * s).round() as u32).max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings(compress_ms: f64) -> Timings {
        Timings { compress_ms, ..Timings::default() }
    }

    #[test]
    fn a_turn_streams_then_finishes_and_the_cache_saving_counts() {
        let mut c = Conversation::default();
        c.turns.push(Turn::new(1, "What color is the star?"));
        let tok = |id: u32, text: &str| ServerMessage::Token { request_id: id, id: 5, text: text.into() };
        assert!(c.apply(&tok(1, "re"), |_| 12.5));
        assert!(c.apply(&tok(1, "d"), |_| 99.0));
        assert_eq!(c.turns[0].answer, "red");
        assert_eq!(c.turns[0].first_token_ms, Some(12.5));
        assert_eq!(c.turns[0].status, TurnStatus::Streaming);
        let done = |id, cached, ms| ServerMessage::Done {
            request_id: id,
            cached,
            tokens: 2,
            prompt_tokens: 12,
            cancelled: false,
            timings: timings(ms),
        };
        assert!(c.apply(&done(1, false, 40.0), |_| 0.0));
        assert_eq!(c.turns[0].status, TurnStatus::Done);
        assert_eq!(c.compress_ms, Some(40.0));
        c.turns.push(Turn::new(2, "What shape is the red object?"));
        assert!(c.apply(&done(2, true, 0.0), |_| 0.0));
        c.turns.push(Turn::new(3, "Is there a star?"));
        assert!(c.apply(&done(3, true, 0.0), |_| 0.0));
        assert_eq!(c.saved_ms(), 80.0);
        // Unknown ids are not ours.
        assert!(!c.apply(&tok(9, "x"), |_| 0.0));
    }

    #[test]
    fn errors_stop_and_disconnects_end_turns_in_words() {
        let mut c = Conversation::default();
        c.turns.push(Turn::new(1, "q"));
        c.turns.push(Turn::new(2, "q2"));
        let err = ServerMessage::Error {
            request_id: Some(1),
            code: ErrorCode::Busy,
            message: "the request queue is full".into(),
        };
        assert!(c.apply(&err, |_| 0.0));
        assert_eq!(
            c.turns[0].status,
            TurnStatus::Failed("The worker is busy: the request queue is full".into())
        );
        let stopped = ServerMessage::Done {
            request_id: 2,
            cached: true,
            tokens: 1,
            prompt_tokens: 12,
            cancelled: true,
            timings: timings(0.0),
        };
        c.turns[1].status = TurnStatus::Streaming;
        assert!(c.apply(&stopped, |_| 0.0));
        assert_eq!(c.turns[1].status, TurnStatus::Stopped);
        assert!(c.open_turn().is_none());
        c.turns.push(Turn::new(3, "q3"));
        c.fail_open("connection lost");
        assert_eq!(c.turns[2].status, TurnStatus::Failed("connection lost".into()));
        // Tokens after a stop are dropped, not appended.
        let late = ServerMessage::Token { request_id: 2, id: 1, text: "late".into() };
        assert!(c.apply(&late, |_| 0.0));
        assert_eq!(c.turns[1].answer, "");
    }

    #[test]
    fn backoff_doubles_to_a_ceiling() {
        let v: Vec<u32> = (1..=8).map(backoff_ms).collect();
        assert_eq!(v, [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]);
        assert_eq!(backoff_ms(0), 500);
        assert_eq!(backoff_ms(u32::MAX), 15000);
    }

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

    #[test]
    fn attention_views_reduce_layers_and_check_shapes() {
        // 2 anchors + 4 patches (a 2×2 grid), 2 layers.
        let maps = AttentionMaps::new(
            2,
            4,
            vec![vec![0.1, 0.1, 0.2, 0.2, 0.2, 0.2], vec![0.3, 0.1, 0.0, 0.4, 0.1, 0.1]],
        )
        .unwrap();
        let l1 = maps.view(LayerPick::Layer(1));
        assert_eq!(l1.grid, 2);
        assert_eq!(l1.anchors, vec![0.3, 0.1]);
        assert!((l1.patches_total - 0.6).abs() < 1e-6);
        assert_eq!(l1.heat, vec![0.0, 1.0, 0.25, 0.25]);
        let mean = maps.view(LayerPick::Mean);
        assert!((mean.anchors[0] - 0.2).abs() < 1e-6);
        assert!((mean.heat[1] - 1.0).abs() < 1e-6);
        assert!((mean.heat[0] - 1.0 / 3.0).abs() < 1e-6);
        assert!(AttentionMaps::new(2, 4, vec![vec![0.0; 5]]).unwrap_err().contains("expected 6"));
        assert!(AttentionMaps::new(0, 5, vec![vec![0.0; 5]]).unwrap_err().contains("square"));
        assert!(AttentionMaps::new(0, 4, vec![]).is_err());
    }

    #[test]
    fn image_files_are_checked_by_type_and_size_and_large_photos_scaled() {
        assert!(check_image_file("image/png", 10, 100).is_ok());
        assert!(check_image_file("text/plain", 10, 100).unwrap_err().contains("text/plain"));
        assert!(check_image_file("", 10, 100).unwrap_err().contains("unknown type"));
        assert!(check_image_file("image/jpeg", 0, 100).unwrap_err().contains("empty"));
        assert!(check_image_file("image/jpeg", 30_000_000, 12_000_000).unwrap_err().contains("30.0 MB"));
        assert_eq!(downscaled(4000, 3000, 1024), Some((1024, 768)));
        assert_eq!(downscaled(300, 5000, 1000), Some((60, 1000)));
        assert_eq!(downscaled(336, 336, 1024), None);
    }

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
    fn the_chosen_mode_applies_only_where_the_model_offers_it() {
        use htc_shared::config::HtcMode;
        let card: htc_shared::protocol::ModelCard = serde_json::from_value(serde_json::json!({
            "name": "m", "architecture": "htc", "random_init": false, "backend": "cpu", "mode": "htc",
            "n_discrete": 4, "n_voco": 1, "image_size": 168, "image_tokens": 9, "hidden_size": 192,
            "layers": 4, "vocab_size": 128, "has_tokenizer": true, "mgvq": null, "codebook_size": null,
            "modes": ["htc", "none"]
        }))
        .unwrap();
        assert_eq!(asked_mode(Some(HtcMode::None), &card), Some(HtcMode::None));
        assert_eq!(asked_mode(Some(HtcMode::Htc), &card), None, "the model's own mode");
        assert_eq!(asked_mode(Some(HtcMode::Voco), &card), None, "not offered by this model");
        assert_eq!(asked_mode(None, &card), None);
        // Stored settings without a mode (older pages) still load.
        let old = Settings::from_stored(Some(r#"{"temperature": 0.5}"#));
        assert_eq!((old.mode, old.temperature), (None, 0.5));
        let s = Settings { mode: Some(HtcMode::None), ..Settings::default() };
        assert_eq!(
            Settings::from_stored(Some(&serde_json::to_string(&s).unwrap())).mode,
            Some(HtcMode::None)
        );
    }
}
