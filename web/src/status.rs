//! The status line, in two parts. Always shown, in rows a person reads at a glance:
//!
//! - a connection badge (`connecting`, `connected`, `reconnecting` with why and when the next
//!   try is, `offline` with why), the model card's name and mode;
//! - the newest image: its codes when the page encoded it (`#browser-codes`) and who tokenised
//!   it for the worker, with the backend and the time (`#tokenised-by`: `browser, backend: cpu,
//!   N ms` when the page's codes went with it, else `worker`);
//! - the in-browser encoder in short (`#encoder`: off, loading, or ready on its backend with
//!   its weights cached or downloaded) and the compute path the WebGPU probe found, with why
//!   when it is the CPU (`#compute-path`).
//!
//! Behind a "Details" disclosure: the encoder in full (weights progress, size, load time) and
//! the newest answer's time to first token and tokens/s.
//!
//! The browser tests read the first part's text as rendered, so its facts stay out of the
//! disclosure.

use leptos::prelude::*;

use crate::session::Session;
use crate::state::EncoderState;

#[component]
pub fn Status() -> impl IntoView {
    let session = expect_context::<Session>();
    let speed = move || {
        session.conversation.with(|c| {
            let t = c.turns.iter().rev().find(|t| t.timings.is_some())?;
            let tm = t.timings?;
            Some(format!(
                "first token {:.0} ms · {:.1} tok/s",
                t.first_token_ms.unwrap_or(tm.first_token_ms),
                tm.tokens_per_s
            ))
        })
    };
    // The model card's name, its mode as configs spell it (`htc`, `none`, …: its serde name),
    // and whether its weights are random.
    let model = move || {
        session.model.get().map(|m| {
            let mode = m
                .mode
                .and_then(|mode| serde_json::to_value(mode).ok())
                .and_then(|v| v.as_str().map(String::from));
            (m.name, mode, m.random_init)
        })
    };
    let connection = move || session.connection.get();
    view! {
        <div id="status" class="status" role="status" data-connection=move || connection().id()>
            <div class="status-row">
                <span id="connection" class="badge" data-badge=move || connection().badge()>
                    {move || connection().badge()}
                </span>
                " "
                {move || connection().detail().map(|d| view! { <span id="connection-detail" class="status-why">{d}</span> " " })}
                {move || model().map(|(name, mode, random)| view! {
                    <span id="model-name">"model: " <strong>{name}</strong></span>
                    " "
                    {mode.map(|m| view! { <span id="model-mode" class="chip">"mode " {m}</span> " " })}
                    {random.then(|| view! { <span class="chip chip-warn">"random weights"</span> })}
                })}
            </div>
            <div class="status-row">
                {move || session.codes.get().map(|k| {
                    let codes: Vec<String> =
                        k.payload.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]).to_string()).collect();
                    view! {
                    <span
                        id="browser-codes"
                        data-image=k.image_id.clone()
                        data-file=move || session.image.get().map(|i| i.name).unwrap_or_default()
                        data-codes=codes.join(",")
                        data-ms=format!("{:.1}", k.ms)
                    >
                        "image encoded in the page: " {k.shape.positions} "×" {k.shape.groups} " codes, "
                        {format!("{:.0} ms", k.ms)}
                    </span>
                    " "
                    }
                })}
                <span id="tokenised-by">
                    "image tokenised by: " {move || session.tokenised.get().unwrap_or_else(|| "nothing sent yet".into())}
                </span>
            </div>
            <div class="status-row">
                <span id="encoder" data-encoder=move || session.encoder.get().id()>
                    {move || session.encoder.get().summary()}
                </span>
                " "
                <span id="compute-path" data-path=move || session.compute.get().id()>
                    "Compute path: "
                    {move || session.compute.get().describe()}
                </span>
            </div>
            <details class="status-details">
                <summary>"Details"</summary>
                <ul>
                    <li id="encoder-details">
                        {move || session.encoder.get().describe()}
                        {move || match session.encoder.get() {
                            EncoderState::Loading { loaded, total, .. } if total > 0 => Some(view! {
                                " "
                                <progress id="encoder-progress" aria-label="Encoder weights" max=total.to_string() value=loaded.to_string()></progress>
                            }),
                            _ => None,
                        }}
                    </li>
                    <li id="speed">
                        "Newest answer: " {move || speed().unwrap_or_else(|| "none yet".into())}
                    </li>
                </ul>
            </details>
        </div>
    }
}
