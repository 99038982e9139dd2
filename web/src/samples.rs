//! The page's first minute: what the served model knows (the model card's `about`, in plain
//! words under the question box) and the model's sample scenes (the card's `samples`, served
//! at `/api/samples/<i>.png`) as thumbnails, each with suggested questions that fill the
//! question box. Choosing a sample takes its PNG exactly as an uploaded file is taken (the
//! image input's checks, then the session, the in-page encoder and the worker as usual).

use leptos::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use htc_shared::protocol::SampleImage;

use crate::client::js_text;
use crate::session::Session;

/// The URL of a sample's `path` (`/api/samples/<i>.png`) on the worker whose socket URL is
/// `socket_url` (`ws[s]://host/…/ws?query` → `http[s]://host/…/api/samples/<i>.png?query`, the
/// token kept); `None` if the socket URL does not end its path in `/ws`.
pub fn sample_url(socket_url: &str, path: &str) -> Option<String> {
    let card = crate::state::model_card_url(socket_url)?;
    let (base, query) = match card.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (card.as_str(), String::new()),
    };
    Some(format!("{}{path}{query}", base.strip_suffix("/api/model")?))
}

/// A sample's accessible name, numbered from 1 as people count: "Sample scene 1".
pub fn sample_label(id: usize) -> String {
    format!("Sample scene {}", id + 1)
}

/// The file name a sample is taken under (the preview's caption shows it): `sample-1.png`.
pub fn sample_file_name(id: usize) -> String {
    format!("sample-{}.png", id + 1)
}

/// The sample whose image the page holds: the sample last chosen, while the session's image is
/// still the one that choice gave (`chosen`: the sample and its image id).
pub fn current_sample(chosen: Option<&(usize, String)>, image_id: Option<&str>) -> Option<usize> {
    chosen.filter(|(_, id)| Some(id.as_str()) == image_id).map(|(sample, _)| *sample)
}

/// Fetches a sample's PNG as a file named [`sample_file_name`].
async fn fetch_sample(url: &str, id: usize) -> Result<web_sys::File, String> {
    let window = web_sys::window().ok_or("no window")?;
    let resp = JsFuture::from(window.fetch_with_str(url)).await.map_err(|e| js_text(&e))?;
    let resp: web_sys::Response = resp.dyn_into().map_err(|_| "not a fetch response")?;
    if !resp.ok() {
        return Err(format!("the worker did not send {} (HTTP {})", sample_label(id), resp.status()));
    }
    let blob = JsFuture::from(resp.blob().map_err(|e| js_text(&e))?).await.map_err(|e| js_text(&e))?;
    let options = web_sys::FilePropertyBag::new();
    options.set_type("image/png");
    web_sys::File::new_with_blob_sequence_and_options(
        &js_sys::Array::of1(&blob),
        &sample_file_name(id),
        &options,
    )
    .map_err(|e| js_text(&e))
}

/// Moves the focus to the question box, in the page or in the widget's shadow root around
/// `from`.
fn focus_question(from: &web_sys::EventTarget) {
    let Some(node) = from.dyn_ref::<web_sys::Node>() else { return };
    let root = node.get_root_node();
    let found = if let Some(doc) = root.dyn_ref::<web_sys::Document>() {
        doc.get_element_by_id("question")
    } else {
        root.dyn_ref::<web_sys::ShadowRoot>().and_then(|r| r.get_element_by_id("question"))
    };
    if let Some(el) = found.and_then(|e| e.dyn_into::<web_sys::HtmlElement>().ok()) {
        let _ = el.focus();
    }
}

