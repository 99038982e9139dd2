//! The page's session: the reactive state every component reads ([`Session`], provided as a
//! leptos context) and the actions that talk to the worker through [`Client`]: connect and
//! reconnect with backoff, send the image once per connection (with the MGVQ codes the
//! in-browser encoder computed, see [`Runner`]), ask, stop, regenerate.

use std::collections::HashMap;

use htc_shared::config::HtcMode;
use htc_shared::protocol::{CodesShape, ErrorCode, ModelCard, ServerMessage};
use leptos::prelude::*;
use wasm_bindgen::JsCast;

use crate::client::{Client, Event};
use crate::compute::ComputePath;
use crate::runner::{self, EncoderBackend, Reply, Request, Runner};
use crate::state::{
    backoff_ms, error_words, tokenised_words, Connection, Conversation, EncoderState, LayerPick, Settings,
    Turn, TurnStatus,
};

/// Codes the in-browser encoder computed for one image.
#[derive(Debug, Clone)]
pub struct ImageCodes {
    pub image_id: String,
    /// The protocol's codes frame payload.
    pub payload: Vec<u8>,
    pub shape: CodesShape,
    pub backend: String,
    pub ms: f64,
}

/// The image the user chose, as the page holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChosenImage {
    /// Content hash: the image's id on the worker.
    pub id: String,
    pub name: String,
    pub bytes: usize,
    /// An object URL for the preview and the attention view.
    pub url: String,
    pub width: u32,
    pub height: u32,
    /// Scaled down from this size before upload.
    pub scaled_from: Option<(u32, u32)>,
}

/// Everything the components share; all fields are `Copy` handles.
#[derive(Clone, Copy)]
pub struct Session {
    pub settings: RwSignal<Settings>,
    pub connection: RwSignal<Connection>,
    pub model: RwSignal<Option<ModelCard>>,
    pub image: RwSignal<Option<ChosenImage>>,
    pub image_error: RwSignal<Option<String>>,
    /// The question box's text (a suggested question fills it).
    pub question: RwSignal<String>,
    /// Problems that belong to no turn (a refused image, an unreadable frame).
    pub notice: RwSignal<Option<String>>,
    pub conversation: RwSignal<Conversation>,
    pub compute: RwSignal<ComputePath>,
    /// The in-browser MGVQ encoder.
    pub encoder: RwSignal<EncoderState>,
    /// Where the image of the newest question was tokenised, in words.
    pub tokenised: RwSignal<Option<String>>,
    /// Ask each question in mode `none` (all patches) too, beside the model's own mode.
    pub compare: RwSignal<bool>,
    pub layer: RwSignal<LayerPick>,
    /// The attention view shows patches (heatmap) or anchors (bars) first.
    pub show_anchors: RwSignal<bool>,
    client: StoredValue<Option<Client>, LocalStorage>,
    runner: StoredValue<Option<Runner>, LocalStorage>,
    /// The served model takes MGVQ codes, so the page runs the encoder.
    wants_encoder: StoredValue<bool>,
    /// The current image's codes, once the encoder has them.
    pub codes: RwSignal<Option<ImageCodes>>,
    /// The encoding under way: its runner request id and the image's id.
    encoding: StoredValue<Option<(u32, String)>>,
    /// Images whose codes the worker refused (they differ from its own): sent without codes.
    refused: StoredValue<Vec<String>>,
    image_bytes: StoredValue<Option<Vec<u8>>, LocalStorage>,
    /// The image id the current connection already holds.
    sent_image: StoredValue<Option<String>>,
    next_id: StoredValue<u32>,
    sent_at: StoredValue<HashMap<u32, f64>>,
    attempt: StoredValue<u32>,
    /// Bumped by every (re)connect, so a stale retry timer does nothing.
    generation: StoredValue<u32>,
    /// Where the encoder's Web Worker files are (`…/encoder.js`), ending in `/`.
    assets: StoredValue<String>,
    /// Called with each finished answer (question, answer, request id): the widget's event.
    on_answer: StoredValue<Option<AnswerHook>, LocalStorage>,
}

/// What the widget does with a finished answer.
pub type AnswerHook = Box<dyn Fn(&str, &str, u32)>;

fn now_ms() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map(|p| p.now()).unwrap_or(0.0)
}

