//! Asking: a question (in the model's own mode or the settings' choice, with the compare
//! switch's mode beside it), sending the image once per connection with the page's codes
//! (waiting for the in-browser encoder when it is still loading or encoding the image),
//! asking again without them when the worker refuses them, stopping and regenerating.

use htc_shared::config::HtcMode;
use leptos::prelude::*;

use super::{now_ms, Session};
use crate::state::{tokenised_words, Turn, TurnStatus};

impl Session {
    /// The worker refused the codes sent with turn `rid`'s image: sends the image again
    /// without them and asks again. Returns whether it did.
    pub(super) fn retry_without_codes(self, rid: u32, message: &str) -> bool {
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
        if self.waiting.with_value(Option::is_some) {
            return Err("the last question is waiting for the in-browser encoder".into());
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
        self.notice.set(None);
        if self.codes_coming() {
            let wait = self.waits.get_value() + 1;
            self.waits.set_value(wait);
            self.waiting.set_value(Some((wait, question.to_string(), modes)));
            self.notice.set(Some(format!(
                "waiting for the in-browser encoder's codes (up to {} s) before sending the image",
                super::ENCODER_WAIT_MS / 1000
            )));
            leptos::prelude::set_timeout(
                move || self.send_waiting(Some(wait)),
                std::time::Duration::from_millis(super::ENCODER_WAIT_MS),
            );
            return Ok(());
        }
        self.send_turns(question, modes)
    }

    /// Whether the current image's codes are still to come from the in-browser encoder: the
    /// model takes them, this connection has not been sent the image, and the encoder is
    /// loading, or encoding this image.
    fn codes_coming(self) -> bool {
        let Some(image) = self.image.get_untracked() else { return false };
        if !self.wants_encoder.get_value()
            || self.sent_image.get_value().as_deref() == Some(image.id.as_str())
            || self.codes.with_untracked(|k| k.as_ref().is_some_and(|k| k.image_id == image.id))
            || self.refused.with_value(|r| r.contains(&image.id))
        {
            return false;
        }
        match self.encoder.get_untracked() {
            crate::state::EncoderState::Loading { .. } => true,
            crate::state::EncoderState::Ready { .. } => {
                self.encoding.get_value().is_some_and(|(_, id)| id == image.id)
            }
            _ => false,
        }
    }

    /// Sends the question that waits for the encoder, if any: when the codes came or the
    /// encoder failed (`timer: None`), or when wait `timer`'s time is up (then the image goes
    /// without codes, and the notice says so).
    pub(super) fn send_waiting(self, timer: Option<u32>) {
        let Some((wait, question, modes)) = self.waiting.get_value() else { return };
        if timer.is_some_and(|t| t != wait) {
            return;
        }
        self.waiting.set_value(None);
        let result = self.send_turns(&question, modes);
        self.notice.set(match (result, timer) {
            (Err(why), _) => Some(why),
            (Ok(()), Some(_)) => Some(format!(
                "the in-browser encoder had no codes after {} s: the image went without them, and the worker tokenised it",
                super::ENCODER_WAIT_MS / 1000
            )),
            (Ok(()), None) => None,
        });
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