/// The model's own words and its sample scenes, once its card is in (nothing for a card that
/// says nothing about itself).
#[component]
pub fn Samples() -> impl IntoView {
    let session = expect_context::<Session>();
    // The sample last chosen and the image id it gave.
    let chosen = RwSignal::new(None::<(usize, String)>);
    let current = move || {
        let image = session.image.with(|i| i.as_ref().map(|i| i.id.clone()));
        chosen.with(|c| current_sample(c.as_ref(), image.as_deref()))
    };
    let url = move |settings: &crate::state::Settings, path: &str| {
        let origin = web_sys::window().and_then(|w| w.location().origin().ok()).unwrap_or_default();
        sample_url(&settings.socket_url(&origin, ""), path).unwrap_or_default()
    };
    // Takes sample `id` as the image (unless it is the image already).
    let choose = move |sample: &SampleImage| {
        let image = session.image.with_untracked(|i| i.as_ref().map(|i| i.id.clone()));
        if chosen.with_untracked(|c| current_sample(c.as_ref(), image.as_deref())) == Some(sample.id) {
            return;
        }
        let (id, url) = (sample.id, session.settings.with_untracked(|s| url(s, &sample.path)));
        leptos::task::spawn_local(async move {
            let taken = match fetch_sample(&url, id).await {
                Ok(file) => crate::image_input::take_file(session, file).await,
                Err(e) => Err(e),
            };
            match taken {
                Ok(()) => chosen.set(session.image.get_untracked().map(|i| (id, i.id))),
                Err(e) => session.image_error.set(Some(e)),
            }
        });
    };
    let sample_view = move |sample: SampleImage| {
        let id = sample.id;
        let src = session.settings.with(|s| url(s, &sample.path));
        let s = sample.clone();
        let questions = sample
            .questions
            .iter()
            .map(|q| {
                let (q, s) = (q.clone(), sample.clone());
                let text = q.clone();
                view! {
                    <li>
                        <button
                            type="button"
                            class="suggested-question"
                            on:click=move |e| {
                                choose(&s);
                                session.question.set(q.clone());
                                if let Some(t) = e.current_target() {
                                    focus_question(&t);
                                }
                            }
                        >
                            {text}
                        </button>
                    </li>
                }
            })
            .collect_view();
        view! {
            <li class="sample" data-sample=id.to_string()>
                <button
                    type="button"
                    class="sample-scene"
                    aria-label=sample_label(id)
                    aria-pressed=move || (current() == Some(id)).to_string()
                    on:click=move |_| choose(&s)
                >
                    <img src=src alt="" width="84" height="84" />
                </button>
                <ul class="suggested" aria-label=format!("Questions about sample scene {}", id + 1)>
                    {questions}
                </ul>
            </li>
        }
    };
    move || {
        let card = session.model.get()?;
        if card.about.is_none() && card.samples.is_empty() {
            return None;
        }
        let about = card.about.clone().map(|a| view! { <p id="model-about">{a}</p> });
        let samples = (!card.samples.is_empty()).then(|| {
            view! {
                <p class="samples-hint">"Try a sample scene, then one of its questions:"</p>
                <ul class="sample-list" aria-label="Sample scenes">
                    {card.samples.clone().into_iter().map(sample_view).collect_view()}
                </ul>
            }
        });
        Some(view! {
            <section class="samples" aria-labelledby="samples-heading">
                <h2 id="samples-heading">"What this model knows"</h2>
                {about}
                {samples}
            </section>
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_urls_follow_the_socket_url_and_keep_its_token() {
        assert_eq!(
            sample_url("ws://127.0.0.1:8080/ws", "/api/samples/0.png").as_deref(),
            Some("http://127.0.0.1:8080/api/samples/0.png")
        );
        assert_eq!(
            sample_url("wss://h.example/htc/ws?session=ab&token=a%20b", "/api/samples/3.png").as_deref(),
            Some("https://h.example/htc/api/samples/3.png?session=ab&token=a%20b")
        );
        assert_eq!(sample_url("http://h/ws", "/api/samples/0.png"), None);
        assert_eq!(sample_url("ws://h/socket", "/api/samples/0.png"), None);
    }

    #[test]
    fn samples_are_named_from_one() {
        assert_eq!(sample_label(0), "Sample scene 1");
        assert_eq!(sample_file_name(3), "sample-4.png");
    }

    #[test]
    fn a_sample_is_current_while_its_image_is() {
        let chosen = (2, "img-1".to_string());
        assert_eq!(current_sample(Some(&chosen), Some("img-1")), Some(2));
        // Another file chosen since, or the image removed.
        assert_eq!(current_sample(Some(&chosen), Some("img-9")), None);
        assert_eq!(current_sample(Some(&chosen), None), None);
        assert_eq!(current_sample(None, Some("img-1")), None);
    }
}