/// A `performance.mark` for the page's milestones (`htc-connected`, `htc-encoder-ready`), so
/// tools and tests read when they happened from the browser's own performance timeline.
fn mark(name: &str) {
    if let Some(p) = web_sys::window().and_then(|w| w.performance()) {
        let _ = p.mark(name);
    }
}

fn local_storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok()?
}

fn page_origin() -> String {
    web_sys::window().and_then(|w| w.location().origin().ok()).unwrap_or_default()
}

/// This page's session key for the socket URL: random, drawn once per page load.
fn page_session() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| format!("{:012x}", (js_sys::Math::random() * 2f64.powi(48)) as u64))
}

impl Session {
    /// The page's session: the stored settings, the encoder files next to the page; not yet
    /// connected.
    pub fn new() -> Self {
        let stored = local_storage().and_then(|s| s.get_item(Settings::STORAGE_KEY).ok().flatten());
        Self::with(Settings::from_stored(stored.as_deref()), format!("{}/", page_origin()), None)
    }

    /// A session with these settings, the encoder's files under `assets` (a URL ending in
    /// `/`) and a hook for finished answers (the widget's).
    pub fn with(settings: Settings, assets: String, on_answer: Option<AnswerHook>) -> Self {
        Self {
            settings: RwSignal::new(settings),
            connection: RwSignal::new(Connection::Connecting),
            model: RwSignal::new(None),
            image: RwSignal::new(None),
            image_error: RwSignal::new(None),
            question: RwSignal::new(String::new()),
            notice: RwSignal::new(None),
            conversation: RwSignal::new(Conversation::default()),
            compute: RwSignal::new(ComputePath::Probing),
            encoder: RwSignal::new(EncoderState::Off("waiting for the worker's model card".into())),
            tokenised: RwSignal::new(None),
            compare: RwSignal::new(false),
            layer: RwSignal::new(LayerPick::Mean),
            show_anchors: RwSignal::new(false),
            client: StoredValue::new_local(None),
            runner: StoredValue::new_local(None),
            wants_encoder: StoredValue::new(false),
            codes: RwSignal::new(None),
            encoding: StoredValue::new(None),
            refused: StoredValue::new(Vec::new()),
            image_bytes: StoredValue::new_local(None),
            sent_image: StoredValue::new(None),
            next_id: StoredValue::new(1),
            sent_at: StoredValue::new(HashMap::new()),
            attempt: StoredValue::new(0),
            generation: StoredValue::new(0),
            assets: StoredValue::new(assets),
            on_answer: StoredValue::new_local(on_answer),
        }
    }

    /// Saves settings that validate (and reconnects if the worker URL or token changed).
    pub fn save_settings(self, s: Settings) -> Result<(), String> {
        s.validate()?;
        let reconnect = {
            let old = self.settings.get_untracked();
            old.worker_url != s.worker_url || old.token != s.token
        };
        if let Some(st) = local_storage() {
            let _ = st.set_item(Settings::STORAGE_KEY, &serde_json::to_string(&s).expect("serialises"));
        }
        self.settings.set(s);
        if reconnect {
            self.attempt.set_value(0);
            self.connect();
        }
        Ok(())
    }

    /// Opens a fresh connection (closing any old one).
    pub fn connect(self) {
        self.client.update_value(|c| {
            if let Some(c) = c.take() {
                c.close();
            }
        });
        self.sent_image.set_value(None);
        self.generation.update_value(|g| *g += 1);
        let generation = self.generation.get_value();
        self.connection.set(Connection::Connecting);
        let url = self.settings.get_untracked().socket_url(&page_origin(), page_session());
        let on_event = move |ev: Event| self.on_event(generation, ev);
        match Client::connect(&url, on_event) {
            Ok(c) => self.client.set_value(Some(c)),
            Err(why) => self.retry_later(why),
        }
    }

