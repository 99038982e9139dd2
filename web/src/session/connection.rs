//! The connection to the worker: settings that change it, connecting and reconnecting with
//! backoff, the worker's messages, and asking over HTTP why a socket was refused.

use htc_shared::config::HtcMode;
use htc_shared::protocol::{ErrorCode, ServerMessage};
use leptos::prelude::*;
use wasm_bindgen::JsCast;

use super::{local_storage, mark, now_ms, page_origin, page_session, Session};
use crate::client::{Client, Event};
use crate::state::{backoff_ms, error_words, Connection, EncoderState, Settings};

impl Session {
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
}
