//! One question against a loaded checkpoint, as `htc ask` runs it: prompt construction,
//! image tensors, the decoding core and streaming of the answer (text, or ids when the model
//! has no tokenizer). Any architecture: LLaMA, LLaVA, and HTC (compress once, then answer).

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::{backend::Backend, Tensor};

use super::decode::{generate_from, stop_ids, Generation};
use super::image::{clip_pixels, image_tensors, pixel_values_file, read_image_file};
use super::sampling::Sampling;
use crate::formats::checkpoint::{AnyModel, Snapshot};
use crate::formats::write::write_f32;
use crate::models::htc::{CompressedImage, Htc, ImageTensors};
use crate::models::llama::Prompt;
use crate::models::llava::expand_image_tokens;
use crate::text::{StreamDecoder, Template};

/// Where the image of a CLI question comes from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// An image file, preprocessed as the model's image processor does.
    File(PathBuf),
    /// Ready pixel values: safetensors with `pixel_values` `[1, 3, h, w]` or `[3, h, w]`.
    PixelValues(PathBuf),
}

#[derive(Debug, Clone)]
pub enum PromptInput {
    Text(String),
    Ids(Vec<i64>),
}

#[derive(Debug, Clone)]
pub struct AskRequest {
    pub image: Option<ImageSource>,
    pub prompt: PromptInput,
    pub sampling: Sampling,
    pub no_template: bool,
    pub dump_logits: Option<PathBuf>,
    /// HTC models: write the `<voco>` attention over `[v_d; V]` here as JSON.
    pub attention: Option<PathBuf>,
}

/// Both image inputs of an HTC model, from an image file (MGVQ runs on the image itself).
pub fn htc_inputs<B: Backend>(
    snap: &Snapshot<B>, input: &ImageSource, device: &B::Device,
) -> Result<ImageTensors<B>> {
    let AnyModel::Htc { model, preprocess, .. } = &snap.model else { bail!("not an HTC model") };
    match input {
        ImageSource::File(p) => image_tensors(model, preprocess, &read_image_file(p)?, device),
        ImageSource::PixelValues(p) if model.config.uses_discrete() => bail!(
            "mode {:?} runs MGVQ on the image itself: pass --image instead of --pixel-values ({})",
            model.config.mode,
            p.display()
        ),
        ImageSource::PixelValues(_) => {
            Ok(ImageTensors { clip: load_pixels(snap, input, device)?, mgvq: None, codes: None })
        }
    }
}

/// The `<voco>` attention maps as JSON: `layers[l][v]` lists the head-averaged attention of
/// `<voco>` token `v` over the `n_discrete` anchors followed by the `n_visual` patches.
pub fn attention_json<B: Backend>(m: &Htc<B>, c: &CompressedImage<B>) -> serde_json::Value {
    let n = c.voco_attention.len().max(1) as f32;
    let mean: Vec<Vec<f32>> = (0..c.layout.n_voco)
        .map(|v| {
            let w = c.voco_attention.first().map(|l| l[v].len()).unwrap_or(0);
            (0..w).map(|j| c.voco_attention.iter().map(|l| l[v][j]).sum::<f32>() / n).collect()
        })
        .collect();
    serde_json::json!({
        "mode": m.config.mode,
        "topology": m.config.topology,
        "n_discrete": c.layout.n_discrete,
        "n_visual": c.layout.n_visual,
        "n_voco": c.layout.n_voco,
        "layers": c.voco_attention,
        "mean_over_layers": mean,
    })
}

/// Loads CLIP pixel values `[1, 3, size, size]` for a LLaVA model.
pub fn load_pixels<B: Backend>(
    snap: &Snapshot<B>, input: &ImageSource, device: &B::Device,
) -> Result<Tensor<B, 4>> {
    let (config, preprocess) = match &snap.model {
        AnyModel::Llava { config, preprocess, .. } | AnyModel::Htc { config, preprocess, .. } => {
            (config, preprocess)
        }
        AnyModel::Llama(_) => bail!("this model ({}) takes no images", snap.model.architecture()),
    };
    let size = config.vision.image_size;
    match input {
        ImageSource::File(p) => clip_pixels(preprocess, &read_image_file(p)?, size, device),
        ImageSource::PixelValues(p) => pixel_values_file(p, size, device),
    }
}

