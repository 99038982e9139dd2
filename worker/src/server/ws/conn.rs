//! One WebSocket connection's state and its handlers, one per client message (`hello`,
//! `image`, `ask`, `cancel`) and one for binary frames. Every refusal is an `error` frame; the
//! connection stays up.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lru::LruCache;
use tokio::sync::mpsc;

use htc_shared::mask::MaskLayout;
use htc_shared::protocol::{
    self, BinaryKind, ClientMessage, CodesShape, ErrorCode, ProtocolError, ServerMessage, PROTOCOL_VERSION,
};

use super::Inflight;
use crate::runtime::engine::{Job, Question, UploadedImage};
use crate::runtime::sampling::Sampling;
use crate::server::upload::decode_upload;
use crate::server::App;

/// Images one connection keeps; the least recently used one makes room for a new one.
const MAX_IMAGES_PER_CONNECTION: usize = 32;

/// An image announced by an `image` message, waiting for its binary frames.
struct Pending {
    image_id: String,
    byte_len: usize,
    codes: Option<CodesShape>,
    bytes: Option<Vec<u8>>,
    decoded_codes: Option<Vec<Vec<u16>>>,
}

impl Pending {
    fn complete(&self) -> bool {
        self.bytes.is_some() && (self.codes.is_none() || self.decoded_codes.is_some())
    }
}

/// The fields of an `ask` message.
struct Ask {
    request_id: u32,
    image_id: String,
    question: Option<String>,
    prompt_ids: Option<Vec<u32>>,
    sampling: Sampling,
    mode: Option<htc_shared::config::HtcMode>,
}

pub(super) struct Conn {
    app: App,
    tx: mpsc::UnboundedSender<ServerMessage>,
    inflight: Inflight,
    hello: bool,
    /// Shared with the writer: send attention maps as f16 binary frames.
    attention_f16: Arc<AtomicBool>,
    pending: HashMap<u32, Pending>,
    images: LruCache<String, UploadedImage>,
}

impl Conn {
    pub(super) fn new(
        app: App, tx: mpsc::UnboundedSender<ServerMessage>, inflight: Inflight,
        attention_f16: Arc<AtomicBool>,
    ) -> Self {
        let cap = NonZeroUsize::new(MAX_IMAGES_PER_CONNECTION).expect("non-zero");
        let (pending, images) = (HashMap::new(), LruCache::new(cap));
        Self { app, tx, inflight, hello: false, attention_f16, pending, images }
    }

    fn send(&self, m: ServerMessage) {
        if let ServerMessage::Error { code, .. } = &m {
            self.app.engine.metrics.errors.with_label_values(&[&format!("{code:?}")]).inc();
        }
        let _ = self.tx.send(m);
    }

    fn reject(&self, request_id: Option<u32>, e: ProtocolError) {
        self.send(e.to_message(request_id));
    }

    /// Sends an `error` frame.
    pub(super) fn refuse(&self, request_id: Option<u32>, code: ErrorCode, message: impl Into<String>) {
        self.reject(request_id, ProtocolError::new(code, message));
    }

    pub(super) async fn on_text(&mut self, text: &str) {
        let msg = match protocol::decode_client(text) {
            Ok(m) => m,
            Err(e) => return self.reject(None, e),
        };
        match msg {
            ClientMessage::Hello { version, capabilities } => self.on_hello(version, &capabilities),
            _ if !self.hello => self.refuse(None, ErrorCode::NotReady, "send `hello` first"),
            ClientMessage::Image { request_id, image_id, byte_len, codes, mask_layout } => {
                let r = self.on_image(request_id, image_id, byte_len, codes, mask_layout);
                if let Err(e) = r {
                    self.reject(Some(request_id), e);
                }
            }
            ClientMessage::Ask {
                request_id,
                image_id,
                question,
                prompt_ids,
                max_new_tokens,
                temperature,
                top_p,
                seed,
                mode,
            } => {
                let sampling = Sampling { max_new_tokens, temperature, top_p, seed };
                self.on_ask(Ask { request_id, image_id, question, prompt_ids, sampling, mode })
            }
            ClientMessage::Cancel { request_id } => self.on_cancel(request_id),
        }
    }

    fn on_hello(&mut self, version: u32, capabilities: &[String]) {
        if version != PROTOCOL_VERSION {
            return self.refuse(
                None,
                ErrorCode::WrongVersion,
                format!("protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"),
            );
        }
        self.hello = true;
        let f16 = capabilities.iter().any(|c| c == protocol::CAP_ATTENTION_F16);
        self.attention_f16.store(f16, Ordering::Relaxed);
        self.send(ServerMessage::Ready { version: PROTOCOL_VERSION, model: self.app.engine.card.clone() });
    }

