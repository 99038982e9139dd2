//! One question against a model: prompt construction, image preprocessing, generation and
//! streaming of the answer (the `htc ask` command).

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::{backend::Backend, Tensor, TensorData};

use htc_shared::preprocess::{decode_image, DecodeLimits};

use crate::chat::{StreamDecoder, Template};
use crate::generate::{generate_from, Generation, Prompt, Sampling};
use crate::models::htc::{CompressedImage, Htc, ImageInputs};
use crate::models::llava::expand_image_tokens;
use crate::snapshot::{AnyModel, Snapshot};

/// Where the image comes from.
#[derive(Debug, Clone)]
pub enum ImageInput {
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
    pub image: Option<ImageInput>,
    pub prompt: PromptInput,
    pub sampling: Sampling,
    pub no_template: bool,
    pub dump_logits: Option<PathBuf>,
    /// HTC models: write the `<voco>` attention over `[v_d; V]` here as JSON.
    pub attention: Option<PathBuf>,
}

/// Both image inputs of an HTC model: CLIP pixels, and MGVQ pixels when the mode uses MGVQ
/// (which needs the image file itself).
pub fn htc_inputs<B: Backend>(
    snap: &Snapshot<B>,
    input: &ImageInput,
    device: &B::Device,
) -> Result<ImageInputs<B>> {
    let AnyModel::Htc { model, .. } = &snap.model else { bail!("not an HTC model") };
    let clip = load_pixels(snap, input, device)?;
    let mgvq = match (&model.config.mgvq, model.config.uses_discrete(), input) {
        (Some(mc), true, ImageInput::File(p)) => {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read image {}", p.display()))?;
            let img =
                decode_image(&bytes, DecodeLimits::default()).with_context(|| format!("{}", p.display()))?;
            let s = mc.image_size;
            Some(Tensor::from_data(
                TensorData::new(htc_shared::mgvq::preprocess(&img, s as u32), [1, 3, s, s]),
                device,
            ))
        }
        (_, true, ImageInput::PixelValues(_)) => bail!(
            "mode {:?} runs MGVQ on the image itself: pass --image instead of --pixel-values",
            model.config.mode
        ),
        _ => None,
    };
    Ok(ImageInputs { clip, mgvq, codes: None })
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

/// Loads CLIP pixel values `[1, 3, size, size]` for a LLaVA or HTC model.
pub fn load_pixels<B: Backend>(
    snap: &Snapshot<B>,
    input: &ImageInput,
    device: &B::Device,
) -> Result<Tensor<B, 4>> {
    let (config, preprocess) = match &snap.model {
        AnyModel::Llava { config, preprocess, .. } | AnyModel::Htc { config, preprocess, .. } => {
            (config, preprocess)
        }
        AnyModel::Llama(_) => bail!("this model ({}) takes no images", snap.model.architecture()),
    };
    let size = config.vision.image_size;
    match input {
        ImageInput::File(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read image {}", p.display()))?;
            let img =
                decode_image(&bytes, DecodeLimits::default()).with_context(|| format!("{}", p.display()))?;
            let (h, w) = preprocess.crop;
            if (h as usize, w as usize) != (size, size) {
                bail!("preprocessor crop size {h}x{w} does not match the vision tower's {size}x{size}");
            }
            let data = preprocess.apply(&img);
            Ok(Tensor::from_data(TensorData::new(data, [1, 3, size, size]), device))
        }
        ImageInput::PixelValues(p) => pixel_values_file(p, size, device),
    }
}

fn pixel_values_file<B: Backend>(p: &Path, size: usize, device: &B::Device) -> Result<Tensor<B, 4>> {
    let src = crate::weights::WeightSource::open_files(&[p.to_path_buf()])?;
    let t =
        src.read("pixel_values").with_context(|| format!("{} has no `pixel_values` tensor", p.display()))?;
    let ok = match t.shape.as_slice() {
        [1, 3, h, w] | [3, h, w] => *h == size && *w == size,
        _ => false,
    };
    if !ok {
        bail!(
            "pixel_values in {} has shape {:?}; the model expects [1, 3, {size}, {size}]",
            p.display(),
            t.shape
        );
    }
    Ok(Tensor::from_data(TensorData::new(t.data, [1, 3, size, size]), device))
}

/// The prompt token ids (image placeholder not yet expanded).
pub fn prompt_ids<B: Backend>(
    snap: &Snapshot<B>,
    prompt: &PromptInput,
    image: bool,
    no_template: bool,
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
    snap: &Snapshot<B>,
    req: &AskRequest,
    device: &B::Device,
    out: &mut dyn Write,
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
            let vocab = m.config().vocab_size;
            let ids: Vec<u32> =
                ids.iter()
                    .map(|&i| {
                        u32::try_from(i).ok().filter(|&u| (u as usize) < vocab).ok_or_else(|| {
                            anyhow!("token id {i} is out of range for a vocabulary of {vocab}")
                        })
                    })
                    .collect::<Result<_>>()?;
            if ids.is_empty() {
                bail!("empty prompt");
            }
            m.embed(&ids)
        }
    };
    stream_answer(snap, Prompt { cache: llm.new_cache(), embeds, first_position: 0, mask: None }, req, out)
}

/// Compress once, then answer the text against the compressed image.
fn ask_htc<B: Backend>(
    snap: &Snapshot<B>,
    model: &Htc<B>,
    req: &AskRequest,
    device: &B::Device,
    out: &mut dyn Write,
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
    let ids: Vec<u32> = ids
        .iter()
        .map(|&i| u32::try_from(i).map_err(|_| anyhow!("token id {i} is out of range")))
        .collect::<Result<_>>()?;
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
    snap: &Snapshot<B>,
    prompt: Prompt<B>,
    req: &AskRequest,
    out: &mut dyn Write,
) -> Result<Generation> {
    let llm = snap.model.llm();
    let stop: Vec<u32> = match &snap.tokenizer {
        Some(t) => t.eos_ids.clone(),
        None => llm.config().eos_token_ids.clone(),
    };
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
        write_logits(path, *t, *v, data)?;
    }
    Ok(gen)
}

/// Writes `logits` f32 `[t, v]` as safetensors.
pub fn write_logits(path: &Path, t: usize, v: usize, data: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![t, v], &bytes)
        .map_err(|e| anyhow!("cannot build the logits tensor: {e}"))?;
    safetensors::serialize_to_file([("logits", view)], None, path)
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))
}