    fn on_event(self, generation: u32, ev: Event) {
        if generation != self.generation.get_value() {
            return;
        }
        match ev {
            Event::Open => {}
            Event::Message(msg) => self.on_message(*msg),
            Event::Unreadable(why) => self.notice.set(Some(why)),
            Event::Closed { code, reason } => {
                // The closed client stays until the next `connect` drops it: dropping it here
                // would free the handler that is running.
                self.sent_image.set_value(None);
                self.conversation.update(|c| c.fail_open("the connection to the worker was lost"));
                let was_ready = matches!(self.connection.get_untracked(), Connection::Ready { .. });
                let why = if reason.is_empty() { format!("closed, code {code}") } else { reason };
                if was_ready {
                    self.retry_later(why);
                } else {
                    // Never got `ready`: ask over HTTP whether the token was refused.
                    leptos::task::spawn_local(async move {
                        match self.probe_auth().await {
                            Some(401) => self.connection.set(Connection::Refused {
                                why: "the worker refused the token (401); set it under Settings".into(),
                            }),
                            Some(_) => self.retry_later(why),
                            // Not even HTTP answered: the worker is down, or it refuses this
                            // site's origin (the browser hides which).
                            None => self.retry_later(format!(
                                "cannot reach the worker from {}: it is down, or it does not allow this site \
                                 (the worker's --allow-origin)",
                                page_origin()
                            )),
                        }
                    });
                }
            }
        }
    }

    fn on_message(self, msg: ServerMessage) {
        if let ServerMessage::Ready { model, .. } = msg {
            self.attempt.set_value(0);
            mark("htc-connected");
            self.connection.set(Connection::Ready { model: model.name.clone() });
            let takes_codes =
                model.mgvq.is_some() && matches!(model.mode, Some(HtcMode::Htc | HtcMode::Discrete));
            self.model.set(Some(model));
            self.wants_encoder.set_value(takes_codes);
            if takes_codes {
                self.start_encoder();
            } else {
                self.runner.set_value(None);
                self.encoder.set(EncoderState::Off("the model takes no MGVQ codes".into()));
            }
            return;
        }
        if let ServerMessage::Error { code: ErrorCode::CodesMismatch, request_id: Some(rid), message } = &msg
        {
            if self.retry_without_codes(*rid, message) {
                return;
            }
        }
        let sent_at = self.sent_at.get_value();
        let now = now_ms();
        let mut mine = false;
        self.conversation.update(|c| {
            mine = c.apply(&msg, |rid| sent_at.get(&rid).map(|t| now - t).unwrap_or(0.0));
        });
        if let ServerMessage::Done { request_id, cancelled: false, .. } = &msg {
            let done = self.conversation.with_untracked(|c| {
                c.turns
                    .iter()
                    .find(|t| t.request_id == *request_id)
                    .map(|t| (t.question.clone(), t.answer.clone()))
            });
            if let Some((q, a)) = done {
                self.on_answer.with_value(|h| h.as_ref().map(|h| h(&q, &a, *request_id)));
            }
        }
        if let ServerMessage::Error { code, message, request_id } = &msg {
            if !mine {
                let words = error_words(*code, message);
                if request_id.is_some() && self.image.get_untracked().is_some() {
                    // The image's own request: the worker did not take the image.
                    self.sent_image.set_value(None);
                }
                if matches!(code, htc_shared::protocol::ErrorCode::WrongVersion) {
                    self.connection.set(Connection::Refused { why: words.clone() });
                }
                self.notice.set(Some(words));
            }
        }
    }

    /// The HTTP status of the worker's `/api/model` with the current token.
    async fn probe_auth(self) -> Option<u16> {
        let ws = self.settings.get_untracked().socket_url(&page_origin(), page_session());
        let http = crate::state::model_card_url(&ws)?;
        let window = web_sys::window()?;
        let resp = wasm_bindgen_futures::JsFuture::from(window.fetch_with_str(&http)).await.ok()?;
        Some(resp.dyn_into::<web_sys::Response>().ok()?.status())
    }

    fn retry_later(self, why: String) {
        self.attempt.update_value(|a| *a += 1);
        let attempt = self.attempt.get_value();
        let retry_ms = backoff_ms(attempt);
        self.connection.set(Connection::Retrying { attempt, retry_ms, why });
        let generation = self.generation.get_value();
        set_timeout(
            move || {
                if generation == self.generation.get_value() {
                    self.connect();
                }
            },
            std::time::Duration::from_millis(retry_ms as u64),
        );
    }

