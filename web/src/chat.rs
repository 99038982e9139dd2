//! The conversation: the history of questions and answers about the current image, the
//! streamed answer in a live region (accessible name "Answer"), and the question box
//! ("Question"; Enter sends, Shift+Enter adds a line, Esc stops) with Ask, Stop and
//! Regenerate, and Copy on each answer.

use leptos::ev;
use leptos::prelude::*;

use crate::session::Session;
use crate::state::{Turn, TurnStatus};

fn copy_to_clipboard(text: &str) {
    let Some(w) = web_sys::window() else { return };
    // `navigator.clipboard.writeText` (web-sys keeps Clipboard behind unstable APIs).
    let nav: wasm_bindgen::JsValue = w.navigator().into();
    let Ok(clip) = js_sys::Reflect::get(&nav, &"clipboard".into()) else { return };
    if let Ok(f) = js_sys::Reflect::get(&clip, &"writeText".into()) {
        if let Ok(f) = wasm_bindgen::JsCast::dyn_into::<js_sys::Function>(f) {
            let _ = f.call1(&clip, &text.into());
        }
    }
}

fn status_words(t: &Turn) -> String {
    match &t.status {
        TurnStatus::Waiting => "waiting for the first token…".into(),
        TurnStatus::Streaming => "answering…".into(),
        TurnStatus::Stopped => "stopped".into(),
        TurnStatus::Failed(why) => why.clone(),
        TurnStatus::Done => {
            let mut parts = Vec::new();
            if let Some(ms) = t.first_token_ms {
                parts.push(format!("first token {ms:.0} ms"));
            }
            if let Some(tm) = t.timings {
                parts.push(format!("{:.1} tok/s", tm.tokens_per_s));
                if !t.cached {
                    parts.push(format!("image compressed in {:.0} ms", tm.compress_ms));
                }
            }
            if t.cached {
                parts.push("image from the one-token cache".into());
            }
            parts.join(" · ")
        }
    }
}

/// One turn of the history.
#[component]
fn TurnView(turn: Turn) -> impl IntoView {
    let answer = turn.answer.clone();
    let failed = matches!(turn.status, TurnStatus::Failed(_));
    let status = status_words(&turn);
    let compared = turn.mode.is_some();
    let mode = turn.mode.map(|m| {
        let name =
            serde_json::to_value(m).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let how = match m {
            htc_shared::config::HtcMode::None => "all patches, no one-token bottleneck",
            _ => "the image through the compressed tokens",
        };
        view! { <p class="mode">"mode " {name} ": " {how}</p> }
    });
    view! {
        <li class="turn" class:compare=compared data-request-id=turn.request_id.to_string()>
            <p class="question">{turn.question.clone()}</p>
            {mode}
            <p class="answer">{turn.answer.clone()}</p>
            <p class="turn-status" class:error=failed>
                {status}
            </p>
            <button type="button" class="copy" on:click=move |_| copy_to_clipboard(&answer)>
                "Copy answer"
            </button>
        </li>
    }
}

/// The history, the live answer and the question box.
#[component]
pub fn Chat() -> impl IntoView {
    let session = expect_context::<Session>();
    let question = session.question;
    let error = RwSignal::new(None::<String>);
    let busy = move || session.conversation.with(|c| c.open_turn().is_some());

    let send = move || match session.ask(&question.get_untracked()) {
        Ok(()) => {
            question.set(String::new());
            error.set(None);
        }
        Err(e) => error.set(Some(e)),
    };
    let on_key = move |e: ev::KeyboardEvent| {
        if e.key() == "Enter" && !e.shift_key() && !e.is_composing() {
            e.prevent_default();
            send();
        } else if e.key() == "Escape" {
            session.stop();
        }
    };
    let regenerate = move |_| {
        if let Err(e) = session.regenerate() {
            error.set(Some(e));
        }
    };
    let saved = move || {
        session.conversation.with(|c| {
            let ms = c.saved_ms();
            (ms > 0.0).then(|| format!("image compressed once: {ms:.0} ms saved"))
        })
    };
    // The newest turn's answer, streamed into the live region.
    let live =
        move || session.conversation.with(|c| c.turns.last().map(|t| t.answer.clone()).unwrap_or_default());
    let live_state = move || {
        session.conversation.with(|c| match c.turns.last().map(|t| &t.status) {
            None => "empty",
            Some(TurnStatus::Waiting | TurnStatus::Streaming) => "streaming",
            Some(TurnStatus::Done) => "done",
            Some(TurnStatus::Stopped) => "stopped",
            Some(TurnStatus::Failed(_)) => "failed",
        })
    };

    view! {
        <section class="chat" aria-labelledby="chat-heading">
            <h2 id="chat-heading">"Ask"</h2>
            <ol class="history" aria-label="Conversation">
                {move || {
                    session
                        .conversation
                        .get()
                        .turns
                        .into_iter()
                        .map(|t| view! { <TurnView turn=t /> })
                        .collect_view()
                }}
            </ol>
            <div id="answer" class="live" role="status" aria-live="polite" aria-label="Answer" data-state=live_state>
                {live}
            </div>
            <p id="cache-saving">{saved}</p>
            <form
                class="ask"
                on:submit=move |e: ev::SubmitEvent| {
                    e.prevent_default();
                    send();
                }
            >
                <textarea
                    id="question"
                    aria-label="Question"
                    rows="2"
                    placeholder="What color is the star?"
                    prop:value=move || question.get()
                    on:input=move |e| question.set(event_target_value(&e))
                    on:keydown=on_key
                ></textarea>
                {move || {
                    session
                        .model
                        .with(|m| m.as_ref().and_then(crate::state::compare_mode).is_some())
                        .then(|| {
                            view! {
                                <label class="compare-switch">
                                    <input
                                        type="checkbox"
                                        id="compare"
                                        prop:checked=move || session.compare.get()
                                        on:change=move |e| session.compare.set(event_target_checked(&e))
                                    />
                                    " Compare: also ask with all patches (mode none)"
                                </label>
                            }
                        })
                }}
                <div class="buttons">
                    <button type="submit" disabled=busy>
                        "Ask"
                    </button>
                    <button type="button" disabled=move || !busy() on:click=move |_| session.stop()>
                        "Stop"
                    </button>
                    <button
                        type="button"
                        disabled=move || busy() || session.conversation.with(|c| c.turns.is_empty())
                        on:click=regenerate
                    >
                        "Regenerate"
                    </button>
                </div>
            </form>
            <p id="ask-error" class="error" role="alert">
                {move || error.get().or_else(|| session.notice.get()).unwrap_or_default()}
            </p>
        </section>
    }
}
