//! The worker client: one WebSocket speaking `htc_shared::protocol` (hello, image + binary
//! frames, ask, cancel), handing every server message and every open/close to one callback.
//! Reconnecting is the app's decision (see `state::backoff_ms`); this type is one connection.

use std::cell::RefCell;
use std::rc::Rc;

use htc_shared::mask::MaskLayout;
use htc_shared::protocol::{self, BinaryKind, ClientMessage, CodesShape, ServerMessage, PROTOCOL_VERSION};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

/// What the connection reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// The socket opened and `hello` went out.
    Open,
    Message(Box<ServerMessage>),
    /// A frame the page could not read (the protocol's messages are JSON text frames).
    Unreadable(String),
    /// The socket closed (`code`, `reason`).
    Closed {
        code: u16,
        reason: String,
    },
}

type Handlers =
    (Closure<dyn FnMut(web_sys::Event)>, Closure<dyn FnMut(MessageEvent)>, Closure<dyn FnMut(CloseEvent)>);

/// One connection to the worker.
pub struct Client {
    socket: WebSocket,
    // Kept alive as long as the socket may call them.
    _handlers: Rc<RefCell<Option<Handlers>>>,
}

impl Client {
    /// Opens `url` and sends `hello` when it opens; every event goes to `on_event`.
    pub fn connect(url: &str, on_event: impl Fn(Event) + 'static) -> Result<Self, String> {
        let socket = WebSocket::new(url).map_err(|e| format!("cannot open {url}: {}", js_text(&e)))?;
        socket.set_binary_type(BinaryType::Arraybuffer);
        let on_event = Rc::new(on_event);
        let (e1, e2, e3) = (on_event.clone(), on_event.clone(), on_event);
        let hello_socket = socket.clone();
        let on_open = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
            let hello =
                ClientMessage::Hello { version: PROTOCOL_VERSION, capabilities: vec!["mgvq-codes".into()] };
            let _ = hello_socket.send_with_str(&serde_json::to_string(&hello).expect("serialises"));
            e1(Event::Open);
        });
        let on_message =
            Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| match ev.data().as_string() {
                Some(text) => match serde_json::from_str::<ServerMessage>(&text) {
                    Ok(m) => e2(Event::Message(Box::new(m))),
                    Err(err) => e2(Event::Unreadable(format!("unreadable message from the worker: {err}"))),
                },
                None => e2(attention_frame(&js_sys::Uint8Array::new(&ev.data()).to_vec())),
            });
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |ev: CloseEvent| {
            e3(Event::Closed { code: ev.code(), reason: ev.reason() });
        });
        socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        Ok(Self { socket, _handlers: Rc::new(RefCell::new(Some((on_open, on_message, on_close)))) })
    }

    fn send(&self, m: &ClientMessage) -> Result<(), String> {
        let text = serde_json::to_string(m).expect("client messages serialise");
        self.socket.send_with_str(&text).map_err(|e| format!("send failed: {}", js_text(&e)))
    }

    /// Sends an image: the `image` message (with the sequence layout the page built, which the
    /// worker checks), then its bytes as a binary frame with the same id, and then, when the
    /// page computed them, its MGVQ codes (the protocol's codes frame).
    pub fn send_image(
        &self, request_id: u32, image_id: &str, bytes: &[u8], codes: Option<(&[u8], CodesShape)>,
        mask_layout: Option<MaskLayout>,
    ) -> Result<(), String> {
        self.send(&ClientMessage::Image {
            request_id,
            image_id: image_id.to_string(),
            byte_len: bytes.len(),
            codes: codes.map(|c| c.1),
            mask_layout,
        })?;
        let frame = protocol::encode_binary(BinaryKind::ImageBytes, request_id, bytes);
        self.socket.send_with_u8_array(&frame).map_err(|e| format!("send failed: {}", js_text(&e)))?;
        if let Some((payload, _)) = codes {
            let frame = protocol::encode_binary(BinaryKind::Codes, request_id, payload);
            self.socket.send_with_u8_array(&frame).map_err(|e| format!("send failed: {}", js_text(&e)))?;
        }
        Ok(())
    }

    /// Asks a question about an image sent before, in the model's own mode or in `mode`.
    pub fn ask(
        &self, request_id: u32, image_id: &str, question: &str, s: &crate::state::Settings,
        mode: Option<htc_shared::config::HtcMode>,
    ) -> Result<(), String> {
        self.send(&ClientMessage::Ask {
            request_id,
            image_id: image_id.to_string(),
            question: Some(question.to_string()),
            prompt_ids: None,
            max_new_tokens: s.max_new_tokens,
            temperature: s.temperature,
            top_p: s.top_p,
            seed: 0,
            mode,
        })
    }

    pub fn cancel(&self, request_id: u32) -> Result<(), String> {
        self.send(&ClientMessage::Cancel { request_id })
    }

    /// Whether the socket is open.
    pub fn is_open(&self) -> bool {
        self.socket.ready_state() == WebSocket::OPEN
    }

    /// Closes the socket and drops its handlers (no further events).
    pub fn close(&self) {
        self.socket.set_onopen(None);
        self.socket.set_onmessage(None);
        self.socket.set_onclose(None);
        let _ = self.socket.close();
        self._handlers.borrow_mut().take();
    }
}

/// A binary frame from the worker: attention maps as f16 (the only kind it sends), read into
/// the same message as their JSON form.
fn attention_frame(frame: &[u8]) -> Event {
    let read = protocol::decode_binary(frame).and_then(|f| match f.kind {
        BinaryKind::AttentionF16 => {
            protocol::decode_attention_f16(f.payload).map(|(n_discrete, n_visual, layers)| {
                ServerMessage::Attention { request_id: f.request_id, n_discrete, n_visual, layers }
            })
        }
        other => Err(protocol::ProtocolError::new(
            protocol::ErrorCode::BadFrame,
            format!("unexpected {other:?} frame from the worker"),
        )),
    });
    match read {
        Ok(m) => Event::Message(Box::new(m)),
        Err(e) => Event::Unreadable(format!("unreadable binary frame from the worker: {}", e.message)),
    }
}

/// A JS error value as text.
pub fn js_text(v: &wasm_bindgen::JsValue) -> String {
    v.as_string()
        .or_else(|| v.dyn_ref::<js_sys::Error>().map(|e| String::from(e.message())))
        .unwrap_or_else(|| format!("{v:?}"))
}