    /// Takes a new image: the conversation starts over.
    pub fn set_image(self, image: ChosenImage, bytes: Vec<u8>) {
        self.stop();
        if let Some(old) = self.image.get_untracked() {
            let _ = web_sys::Url::revoke_object_url(&old.url);
        }
        self.codes.set(None);
        self.encode(&image.id, &bytes);
        self.image_bytes.set_value(Some(bytes));
        self.sent_image.set_value(None);
        self.image.set(Some(image));
        self.image_error.set(None);
        self.notice.set(None);
        self.conversation.set(Conversation::default());
    }

    pub fn remove_image(self) {
        self.stop();
        if let Some(old) = self.image.get_untracked() {
            let _ = web_sys::Url::revoke_object_url(&old.url);
        }
        self.image_bytes.set_value(None);
        self.codes.set(None);
        self.encoding.set_value(None);
        self.image.set(None);
        self.conversation.set(Conversation::default());
    }

    /// Where the encoder should run: WebGPU when the probe found it (through the hand-written
    /// WGSL kernels, or burn-wgpu's when the settings ask), else the CPU; `None` while the
    /// probe runs.
    fn wanted_backend(self) -> Option<EncoderBackend> {
        match self.compute.get_untracked() {
            ComputePath::Probing => None,
            ComputePath::WebGpu { .. } => Some(
                if self.settings.with_untracked(|s| s.backend) == crate::state::BackendChoice::BurnWgpu {
                    EncoderBackend::BurnWgpu
                } else {
                    EncoderBackend::Webgpu
                },
            ),
            ComputePath::Cpu { .. } | ComputePath::CpuChosen => Some(EncoderBackend::Cpu),
        }
    }

    /// Keeps the encoder on the backend the compute path names: restarts it when the path
    /// changes (the probe finished, the setting changed, WebGPU failed), and lets the page
    /// lose the WebGPU device on request (the window's `htc-lose-device` event) to try the
    /// fallback. Call once, inside the app's reactive owner.
    pub fn follow_compute(self) {
        Effect::new(move |_| {
            let _ = self.compute.get();
            let running = self.runner.with_value(|r| r.as_ref().map(Runner::backend));
            if self.wants_encoder.get_value() && running != self.wanted_backend() {
                self.start_encoder();
            }
        });
        if let Some(window) = web_sys::window() {
            let lose = wasm_bindgen::closure::Closure::<dyn FnMut()>::new(move || {
                let _ =
                    self.runner.try_with_value(|r| r.as_ref().map(|r| r.send(&Request::LoseDevice, None)));
            });
            let _ = window.add_event_listener_with_callback("htc-lose-device", lose.as_ref().unchecked_ref());
            lose.forget();
        }
    }

    /// Starts the encoder's Web Worker on the wanted backend (again, if it runs on another)
    /// and asks it to load the worker's encoder.
    fn start_encoder(self) {
        let Some(url) =
            runner::manifest_url(&self.settings.get_untracked().socket_url(&page_origin(), page_session()))
        else {
            self.encoder.set(EncoderState::Off("the worker URL is not ws:// or wss://".into()));
            return;
        };
        let Some(backend) = self.wanted_backend() else {
            self.encoder.set(EncoderState::Off("waiting for the WebGPU probe".into()));
            return;
        };
        if self.runner.with_value(|r| r.as_ref().is_some_and(|r| r.backend() != backend)) {
            self.encoding.set_value(None);
            self.runner.set_value(None);
        }
        if self.runner.with_value(Option::is_none) {
            match Runner::start(&self.assets.get_value(), backend, move |reply, bytes| {
                self.on_runner(reply, bytes)
            }) {
                Ok(r) => self.runner.set_value(Some(r)),
                Err(why) => {
                    self.encoder.set(EncoderState::Failed(why));
                    return;
                }
            }
        }
        self.encoder.set(EncoderState::Loading { loaded: 0, total: 0, from_cache: false });
        let sent = self
            .runner
            .with_value(|r| r.as_ref().map(|r| r.send(&Request::Load { manifest_url: url, backend }, None)));
        if let Some(Err(why)) = sent {
            self.encoder.set(EncoderState::Failed(why));
        }
    }