    /// Checks an announced image against the limits and the model, then waits for its frames.
    fn on_image(
        &mut self, request_id: u32, image_id: String, byte_len: usize, codes: Option<CodesShape>,
        mask_layout: Option<MaskLayout>,
    ) -> Result<(), ProtocolError> {
        let max = self.app.args.max_image_bytes;
        if byte_len == 0 || byte_len > max {
            let m = format!("image of {byte_len} bytes is outside 1..={max} bytes");
            return Err(ProtocolError::new(ErrorCode::BadImage, m));
        }
        let card = &self.app.engine.card;
        if let Some(shape) = codes {
            let Some(m) = &card.mgvq else {
                return Err(ProtocolError::new(ErrorCode::BadCodes, "this model uses no MGVQ codes"));
            };
            let want = CodesShape { positions: m.latent_side().pow(2), groups: m.groups };
            if shape != want {
                let m = format!(
                    "codes shape {}x{} does not match the model's {}x{}",
                    shape.positions, shape.groups, want.positions, want.groups
                );
                return Err(ProtocolError::new(ErrorCode::BadCodes, m));
            }
        }
        if let Some(l) = mask_layout {
            if (l.n_discrete, l.n_visual, l.n_voco) != (card.n_discrete, card.image_tokens, card.n_voco) {
                let m = format!(
                    "mask layout ({}, {}, {}) does not match the model's (n_discrete {}, n_visual {}, n_voco {})",
                    l.n_discrete, l.n_visual, l.n_voco, card.n_discrete, card.image_tokens, card.n_voco
                );
                return Err(ProtocolError::new(ErrorCode::BadRequest, m));
            }
        }
        let p = Pending { image_id, byte_len, codes, bytes: None, decoded_codes: None };
        self.pending.insert(request_id, p);
        Ok(())
    }

    fn on_ask(&mut self, ask: Ask) {
        let rid = ask.request_id;
        if let Err(e) = self.admit(ask) {
            self.reject(Some(rid), e);
        }
    }

    /// Validates a question and queues it for the engine.
    fn admit(&mut self, ask: Ask) -> Result<(), ProtocolError> {
        let a = &self.app.args;
        let request_id = ask.request_id;
        if self.app.is_shutting_down() {
            return Err(ProtocolError::new(ErrorCode::Busy, "the server is shutting down"));
        }
        let Some(image) = self.images.get(&ask.image_id).cloned() else {
            let m =
                format!("unknown image id `{}` (send an `image` message and its bytes first)", ask.image_id);
            return Err(ProtocolError::new(ErrorCode::UnknownImage, m));
        };
        let question = Question::new(ask.question, ask.prompt_ids, a.max_question_chars)?;
        ask.sampling.validate().map_err(|m| ProtocolError::new(ErrorCode::BadRequest, m))?;
        let cancel = Arc::new(AtomicBool::new(false));
        {
            let mut inflight = self.inflight.lock().expect("inflight lock");
            if inflight.contains_key(&request_id) {
                // No request id on this error: it must not end the running request.
                drop(inflight);
                let m = format!("request id {request_id} is already in flight");
                self.refuse(None, ErrorCode::BadRequest, m);
                return Ok(());
            }
            if inflight.len() >= a.max_inflight_per_connection {
                let m = format!(
                    "this connection already has {} questions in flight",
                    a.max_inflight_per_connection
                );
                return Err(ProtocolError::new(ErrorCode::Busy, m));
            }
            inflight.insert(request_id, cancel.clone());
        }
        let reply = self.tx.clone();
        let image = Some(image);
        let job = Job { request_id, image, question, sampling: ask.sampling, mode: ask.mode, cancel, reply };
        if self.app.engine.submit(job).is_err() {
            self.inflight.lock().expect("inflight lock").remove(&request_id);
            return Err(ProtocolError::new(ErrorCode::Busy, "the request queue is full; try again shortly"));
        }
        Ok(())
    }

    fn on_cancel(&mut self, request_id: u32) {
        if let Some(flag) = self.inflight.lock().expect("inflight lock").get(&request_id) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// Image bytes or codes for an announced image; decodes the image once all have come.
    pub(super) async fn on_binary(&mut self, frame: &[u8]) {
        let f = match protocol::decode_binary(frame) {
            Ok(f) => f,
            Err(e) => return self.reject(None, e),
        };
        let rid = f.request_id;
        if let Err(e) = self.take_frame(rid, f.kind, f.payload) {
            self.pending.remove(&rid);
            return self.reject(Some(rid), e);
        }
        if !self.pending.get(&rid).is_some_and(Pending::complete) {
            return;
        }
        let p = self.pending.remove(&rid).expect("present");
        let bytes = p.bytes.expect("complete");
        match decode_upload(&self.app.engine, &self.app.args, bytes, p.decoded_codes).await {
            Ok(img) => {
                self.images.put(p.image_id, img);
            }
            Err(e) => self.reject(Some(rid), e),
        }
    }

    fn take_frame(&mut self, rid: u32, kind: BinaryKind, payload: &[u8]) -> Result<(), ProtocolError> {
        let per = self.app.engine.card.mgvq.as_ref().map(|m| m.codes_per_group()).unwrap_or(0);
        let Some(p) = self.pending.get_mut(&rid) else {
            let m = format!("binary frame for request {rid}, which announced no image");
            return Err(ProtocolError::new(ErrorCode::BadFrame, m));
        };
        match kind {
            BinaryKind::ImageBytes => {
                if payload.len() != p.byte_len {
                    let m = format!(
                        "image frame has {} bytes; the `image` message announced {}",
                        payload.len(),
                        p.byte_len
                    );
                    return Err(ProtocolError::new(ErrorCode::BadImage, m));
                }
                p.bytes = Some(payload.to_vec());
            }
            BinaryKind::Codes => {
                let Some(shape) = p.codes else {
                    let m = "codes frame for an image that announced no codes";
                    return Err(ProtocolError::new(ErrorCode::BadCodes, m));
                };
                p.decoded_codes = Some(protocol::decode_codes(payload, shape, per)?);
            }
            BinaryKind::AttentionF16 => {
                let m = "attention frames go from the worker to the page, not the other way";
                return Err(ProtocolError::new(ErrorCode::BadFrame, m));
            }
        }
        Ok(())
    }
}
