//! Settings, kept in localStorage: the worker URL and token, sampling (temperature, top-p,
//! max tokens), the mode to ask in when the model offers several, and the compute backend for
//! the in-browser encoder. Saved only when they
//! validate; the problem is named otherwise.

use leptos::prelude::*;

use crate::session::Session;
use crate::state::{BackendChoice, Settings};
use htc_shared::config::HtcMode;

#[component]
pub fn SettingsPanel() -> impl IntoView {
    let session = expect_context::<Session>();
    let s = session.settings.get_untracked();
    let url = RwSignal::new(s.worker_url.clone());
    let token = RwSignal::new(s.token.clone());
    let temperature = RwSignal::new(s.temperature.to_string());
    let top_p = RwSignal::new(s.top_p.to_string());
    let max_tokens = RwSignal::new(s.max_new_tokens.to_string());
    let backend = RwSignal::new(s.backend.name().to_string());
    let mode_name = |m: HtcMode| serde_json::to_value(m).ok().and_then(|v| v.as_str().map(str::to_string));
    let mode = RwSignal::new(s.mode.and_then(mode_name).unwrap_or_default());
    // The served model's modes (its own first), when it offers more than one.
    let modes = move || {
        session
            .model
            .with(|m| m.as_ref().map(|m| m.modes.clone()).filter(|v| v.len() > 1).unwrap_or_default())
    };
    let message = RwSignal::new(String::new());

    let save = move |e: leptos::ev::SubmitEvent| {
        e.prevent_default();
        let parsed = (|| -> Result<Settings, String> {
            Ok(Settings {
                worker_url: url.get_untracked().trim().to_string(),
                token: token.get_untracked(),
                temperature: temperature
                    .get_untracked()
                    .trim()
                    .parse()
                    .map_err(|_| "temperature must be a number".to_string())?,
                top_p: top_p
                    .get_untracked()
                    .trim()
                    .parse()
                    .map_err(|_| "top-p must be a number".to_string())?,
                max_new_tokens: max_tokens
                    .get_untracked()
                    .trim()
                    .parse()
                    .map_err(|_| "max tokens must be a whole number".to_string())?,
                backend: BackendChoice::parse(&backend.get_untracked()).unwrap_or_default(),
                mode: match mode.get_untracked().as_str() {
                    "" => None,
                    m => Some(serde_json::from_value(m.into()).map_err(|_| format!("unknown mode `{m}`"))?),
                },
            })
        })();
        match parsed.and_then(|s| session.save_settings(s)) {
            Ok(()) => message.set("saved".into()),
            Err(e) => message.set(e),
        }
    };
    let field = |label: &'static str, sig: RwSignal<String>, kind: &'static str| {
        view! {
            <label>
                {label}
                <input type=kind prop:value=move || sig.get() on:input=move |e| sig.set(event_target_value(&e)) />
            </label>
        }
    };
    view! {
        <details class="settings">
            <summary>"Settings"</summary>
            <form on:submit=save>
                {field("Worker URL (empty: this page's worker) ", url, "text")}
                {field("Token ", token, "password")}
                {field("Temperature ", temperature, "text")}
                {field("Top-p ", top_p, "text")}
                {field("Max tokens ", max_tokens, "text")}
                <Show when=move || !modes().is_empty()>
                    <label>
                        "Mode "
                        <select on:change=move |e| mode.set(event_target_value(&e)) prop:value=move || mode.get()>
                            <option value="">"the model's own"</option>
                            {move || {
                                modes()
                                    .into_iter()
                                    .filter_map(mode_name)
                                    .map(|m| view! { <option value=m.clone()>{m.clone()}</option> })
                                    .collect_view()
                            }}
                        </select>
                    </label>
                </Show>
                <label>
                    "Compute backend "
                    <select on:change=move |e| backend.set(event_target_value(&e)) prop:value=move || backend.get()>
                        <option value="auto">"auto"</option>
                        <option value="webgpu">"webgpu"</option>
                        <option value="cpu">"cpu"</option>
                        <option value="burn-wgpu">"webgpu, burn-wgpu's kernels"</option>
                    </select>
                </label>
                <button type="submit">"Save settings"</button>
                <p id="settings-message" role="status">{move || message.get()}</p>
            </form>
        </details>
    }
}
