//! Image in: a file picker (accessible name "Image"), drag and drop onto the drop zone, and
//! paste anywhere on the page; the file is checked (type, size), large photos are scaled down
//! in the page before upload, and a preview with Remove is shown.

use leptos::ev;
use leptos::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, File, HtmlCanvasElement, HtmlImageElement};

use crate::client::js_text;
use crate::session::{ChosenImage, Session};
use crate::state::{check_image_file, downscaled};

/// Files larger than this are refused before anything is read.
const MAX_INPUT_BYTES: usize = 40_000_000;
/// What the worker takes by default (`htc serve --max-image-bytes`).
const MAX_UPLOAD_BYTES: usize = 12 << 20;
/// Longer side photos are scaled to before upload.
const MAX_SIDE: u32 = 1024;

/// FNV-1a over the bytes: a content id, so the same picture keeps one id (the worker keys its
/// own cache by a real hash of the decoded image; this only names the upload).
fn content_id(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    format!("img-{h:016x}")
}

async fn blob_bytes(blob: &Blob) -> Result<Vec<u8>, String> {
    let buf = JsFuture::from(blob.array_buffer()).await.map_err(|e| js_text(&e))?;
    Ok(js_sys::Uint8Array::new(&buf).to_vec())
}

async fn load(url: &str) -> Result<HtmlImageElement, String> {
    let img = HtmlImageElement::new().map_err(|e| js_text(&e))?;
    img.set_src(url);
    JsFuture::from(img.decode()).await.map_err(|_| "the browser cannot decode this image".to_string())?;
    Ok(img)
}

/// Draws `img` at `w`×`h` and encodes it as PNG.
async fn scale(img: &HtmlImageElement, w: u32, h: u32) -> Result<Blob, String> {
    let doc = web_sys::window().and_then(|w| w.document()).ok_or("no document")?;
    let canvas: HtmlCanvasElement =
        doc.create_element("canvas").map_err(|e| js_text(&e))?.dyn_into().map_err(|_| "no canvas")?;
    canvas.set_width(w);
    canvas.set_height(h);
    let ctx: web_sys::CanvasRenderingContext2d = canvas
        .get_context("2d")
        .ok()
        .flatten()
        .and_then(|c| c.dyn_into().ok())
        .ok_or("no 2d canvas context")?;
    ctx.draw_image_with_html_image_element_and_dw_and_dh(img, 0.0, 0.0, w as f64, h as f64)
        .map_err(|e| js_text(&e))?;
    let promise = js_sys::Promise::new(&mut |resolve, reject| {
        if canvas.to_blob(&resolve).is_err() {
            let _ = reject.call0(&wasm_bindgen::JsValue::NULL);
        }
    });
    let blob = JsFuture::from(promise).await.map_err(|_| "cannot encode the scaled image")?;
    blob.dyn_into::<Blob>().map_err(|_| "cannot encode the scaled image".to_string())
}

/// Reads, checks and (if large) scales one file, then hands it to the session.
pub(crate) async fn take_file(session: Session, file: File) -> Result<(), String> {
    check_image_file(&file.type_(), file.size() as usize, MAX_INPUT_BYTES)?;
    let original_url = web_sys::Url::create_object_url_with_blob(&file).map_err(|e| js_text(&e))?;
    let img = match load(&original_url).await {
        Ok(i) => i,
        Err(e) => {
            let _ = web_sys::Url::revoke_object_url(&original_url);
            return Err(e);
        }
    };
    let (w, h) = (img.natural_width(), img.natural_height());
    let (blob, url, size, scaled_from) = match downscaled(w, h, MAX_SIDE) {
        Some((sw, sh)) => {
            let blob = scale(&img, sw, sh).await?;
            let _ = web_sys::Url::revoke_object_url(&original_url);
            let url = web_sys::Url::create_object_url_with_blob(&blob).map_err(|e| js_text(&e))?;
            (blob, url, (sw, sh), Some((w, h)))
        }
        None => (Blob::from(file.clone()), original_url, (w, h), None),
    };
    let bytes = blob_bytes(&blob).await?;
    if bytes.len() > MAX_UPLOAD_BYTES {
        let _ = web_sys::Url::revoke_object_url(&url);
        return Err(format!(
            "the image is {:.1} MB after scaling, over the worker's {:.0} MB limit",
            bytes.len() as f64 / 1e6,
            MAX_UPLOAD_BYTES as f64 / 1e6
        ));
    }
    let image = ChosenImage {
        id: content_id(&bytes),
        name: file.name(),
        bytes: bytes.len(),
        url,
        width: size.0,
        height: size.1,
        scaled_from,
    };
    session.set_image(image, bytes);
    Ok(())
}

fn take(session: Session, file: Option<File>) {
    let Some(file) = file else { return };
    leptos::task::spawn_local(async move {
        if let Err(e) = take_file(session, file).await {
            session.image_error.set(Some(e));
        }
    });
}

/// The image picker, drop zone, paste target and preview.
#[component]
pub fn ImageInput() -> impl IntoView {
    let session = expect_context::<Session>();
    let dragging = RwSignal::new(false);
    let input_ref = NodeRef::<leptos::html::Input>::new();

    let handle = window_event_listener(ev::paste, move |e: web_sys::ClipboardEvent| {
        let file = e.clipboard_data().and_then(|d| d.files()).and_then(|f| f.get(0));
        if file.is_some() {
            e.prevent_default();
            take(session, file);
        }
    });
    on_cleanup(move || handle.remove());

    let on_change = move |e: ev::Event| {
        let input: web_sys::HtmlInputElement = event_target(&e);
        take(session, input.files().and_then(|f| f.get(0)));
        // The same file chosen again still fires `change`.
        input.set_value("");
    };
    let on_drop = move |e: ev::DragEvent| {
        e.prevent_default();
        dragging.set(false);
        take(session, e.data_transfer().and_then(|d| d.files()).and_then(|f| f.get(0)));
    };

    view! {
        <section class="image-input" aria-labelledby="image-heading">
            <h2 id="image-heading">"Image"</h2>
            <div
                class="drop"
                class:dragging=move || dragging.get()
                on:dragover=move |e: ev::DragEvent| {
                    e.prevent_default();
                    dragging.set(true);
                }
                on:dragleave=move |_| dragging.set(false)
                on:drop=on_drop
            >
                <label class="pick">
                    "Choose, drop or paste an image "
                    <input
                        node_ref=input_ref
                        id="image-file"
                        type="file"
                        accept="image/png,image/jpeg,image/webp,image/gif,image/bmp"
                        aria-label="Image"
                        on:change=on_change
                    />
                </label>
                {move || {
                    session
                        .image
                        .get()
                        .map(|img| {
                            let scaled = img
                                .scaled_from
                                .map(|(w, h)| format!(", scaled from {w}×{h}"))
                                .unwrap_or_default();
                            view! {
                                <figure class="preview">
                                    <img src=img.url.clone() alt="The chosen image" />
                                    <figcaption id="image-info">
                                        {format!(
                                            "{} ({}×{}, {:.1} kB{scaled})",
                                            img.name,
                                            img.width,
                                            img.height,
                                            img.bytes as f64 / 1e3,
                                        )}
                                    </figcaption>
                                    <button type="button" on:click=move |_| session.remove_image()>
                                        "Remove image"
                                    </button>
                                </figure>
                            }
                        })
                }}
            </div>
            <p id="image-error" class="error" role="alert">
                {move || session.image_error.get().unwrap_or_default()}
            </p>
        </section>
    }
}
