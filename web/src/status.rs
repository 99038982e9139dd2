//! The status line: the connection (with its reconnect countdown), the model card's name,
//! the newest answer's time to first token and tokens/s, and where the image was tokenised
//! (today always by the worker: the in-browser encoder is not built yet; the page says
//! which compute backend it found for it, and does not claim it ran).

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
            <span id="tokenised-by">" · image tokenised by: worker"</span>
            " · "
            <span id="compute-path" data-path=move || session.compute.get().id()>
                "Compute path: "
                {move || session.compute.get().describe()}
            </span>
            {move || speed().map(|s| view! { <span id="speed">" · " {s}</span> })}
        </p>
    }
}