/// The prompt token ids (image placeholder not yet expanded).
pub fn prompt_ids<B: Backend>(
    snap: &Snapshot<B>, prompt: &PromptInput, image: bool, no_template: bool,
) -> Result<Vec<i64>> {
    match prompt {
        PromptInput::Ids(ids) => Ok(ids.clone()),
        PromptInput::Text(text) => {
            let tok = snap
                .tokenizer
                .as_ref()
                .ok_or_else(|| anyhow!("the model has no tokenizer.json; pass --prompt-ids"))?;
            let marker = snap.image_marker();
            if no_template {
                let text = if image && !text.contains("<image>") {
                    format!("<image>\n{text}")
                } else {
                    text.clone()
                };
                return tok.encode_prompt(&text, true, marker);
            }
            let bos = tok.token_str(snap.model.llm().config().bos_token_id);
            let eos = tok.token_str(snap.model.llm().config().eos_token_ids.first().copied());
            let rendered = tok.template.render(text, image, &bos, &eos)?;
            let add_special = !tok.template.adds_special_tokens() || matches!(tok.template, Template::Plain);
            tok.encode_prompt(&rendered, add_special, marker)
        }
    }
}

/// Runs one question and streams the answer to `out`: text when the model has a tokenizer,
/// otherwise the generated ids on one line separated by spaces.
pub fn ask<B: Backend>(
    snap: &Snapshot<B>, req: &AskRequest, device: &B::Device, out: &mut dyn Write,
) -> Result<Generation> {
    let llm = snap.model.llm();
    if let AnyModel::Htc { model, .. } = &snap.model {
        return ask_htc(snap, model, req, device, out);
    }
    let ids = prompt_ids(snap, &req.prompt, req.image.is_some(), req.no_template)?;
    let embeds = match &snap.model {
        AnyModel::Htc { .. } => unreachable!("handled above"),
        AnyModel::Llava { model, config, .. } => {
            let marker = config.image_token_id;
            let ids = expand_image_tokens(&ids, marker, config.num_image_tokens())?;
            let has_marker = ids.contains(&marker);
            let features = match (&req.image, has_marker) {
                (Some(img), true) => Some(model.image_features(load_pixels(snap, img, device)?)),
                (Some(_), false) => bail!("an image was given but the prompt has no image token"),
                (None, true) => bail!("the prompt has an image token but no image was given (use --image)"),
                (None, false) => None,
            };
            model.splice(&ids, marker, features)?
        }
        AnyModel::Llama(m) => {
            if req.image.is_some() {
                bail!("this model (llama) takes no images");
            }
            let ids = m.checked_ids(&ids)?;
            m.embed(&ids)
        }
    };
    stream_answer(snap, Prompt { cache: llm.new_cache(), embeds, first_position: 0, mask: None }, req, out)
}

/// Compress once, then answer the text against the compressed image.
fn ask_htc<B: Backend>(
    snap: &Snapshot<B>, model: &Htc<B>, req: &AskRequest, device: &B::Device, out: &mut dyn Write,
) -> Result<Generation> {
    let image = req.image.as_ref().ok_or_else(|| anyhow!("this HTC model needs an image (--image)"))?;
    let ids: Vec<i64> = match &req.prompt {
        PromptInput::Ids(ids) => ids.clone(),
        PromptInput::Text(text) => {
            let tok = snap
                .tokenizer
                .as_ref()
                .ok_or_else(|| anyhow!("the model has no tokenizer.json; pass --prompt-ids"))?;
            tok.question_ids(text, !req.no_template)?.into_iter().map(i64::from).collect()
        }
    };
    let ids = model.llava.llm.checked_ids(&ids)?;
    let compressed = model.compress(&htc_inputs(snap, image, device)?)?;
    if let Some(path) = &req.attention {
        let doc = attention_json(model, &compressed);
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    stream_answer(snap, model.answer_prompt(&compressed, &ids)?, req, out)
}

/// Generates from `prompt` and streams the answer: text with a tokenizer, else ids.
fn stream_answer<B: Backend>(
    snap: &Snapshot<B>, prompt: Prompt<B>, req: &AskRequest, out: &mut dyn Write,
) -> Result<Generation> {
    let llm = snap.model.llm();
    let stop = stop_ids(snap.tokenizer.as_ref(), llm);
    let mut decoder = StreamDecoder::new();
    let mut io_err = None;
    let gen = generate_from(llm, prompt, &stop, &req.sampling, req.dump_logits.is_some(), |id| {
        let r = match &snap.tokenizer {
            Some(t) => decoder.push(&t.inner, id).and_then(|d| {
                if let Some(d) = d {
                    out.write_all(d.as_bytes())?;
                }
                Ok(())
            }),
            None => write!(out, "{id} ").map_err(Into::into),
        };
        let r = r.and_then(|_| out.flush().map_err(Into::into));
        match r {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                io_err = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = io_err {
        return Err(e.context("writing the answer"));
    }
    writeln!(out)?;
    if let (Some(path), Some((t, v, data))) = (&req.dump_logits, &gen.prefill_logits) {
        write_f32(path, "logits", &[*t, *v], data)?;
    }
    Ok(gen)
}
