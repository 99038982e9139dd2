//! The page: the [`App`] component. It provides the [`Session`] to the components (status,
//! image input, conversation, the model's own words and sample scenes, attention, settings),
//! connects to the worker and probes the compute path once at mount, and keeps the paper's
//! sequence layout in an "About" section.

use leptos::prelude::*;
use leptos::task::spawn_local;

use htc_shared::protocol::PROTOCOL_VERSION;

use crate::attention::Attention;
use crate::chat::Chat;
use crate::compute::{probe, ComputePath};
use crate::image_input::ImageInput;
use crate::layout::{
    describe, describe_question_view, model_layout, topology_name, PAPER_LAYOUT, PAPER_TOPOLOGY,
};
use crate::samples::Samples;
use crate::session::Session;
use crate::settings::SettingsPanel;
use crate::state::BackendChoice;
use crate::status::Status;

/// The whole page. Stable hooks for tests: `#status` (`data-connection`), `#compute-path`
/// (`data-path`: `probing`, then `webgpu` or `cpu`), `#answer` (`data-state`), `#attention`
/// (`data-ready`), `#protocol-version` and `#sequence-layout`.
#[component]
pub fn App() -> impl IntoView {
    shell(Session::new())
}

/// The app around a session: the page's ([`App`]) or a widget's (`crate::widget`).
pub fn shell(session: Session) -> impl IntoView {
    provide_context(session);
    // The compute path follows the backend setting: CPU when the user chose it, else what the
    // WebGPU probe finds (probed again when the setting changes).
    let choice = Memo::new(move |_| session.settings.with(|s| s.backend));
    Effect::new(move |_| {
        let choice = choice.get();
        spawn_local(async move {
            let path = match choice {
                BackendChoice::Cpu => ComputePath::CpuChosen,
                _ => probe().await,
            };
            session.compute.set(path);
        });
    });
    session.follow_compute();
    session.connect();
    // The served model's layout once its card is in (built here by the shared mask code and
    // sent with each image), the paper's until then.
    let layout = move || session.model.with(|m| m.as_ref().and_then(model_layout)).unwrap_or(PAPER_LAYOUT);
    view! {
        <header class="top">
            <h1>"HTC-VLM"</h1>
            <p class="tagline">"Ask about an image; the model reads it through one token."</p>
            <Status />
        </header>
        <main class="htc">
            <div class="column">
                <ImageInput />
                <Attention />
            </div>
            <div class="column">
                <Chat />
                <Samples />
                <SettingsPanel />
                <details class="about">
                    <summary>"About the model"</summary>
                    <p id="protocol-version" data-version=PROTOCOL_VERSION.to_string()>
                        "Worker protocol: version " {PROTOCOL_VERSION.to_string()}
                    </p>
                    <p id="sequence-layout" data-positions=move || layout().text_start().to_string()>
                        {move || if session.model.with(|m| m.as_ref().and_then(model_layout).is_some()) {
                            "This model's sequence layout: "
                        } else {
                            "The paper's sequence layout: "
                        }}
                        {move || describe(&layout())}
                    </p>
                    <p id="attention-mask" data-topology=topology_name(PAPER_TOPOLOGY)>
                        "Attention mask (" {topology_name(PAPER_TOPOLOGY)} "): "
                        {move || describe_question_view(&layout(), PAPER_TOPOLOGY)} "."
                    </p>
                </details>
            </div>
        </main>
    }
}
