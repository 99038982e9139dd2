//! The status line: the connection (with its reconnect countdown), the model card's name,
//! the newest answer's time to first token and tokens/s, the in-browser encoder (weights
//! progress, the backend it runs on), where the newest question's image was tokenised
//! (`browser, backend: cpu, N ms` only when the page's codes went with it; else `worker`), and
//! the compute path the WebGPU probe found.

use leptos::prelude::*;

use crate::session::Session;

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
    let model = move || {
        session.model.get().map(|m| {
            // The mode as configs spell it (`htc`, `none`, …): its serde name.
            let mode = m
                .mode
                .and_then(|mode| serde_json::to_value(mode).ok())
                .and_then(|v| v.as_str().map(|s| format!(", mode {s}")))
                .unwrap_or_default();
            let random = if m.random_init { " (random weights)" } else { "" };
            format!("{}{mode}{random}", m.name)
        })
    };
    view! {
        <p id="status" class="status" role="status" data-connection=move || session.connection.get().id()>
            <span id="connection">{move || session.connection.get().describe()}</span>
            {move || model().map(|m| view! { <span id="model-name">" · model: " {m}</span> })}
            <span id="encoder" data-encoder=move || session.encoder.get().id()>
                " · " {move || session.encoder.get().describe()}
            </span>
            {move || match session.encoder.get() {
                crate::state::EncoderState::Loading { loaded, total, .. } if total > 0 => Some(view! {
                    " "
                    <progress id="encoder-progress" aria-label="Encoder weights" max=total.to_string() value=loaded.to_string()></progress>
                }),
                _ => None,
            }}
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
                    " · image encoded in the page: " {k.shape.positions} "×" {k.shape.groups} " codes, "
                    {format!("{:.0} ms", k.ms)}
                </span>
                }
            })}
            <span id="tokenised-by">
                " · image tokenised by: " {move || session.tokenised.get().unwrap_or_else(|| "nothing sent yet".into())}
            </span>
            " · "
            <span id="compute-path" data-path=move || session.compute.get().id()>
                "Compute path: "
                {move || session.compute.get().describe()}
            </span>
            {move || speed().map(|s| view! { <span id="speed">" · " {s}</span> })}
        </p>
    }
}
