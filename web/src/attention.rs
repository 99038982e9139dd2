//! Where the one token looked (the paper's Fig. 3): the newest answer's `<voco>` attention
//! drawn as a heatmap over the image's patch grid (a canvas), bars for each anchor against
//! all patches together, a layer selector with the mean over layers, and a toggle that puts
//! the anchors or the patches first. Accessible name "Attention".

use leptos::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{CanvasRenderingContext2d, HtmlImageElement};

use crate::session::Session;
use crate::state::{AttentionMaps, AttentionView, LayerPick};

/// Canvas side, CSS pixels.
const SIDE: u32 = 336;

fn draw(canvas: &web_sys::HtmlCanvasElement, image_url: Option<String>, view: AttentionView) {
    let Some(ctx) =
        canvas.get_context("2d").ok().flatten().and_then(|c| c.dyn_into::<CanvasRenderingContext2d>().ok())
    else {
        return;
    };
    let side = SIDE as f64;
    let _ = canvas.remove_attribute("data-drawn");
    let paint_heat = {
        let ctx = ctx.clone();
        let canvas = canvas.clone();
        move || {
            let g = view.grid.max(1);
            let cell = side / g as f64;
            for (i, h) in view.heat.iter().enumerate() {
                let (r, c) = (i / g, i % g);
                ctx.set_fill_style_str(&format!("rgba(230, 30, 30, {:.3})", 0.65 * h));
                ctx.fill_rect(c as f64 * cell, r as f64 * cell, cell, cell);
            }
            // Tests wait for this: the image and the overlay are on the canvas.
            let _ = canvas.set_attribute("data-drawn", "true");
        }
    };
    ctx.set_fill_style_str("#fff");
    ctx.fill_rect(0.0, 0.0, side, side);
    match image_url {
        Some(url) => {
            let Ok(img) = HtmlImageElement::new() else { return };
            img.set_src(&url);
            let img2 = img.clone();
            let ctx2 = ctx.clone();
            leptos::task::spawn_local(async move {
                let _ = wasm_bindgen_futures::JsFuture::from(img2.decode()).await;
                let _ = ctx2.draw_image_with_html_image_element_and_dw_and_dh(&img2, 0.0, 0.0, side, side);
                paint_heat();
            });
        }
        None => paint_heat(),
    }
}

/// The attention view of the newest answer that has maps.
#[component]
pub fn Attention() -> impl IntoView {
    let session = expect_context::<Session>();
    let canvas_ref = NodeRef::<leptos::html::Canvas>::new();
    let maps = Memo::new(move |_| {
        session.conversation.with(|c| c.turns.iter().rev().find_map(|t| t.attention.clone()))
    });
    let view_now = move || maps.get().map(|m: AttentionMaps| m.view(session.layer.get()));

    Effect::new(move |_| {
        let (Some(canvas), Some(view)) = (canvas_ref.get(), view_now()) else { return };
        draw(&canvas, session.image.get().map(|i| i.url), view);
    });

    let on_layer = move |e: leptos::ev::Event| {
        let v = event_target_value(&e);
        session.layer.set(match v.parse::<usize>() {
            Ok(i) => LayerPick::Layer(i),
            Err(_) => LayerPick::Mean,
        });
    };
    let layer_options = move || {
        let n = maps.get().map(|m| m.layers.len()).unwrap_or(0);
        (0..n)
            .map(|i| view! { <option value=i.to_string()>{format!("layer {}", i + 1)}</option> })
            .collect_view()
    };
    let bars = move || {
        view_now().map(|v| {
            let mut rows: Vec<(String, f32)> =
                v.anchors.iter().enumerate().map(|(i, a)| (format!("anchor {}", i + 1), *a)).collect();
            let patches = (format!("{} patches", v.grid * v.grid), v.patches_total);
            if session.show_anchors.get() {
                rows.push(patches);
            } else {
                rows.insert(0, patches);
            }
            rows.into_iter()
                .map(|(name, value)| {
                    view! {
                        <li class="bar">
                            <span class="bar-name">{name}</span>
                            <span class="bar-fill" style=format!("width: {:.1}%", 100.0 * value)></span>
                            <span class="bar-value">{format!("{:.1}%", 100.0 * value)}</span>
                        </li>
                    }
                })
                .collect_view()
        })
    };

    view! {
        <section
            id="attention"
            class="attention"
            role="region"
            aria-label="Attention"
            data-ready=move || maps.get().is_some().to_string()
        >
            <h2>"Where <voco> looked"</h2>
            <Show
                when=move || maps.get().is_some()
                fallback=|| view! { <p class="hint">"The attention of the one token appears with the first answer."</p> }
            >
                <div class="controls">
                    <label>
                        "Layer "
                        <select aria-label="Layer" on:change=on_layer>
                            <option value="mean">"mean over layers"</option>
                            {layer_options}
                        </select>
                    </label>
                    <label>
                        <input
                            type="checkbox"
                            prop:checked=move || session.show_anchors.get()
                            on:change=move |e| session.show_anchors.set(event_target_checked(&e))
                        />
                        " anchors first"
                    </label>
                </div>
                <ul class="bars" aria-label="Anchors and patches">
                    {bars}
                </ul>
            </Show>
            <canvas
                node_ref=canvas_ref
                id="heatmap"
                data-heat=move || {
                    view_now()
                        .map(|v| v.heat.iter().map(|h| format!("{h:.3}")).collect::<Vec<_>>().join(","))
                        .unwrap_or_default()
                }
                width=SIDE
                height=SIDE
                aria-label="Attention heatmap over the image"
                class:hidden=move || maps.get().is_none()
            ></canvas>
        </section>
    }
}