    /// WebGPU failed in the encoder (refused, lost, or its Web Worker died): the compute path
    /// becomes the CPU, saying why, and [`Session::follow_compute`] restarts the encoder there.
    /// The image under way is encoded again once the CPU encoder is loaded.
    fn fall_back_to_cpu(self, message: String) {
        self.encoding.set_value(None);
        self.codes.set(None);
        // Not from inside the failing Web Worker's own message handler, which the restart drops.
        leptos::task::spawn_local(async move {
            self.compute
                .set(ComputePath::Cpu { reason: format!("WebGPU failed in the encoder ({message})") });
        });
    }

    fn on_runner(self, reply: Reply, bytes: Option<Vec<u8>>) {
        match reply {
            // `Runner` consumes it (it sends the requests it held back).
            Reply::Started => {}
            Reply::Progress { loaded, total, from_cache } => {
                self.encoder.set(EncoderState::Loading { loaded, total, from_cache })
            }
            Reply::Loaded { bytes: size, downloaded, ms, warmup_ms, backend, .. } => {
                mark("htc-encoder-ready");
                self.encoder.set(EncoderState::Ready {
                    backend: backend.name().into(),
                    bytes: size,
                    downloaded,
                    ms,
                    warmup_ms,
                });
                // An image chosen while the weights were coming: encode it now.
                if let (Some(img), None) = (self.image.get_untracked(), self.codes.get_untracked()) {
                    if let Some(b) = self.image_bytes.with_value(|b| b.clone()) {
                        self.encode(&img.id, &b);
                    }
                }
            }
            Reply::Codes { id, positions, groups, ms, backend } => {
                let Some((want, image_id)) = self.encoding.get_value() else { return };
                if want != id {
                    return;
                }
                self.encoding.set_value(None);
                let shape = CodesShape { positions, groups };
                let payload = bytes.unwrap_or_default();
                let backend = backend.name().into();
                self.codes.set(Some(ImageCodes { image_id, payload, shape, backend, ms }));
            }
            Reply::Failed { message, device: true, .. }
                if self.runner.with_value(|r| r.as_ref().is_some_and(|r| r.backend().on_webgpu())) =>
            {
                self.fall_back_to_cpu(message)
            }
            Reply::Failed { id: Some(id), message, .. } => {
                if self.encoding.get_value().is_some_and(|(want, _)| want == id) {
                    self.encoding.set_value(None);
                    self.notice.set(Some(format!("the in-browser encoder could not read this image ({message}); the worker tokenises it")));
                }
            }
            Reply::Failed { id: None, message, .. } => {
                self.encoding.set_value(None);
                self.encoder.set(EncoderState::Failed(message));
            }
        }
    }

    /// Asks the encoder for the codes of image `image_id`, if it is ready.
    fn encode(self, image_id: &str, bytes: &[u8]) {
        if !matches!(self.encoder.get_untracked(), EncoderState::Ready { .. }) {
            return;
        }
        let id = self.take_id();
        self.encoding.set_value(Some((id, image_id.to_string())));
        let sent =
            self.runner.with_value(|r| r.as_ref().map(|r| r.send(&Request::Encode { id }, Some(bytes))));
        if let Some(Err(why)) = sent {
            self.encoding.set_value(None);
            self.encoder.set(EncoderState::Failed(why));
        }
    }

    /// The worker refused the codes sent with turn `rid`'s image: sends the image again
    /// without them and asks again. Returns whether it did.
    fn retry_without_codes(self, rid: u32, message: &str) -> bool {
        let Some((question, mode)) = self.conversation.with_untracked(|c| {
            c.turns.iter().find(|t| t.request_id == rid && t.is_open()).map(|t| (t.question.clone(), t.mode))
        }) else {
            return false;
        };
        let Some(image) = self.image.get_untracked() else { return false };
        self.refused.update_value(|r| r.push(image.id.clone()));
        self.sent_image.set_value(None);
        self.conversation.update(|c| c.turns.retain(|t| t.request_id != rid));
        // That turn alone, in its mode, even while its compare partner is still answering.
        let result = self.send_turns(&question, vec![mode]);
        self.notice.set(Some(match result {
            Ok(()) => format!("{message}; the worker tokenised the image instead"),
            Err(why) => why,
        }));
        true
    }

    fn take_id(self) -> u32 {
        let id = self.next_id.get_value();
        self.next_id.set_value(id.wrapping_add(1).max(1));
        id
    }

