//! The page's session: the reactive state every component reads ([`Session`], provided as a
//! leptos context) and the actions that talk to the worker through [`Client`], one module per
//! concern:
//!
//! - `connection`: connect and reconnect with backoff, the worker's messages, settings that
//!   change the connection;
//! - `image`: take or remove the image;
//! - `encoder`: run the in-browser encoder ([`Runner`]) on the compute path's backend and
//!   keep the current image's MGVQ codes;
//! - `asking`: send the image once per connection (with the page's codes), ask, stop,
//!   regenerate.

use std::collections::HashMap;

use htc_shared::protocol::{CodesShape, ModelCard};
use leptos::prelude::*;

mod asking;
mod connection;
mod encoder;
mod image;

use crate::client::Client;
use crate::compute::ComputePath;
use crate::runner::Runner;
use crate::state::{Connection, Conversation, EncoderState, LayerPick, Settings};

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
    /// A question asked while the encoder was still loading or encoding its image: it goes
    /// once the codes come (or the encoder fails, or [`ENCODER_WAIT_MS`] pass). The counter
    /// tells a stale timer from the current wait.
    waiting: StoredValue<Option<WaitingAsk>>,
    waits: StoredValue<u32>,
    image_bytes: StoredValue<Option<Vec<u8>>, LocalStorage>,
    /// The image id the current connection already holds.
    sent_image: StoredValue<Option<String>>,
    next_id: StoredValue<u32>,
    sent_at: StoredValue<HashMap<u32, f64>>,
    attempt: StoredValue<u32>,
    /// Bumped by every (re)connect, so a stale retry timer does nothing.
    generation: StoredValue<u32>,
    /// Where the encoder thread's files are (`…/encoder.js`), ending in `/`.
    assets: StoredValue<String>,
    /// Called with each finished answer (question, answer, request id): the widget's event.
    on_answer: StoredValue<Option<AnswerHook>, LocalStorage>,
}

/// What the widget does with a finished answer.
pub type AnswerHook = Box<dyn Fn(&str, &str, u32)>;

/// A question waiting for the encoder: its wait's number, the question, and its modes.
type WaitingAsk = (u32, String, Vec<Option<htc_shared::config::HtcMode>>);

/// How long a question waits for the in-browser encoder's codes before its image is sent
/// without them (the worker then tokenises it).
pub const ENCODER_WAIT_MS: u64 = 15_000;

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
            waiting: StoredValue::new(None),
            waits: StoredValue::new(0),
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

    /// A new request id (runner and worker requests share the counter; never 0).
    fn take_id(self) -> u32 {
        let id = self.next_id.get_value();
        self.next_id.set_value(id.wrapping_add(1).max(1));
        id
    }
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}
