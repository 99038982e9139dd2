//! `htc bench --suite htc`: compress an image, answer without the cache (one full forward of
//! prefix and question) and answer from the compressed image, for a tiny HTC model and a
//! 7B-width one with few layers, all at random weights.

use anyhow::Result;
use burn::tensor::{Distribution, Tensor};
use htc_shared::config::HtcConfig;

use super::{clip336, time, Out};
use crate::backend::{self, Backend};
use crate::formats::Loader;
use crate::models::htc::{Htc, ImageTensors};
use crate::models::llava::{self, Layout, Llava};

/// Every figure of the suite, at most 3 timed repetitions each (`reps` caps it lower).
pub fn run(out: Out, reps: usize) -> Result<()> {
    let device = backend::device();
    let question: Vec<u32> = (0..32).map(|i| 10 + i).collect();
    let shapes = [
        (
            "tiny (CLIP 64w/2L @336, LLM 128w/2L, MGVQ f16 widths/8, 1 block per stage)",
            64usize,
            2usize,
            128usize,
            256usize,
            2usize,
            8usize,
            512usize,
        ),
        (
            "7B-width (CLIP 1024w/2L @336, LLM 4096w/2L, MGVQ f16 widths, 1 block per stage)",
            1024,
            2,
            4096,
            11008,
            2,
            1,
            8192,
        ),
    ];
    for (name, vw, vl, d, inter, layers, mgvq_div, hidden) in shapes {
        let vision = clip336(vw, vl);
        let text = htc_shared::config::LlamaConfig::from_json(&serde_json::json!({
            "vocab_size": 32000, "hidden_size": d, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": d / 128, "num_key_value_heads": d / 128, "rms_norm_eps": 1e-5
        }))?;
        let lc = llava::Config {
            layout: Layout::LlavaHf,
            text,
            vision,
            image_token_id: 31999,
            select_layer: -2,
            projector_mlp: true,
        };
        let mut mc = htc_shared::mgvq::Config::f16c32_g8();
        mc.width_list = mc.width_list.iter().map(|w| (w / mgvq_div).max(32)).collect();
        mc.depth_list = vec![0, 1, 1, 1, 1];
        let hc = HtcConfig::paper(mc.clone(), hidden);
        let src = crate::formats::random::random_htc(&lc, &hc, 0);
        let vb = Loader::<Backend>::new(&src, &device);
        // Tuned for the backend as the server and `htc ask` tune it.
        let model = Htc::load(&vb, Llava::load(&vb, &lc)?, &hc)?
            .with_row_split(backend::row_split())
            .with_kv_dtype(crate::runtime::kv_dtype());
        drop(src);
        let img = ImageTensors {
            clip: Tensor::random([1, 3, 336, 336], Distribution::Normal(0.0, 1.0), &device),
            mgvq: Some(Tensor::random([1, 3, 336, 336], Distribution::Uniform(-1.0, 1.0), &device)),
            codes: None,
        };
        let reps = reps.min(3);
        writeln!(out, "HTC {name}")?;
        let compress = time(reps, || {
            let _ = model.compress(&img).expect("compress");
        });
        let c = model.compress(&img)?;
        let full = time(reps, || {
            let _ = model.full_text_logits(&img, &question).expect("full").into_data();
        });
        let cached = time(reps, || {
            let _ = model.answer_logits(&c, &question).expect("answer").into_data();
        });
        writeln!(out, "  compress (CLIP + MGVQ + 582-token prefix): {:.1} ms", compress * 1e3)?;
        writeln!(out, "  answer 32 tokens, full sequence (no cache): {:.1} ms", full * 1e3)?;
        writeln!(
            out,
            "  answer 32 tokens from the compressed image: {:.1} ms  ({:.1}x faster than the full sequence)",
            cached * 1e3,
            full / cached
        )?;
    }
    Ok(())
}
