//! Settings, kept in localStorage: the worker URL and token, sampling (temperature, top-p,
//! max tokens) and the compute backend for the in-browser encoder. Saved only when they
//! validate; the problem is named otherwise.

use leptos::prelude::*;

use crate::session::Session;
use crate::state::{BackendChoice, Settings};

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
                <label>
                    "Compute backend "
                    <select on:change=move |e| backend.set(event_target_value(&e)) prop:value=move || backend.get()>
                        <option value="auto">"auto"</option>
                        <option value="webgpu">"webgpu"</option>
                        <option value="cpu">"cpu"</option>
                    </select>
                </label>
                <button type="submit">"Save settings"</button>
                <p id="settings-message" role="status">{move || message.get()}</p>
            </form>
        </details>
    }
}
