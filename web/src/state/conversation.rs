//! The conversation: the turns of questions and answers about the current image, fed by the
//! worker's messages, and the worker's errors in words.

use htc_shared::protocol::{ErrorCode, ServerMessage, Timings};

use super::AttentionMaps;

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
}
