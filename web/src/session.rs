//! The page's session: the reactive state every component reads ([`Session`], provided as a
//! leptos context) and the actions that talk to the worker through [`Client`]: connect and
//! reconnect with backoff, send the image once per connection, ask, stop, regenerate.

use std::collections::HashMap;

use htc_shared::protocol::{ModelCard, ServerMessage};
use leptos::prelude::*;
use wasm_bindgen::JsCast;

use crate::client::{Client, Event};
use crate::compute::ComputePath;
use crate::state::{
    backoff_ms, error_words, Connection, Conversation, LayerPick, Settings, Turn, TurnStatus,
};

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
    /// Problems that belong to no turn (a refused image, an unreadable frame).
    pub notice: RwSignal<Option<String>>,
    pub conversation: RwSignal<Conversation>,
    pub compute: RwSignal<ComputePath>,
    pub layer: RwSignal<LayerPick>,
    /// The attention view shows patches (heatmap) or anchors (bars) first.
    pub show_anchors: RwSignal<bool>,
    client: StoredValue<Option<Client>, LocalStorage>,
    image_bytes: StoredValue<Option<Vec<u8>>, LocalStorage>,
    /// The image id the current connection already holds.
    sent_image: StoredValue<Option<String>>,
    next_id: StoredValue<u32>,
    sent_at: StoredValue<HashMap<u32, f64>>,
    attempt: StoredValue<u32>,
    /// Bumped by every (re)connect, so a stale retry timer does nothing.
    generation: StoredValue<u32>,
}

fn now_ms() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map(|p| p.now()).unwrap_or(0.0)
}

fn local_storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok()?
}

fn page_origin() -> String {
    web_sys::window().and_then(|w| w.location().origin().ok()).unwrap_or_default()
}

impl Session {
    /// A session with the stored settings, not yet connected.
    pub fn new() -> Self {
        let stored = local_storage().and_then(|s| s.get_item(Settings::STORAGE_KEY).ok().flatten());
        Self {
            settings: RwSignal::new(Settings::from_stored(stored.as_deref())),
            connection: RwSignal::new(Connection::Connecting),
            model: RwSignal::new(None),
            image: RwSignal::new(None),
            image_error: RwSignal::new(None),
            notice: RwSignal::new(None),
            conversation: RwSignal::new(Conversation::default()),
            compute: RwSignal::new(ComputePath::Probing),
            layer: RwSignal::new(LayerPick::Mean),
            show_anchors: RwSignal::new(false),
            client: StoredValue::new_local(None),
            image_bytes: StoredValue::new_local(None),
            sent_image: StoredValue::new(None),
            next_id: StoredValue::new(1),
            sent_at: StoredValue::new(HashMap::new()),
            attempt: StoredValue::new(0),
            generation: StoredValue::new(0),
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
        let url = self.settings.get_untracked().socket_url(&page_origin());
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
                            _ => self.retry_later(why),
                        }
                    });
                }
            }
        }
    }

    fn on_message(self, msg: ServerMessage) {
        if let ServerMessage::Ready { model, .. } = msg {
            self.attempt.set_value(0);
            self.connection.set(Connection::Ready { model: model.name.clone() });
            self.model.set(Some(model));
            return;
        }
        let sent_at = self.sent_at.get_value();
        let now = now_ms();
        let mut mine = false;
        self.conversation.update(|c| {
            mine = c.apply(&msg, |rid| sent_at.get(&rid).map(|t| now - t).unwrap_or(0.0));
        });
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
        let ws = self.settings.get_untracked().socket_url(&page_origin());
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
        self.image.set(None);
        self.conversation.set(Conversation::default());
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
        let Some(image) = self.image.get_untracked() else {
            return Err("choose an image first".into());
        };
        if self.conversation.with_untracked(|c| c.open_turn().is_some()) {
            return Err("an answer is still coming; Stop it first".into());
        }
        let settings = self.settings.get_untracked();
        let sent = self.sent_image.get_value();
        let result = self.client.with_value(|c| -> Result<(), String> {
            let Some(c) = c.as_ref().filter(|c| c.is_open()) else {
                return Err("not connected to the worker".into());
            };
            if sent.as_deref() != Some(image.id.as_str()) {
                let bytes = self.image_bytes.with_value(|b| b.clone()).ok_or("the image is gone")?;
                c.send_image(self.take_id(), &image.id, &bytes)?;
                self.sent_image.set_value(Some(image.id.clone()));
            }
            let rid = self.take_id();
            self.sent_at.update_value(|m| {
                m.insert(rid, now_ms());
            });
            self.conversation.update(|conv| conv.turns.push(Turn::new(rid, question)));
            c.ask(rid, &image.id, question, &settings)
        });
        self.notice.set(None);
        result
    }

    /// Stops the answer that is coming, if any.
    pub fn stop(self) {
        let Some(rid) = self.conversation.with_untracked(|c| c.open_turn().map(|t| t.request_id)) else {
            return;
        };
        let sent = self.client.with_value(|c| c.as_ref().map(|c| c.cancel(rid).is_ok()).unwrap_or(false));
        if !sent {
            self.conversation.update(|c| {
                if let Some(t) = c.turn_mut(rid) {
                    t.status = TurnStatus::Stopped;
                }
            });
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