    /// Asks `question` about the current image. Refusals come back in words.
    pub fn ask(self, question: &str) -> Result<(), String> {
        let question = question.trim();
        if question.is_empty() {
            return Err("type a question first".into());
        }
        if self.image.with_untracked(Option::is_none) {
            return Err("choose an image first".into());
        }
        if self.conversation.with_untracked(|c| c.open_turn().is_some()) {
            return Err("an answer is still coming; Stop it first".into());
        }
        // The mode chosen in the settings, where this model offers it (`None`: its own).
        let chosen = self.settings.with_untracked(|s| s.mode);
        let asked =
            self.model.with_untracked(|m| m.as_ref().and_then(|m| crate::state::asked_mode(chosen, m)));
        // With the compare switch, the same question in mode `none` first, then in the asked
        // mode (the newest turn, which the live region shows); nothing to compare when the
        // asked mode is `none` itself.
        let own = asked.or_else(|| self.model.with_untracked(|m| m.as_ref().and_then(|m| m.mode)));
        let modes = match self.compare_mode().filter(|other| own != Some(*other)) {
            Some(other) => vec![Some(other), own],
            None => vec![asked],
        };
        let result = self.send_turns(question, modes);
        self.notice.set(None);
        result
    }

    /// Sends the image if this connection does not hold it yet, then `question` once per mode
    /// (`None`: the model's own), each a new turn.
    fn send_turns(self, question: &str, modes: Vec<Option<HtcMode>>) -> Result<(), String> {
        let Some(image) = self.image.get_untracked() else {
            return Err("choose an image first".into());
        };
        let settings = self.settings.get_untracked();
        let sent = self.sent_image.get_value();
        self.client.with_value(|c| -> Result<(), String> {
            let Some(c) = c.as_ref().filter(|c| c.is_open()) else {
                return Err("not connected to the worker".into());
            };
            if sent.as_deref() != Some(image.id.as_str()) {
                let bytes = self.image_bytes.with_value(|b| b.clone()).ok_or("the image is gone")?;
                let refused = self.refused.with_value(|r| r.contains(&image.id));
                let codes = self.codes.get_untracked().filter(|k| k.image_id == image.id && !refused);
                let layout = self.model.get_untracked().as_ref().and_then(crate::layout::model_layout);
                c.send_image(
                    self.take_id(),
                    &image.id,
                    &bytes,
                    codes.as_ref().map(|k| (&k.payload[..], k.shape)),
                    layout,
                )?;
                self.sent_image.set_value(Some(image.id.clone()));
                let words = tokenised_words(codes.as_ref().map(|k| (k.backend.as_str(), k.ms)));
                let words = if refused {
                    format!("{words} (the browser's codes differed from the worker's)")
                } else {
                    words
                };
                self.tokenised.set(Some(words));
            }
            for mode in modes {
                let rid = self.take_id();
                self.sent_at.update_value(|m| {
                    m.insert(rid, now_ms());
                });
                self.conversation.update(|conv| conv.turns.push(Turn { mode, ..Turn::new(rid, question) }));
                c.ask(rid, &image.id, question, &settings, mode)?;
            }
            Ok(())
        })
    }

    /// The mode the compare switch adds, when it is on and the model offers `none` beside a
    /// compressed mode.
    pub fn compare_mode(self) -> Option<HtcMode> {
        let offered = self.model.with_untracked(|m| m.as_ref().and_then(crate::state::compare_mode));
        offered.filter(|_| self.compare.get_untracked())
    }

    /// Stops the answers that are coming, if any.
    pub fn stop(self) {
        let open: Vec<u32> = self
            .conversation
            .with_untracked(|c| c.turns.iter().filter(|t| t.is_open()).map(|t| t.request_id).collect());
        for rid in open {
            let sent = self.client.with_value(|c| c.as_ref().map(|c| c.cancel(rid).is_ok()).unwrap_or(false));
            if !sent {
                self.conversation.update(|c| {
                    if let Some(t) = c.turn_mut(rid) {
                        t.status = TurnStatus::Stopped;
                    }
                });
            }
        }
    }

    /// Asks the last question again.
    pub fn regenerate(self) -> Result<(), String> {
        let last = self.conversation.with_untracked(|c| c.turns.last().map(|t| t.question.clone()));
        match last {
            Some(q) => self.ask(&q),
            None => Err("nothing to regenerate yet".into()),
        }
    }
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}
