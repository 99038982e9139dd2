//! The page's side of the runner: [`Runner`] starts the encoder thread (a Web Worker running
//! the `encoder` binary), holds the requests back until the thread says it has started, sends
//! them, and hands every reply to one callback. [`pack`] and [`unpack`] are the message format
//! both sides share.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Array, Reflect, Uint8Array};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{Blob, BlobPropertyBag, MessageEvent, Url, Worker, WorkerOptions, WorkerType};

use super::{EncoderBackend, Reply, Request};
use crate::client::js_text;

/// A message: the JSON text of a request or reply, and its bytes (or `undefined`).
pub(super) fn pack(json: String, bytes: Option<&[u8]>) -> Array {
    let a = Array::new();
    a.push(&JsValue::from_str(&json));
    a.push(&bytes.map(|b| JsValue::from(Uint8Array::from(b))).unwrap_or(JsValue::UNDEFINED));
    a
}

/// The JSON text and bytes of a message [`pack`] made.
pub(super) fn unpack(data: JsValue) -> Result<(String, Option<Vec<u8>>), String> {
    let a: Array = data.dyn_into().map_err(|_| "a runner message is not an array".to_string())?;
    let json = a.get(0).as_string().ok_or("a runner message has no JSON text")?;
    let bytes = a.get(1).dyn_into::<Uint8Array>().ok().map(|u| u.to_vec());
    Ok((json, bytes))
}

/// The page's handle on the encoder thread. Requests wait until the thread says it has
/// started: before its wasm is instantiated it has no message handler, and a message
/// dispatched then would be lost.
pub struct Runner {
    /// The encoder thread (the browser's `Worker` object).
    thread: Worker,
    backend: EncoderBackend,
    /// `None` once started; until then, the requests waiting.
    waiting: Rc<RefCell<Option<Vec<Array>>>>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_error: Closure<dyn FnMut(web_sys::Event)>,
}

impl Runner {
    /// Starts the encoder thread from the encoder's files under `assets` (a URL ending in `/`,
    /// maybe on another origin: the widget's); every reply (with its bytes) goes to
    /// `on_reply`. The thread's Web Worker script is a `blob:` that imports them, since a page
    /// may only start Web Workers from its own origin.
    pub fn start(
        assets: &str, backend: EncoderBackend, on_reply: impl Fn(Reply, Option<Vec<u8>>) + 'static,
    ) -> Result<Self, String> {
        let script = format!(
            "importScripts({:?}); wasm_bindgen({{ module_or_path: {:?} }});",
            format!("{assets}encoder.js"),
            format!("{assets}encoder_bg.wasm")
        );
        let fail = |e: JsValue| format!("cannot start the encoder's Web Worker: {}", js_text(&e));
        let bag = BlobPropertyBag::new();
        bag.set_type("text/javascript");
        let blob =
            Blob::new_with_str_sequence_and_options(&Array::of1(&script.into()), &bag).map_err(fail)?;
        let url = Url::create_object_url_with_blob(&blob).map_err(fail)?;
        let opts = WorkerOptions::new();
        opts.set_type(WorkerType::Classic);
        // The URL stays valid for the page's life (a few bytes): a Web Worker may fetch its
        // script after construction.
        let thread = Worker::new_with_options(&url, &opts).map_err(fail)?;
        let on_reply = Rc::new(on_reply);
        let r1 = on_reply.clone();
        let waiting: Rc<RefCell<Option<Vec<Array>>>> = Rc::new(RefCell::new(Some(Vec::new())));
        let (waiting1, thread1) = (waiting.clone(), thread.clone());
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |ev: MessageEvent| {
            match unpack(ev.data()).and_then(|(json, bytes)| {
                serde_json::from_str::<Reply>(&json).map(|r| (r, bytes)).map_err(|e| e.to_string())
            }) {
                Ok((Reply::Started, _)) => {
                    for m in waiting1.borrow_mut().take().unwrap_or_default() {
                        let _ = thread1.post_message(&m);
                    }
                }
                Ok((reply, bytes)) => r1(reply, bytes),
                Err(why) => r1(
                    Reply::Failed {
                        id: None,
                        message: format!("unreadable runner reply: {why}"),
                        device: false,
                    },
                    None,
                ),
            }
        });
        let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |ev: web_sys::Event| {
            let msg = Reflect::get(&ev, &"message".into()).ok().and_then(|m| m.as_string());
            // A Web Worker that dies on WebGPU (a panic aborts it) counts as the device's
            // failure, so the page falls back to the CPU.
            on_reply(
                Reply::Failed {
                    id: None,
                    message: format!(
                        "the encoder's Web Worker failed: {}",
                        msg.unwrap_or_else(|| "no message".into())
                    ),
                    device: backend.on_webgpu(),
                },
                None,
            )
        });
        thread.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        thread.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        Ok(Self { thread, backend, waiting, _on_message: on_message, _on_error: on_error })
    }

    /// The backend this encoder thread runs on.
    pub fn backend(&self) -> EncoderBackend {
        self.backend
    }

    /// Sends `req` with its bytes (held back until the thread has started).
    pub fn send(&self, req: &Request, bytes: Option<&[u8]>) -> Result<(), String> {
        let json = serde_json::to_string(req).expect("requests serialise");
        let message = pack(json, bytes);
        if let Some(queue) = self.waiting.borrow_mut().as_mut() {
            queue.push(message);
            return Ok(());
        }
        self.thread.post_message(&message).map_err(|e| js_text(&e))
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.thread.set_onmessage(None);
        self.thread.set_onerror(None);
        self.thread.terminate();
    }
}
