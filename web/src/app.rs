//! The page: the [`App`] component. It shows the worker protocol version the page speaks, the
//! hybrid sequence layout and what its attention mask lets a question read (both from
//! `htc-shared`), and the compute path, probed once at mount.

use htc_shared::protocol::PROTOCOL_VERSION;
use leptos::prelude::*;
use leptos::task::spawn_local;

use crate::compute::{probe, ComputePath};
use crate::layout::{describe, describe_question_view, topology_name, PAPER_LAYOUT, PAPER_TOPOLOGY};

/// The whole page. Stable hooks for tests: `#compute-path` (`data-path`: `probing`, then
/// `webgpu` or `cpu`), `#protocol-version` (`data-version`), `#sequence-layout`
/// (`data-positions`: positions before the question) and `#attention-mask` (`data-topology`).
#[component]
pub fn App() -> impl IntoView {
    let (path, set_path) = signal(ComputePath::Probing);
    spawn_local(async move {
        set_path.set(probe().await);
    });
    let layout = PAPER_LAYOUT;
    view! {
        <main class="htc">
            <h1>"HTC-VLM"</h1>
            <p>"One image, one token: ask questions about an image."</p>
            <p id="compute-path" data-path=move || path.get().id()>
                "Compute path: " {move || path.get().describe()}
            </p>
            <p id="protocol-version" data-version=PROTOCOL_VERSION.to_string()>
                "Worker protocol: version " {PROTOCOL_VERSION.to_string()}
            </p>
            <p id="sequence-layout" data-positions=layout.text_start().to_string()>
                "Sequence layout: " {describe(&layout)}
            </p>
            <p id="attention-mask" data-topology=topology_name(PAPER_TOPOLOGY)>
                "Attention mask (" {topology_name(PAPER_TOPOLOGY)} "): "
                {describe_question_view(&layout, PAPER_TOPOLOGY)} "."
            </p>
        </main>
    }
}
