//! The in-browser encoder: which backend it runs on (following the compute path, falling
//! back to the CPU when WebGPU fails), starting its encoder thread, its replies, and the
//! codes it computes for the current image.

use htc_shared::protocol::CodesShape;
use leptos::prelude::*;
use wasm_bindgen::JsCast;

use super::{mark, page_origin, page_session, ImageCodes, Session};
use crate::compute::ComputePath;
use crate::runner::{self, EncoderBackend, Reply, Request, Runner};
use crate::state::EncoderState;

impl Session {
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

    /// Starts the encoder thread (a Web Worker) on the wanted backend (again, if it runs on
    /// another) and asks it to load the worker's encoder.
    pub(super) fn start_encoder(self) {
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
                    self.send_waiting(None);
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
            self.send_waiting(None);
        }
    }

    /// WebGPU failed in the encoder (refused, lost, or its encoder thread died): the compute
    /// path becomes the CPU, saying why, and [`Session::follow_compute`] restarts the encoder
    /// there. The image under way is encoded again once the CPU encoder is loaded.
    fn fall_back_to_cpu(self, message: String) {
        self.encoding.set_value(None);
        self.codes.set(None);
        // Not from inside the failing encoder thread's own message handler, which the restart
        // drops.
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
                self.send_waiting(None);
            }
            Reply::Failed { message, device: true, .. }
                if self.runner.with_value(|r| r.as_ref().is_some_and(|r| r.backend().on_webgpu())) =>
            {
                self.fall_back_to_cpu(message)
            }
            Reply::Failed { id: Some(id), message, .. } => {
                if self.encoding.get_value().is_some_and(|(want, _)| want == id) {
                    self.encoding.set_value(None);
                    self.send_waiting(None);
                    self.notice.set(Some(format!("the in-browser encoder could not read this image ({message}); the worker tokenises it")));
                }
            }
            Reply::Failed { id: None, message, .. } => {
                self.encoding.set_value(None);
                self.encoder.set(EncoderState::Failed(message));
                self.send_waiting(None);
            }
        }
    }

    /// Asks the encoder for the codes of image `image_id`, if it is ready.
    pub(super) fn encode(self, image_id: &str, bytes: &[u8]) {
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
            self.send_waiting(None);
        }
    }
}
