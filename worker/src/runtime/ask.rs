//! One question from the command line, as `htc ask` runs it. [`ask`] submits it as a job to
//! the [engine](super::engine) the server and `htc eval` use (one engine for every front end)
//! and streams the replies: text, or the generated ids when the model has no tokenizer.
//! [`ask_direct`] decodes on a loaded checkpoint without the engine, only for what the engine
//! does not report: the prefill logits (`--dump-logits`) and every `<voco>` token's attention
//! (`--attention`). Both lay out a prompt the same way ([`TextTokenizer::prompt_ids`] for
//! LLaMA and LLaVA; `question_ids` after an HTC model's compressed image).
//!
//! [`TextTokenizer::prompt_ids`]: crate::text::TextTokenizer::prompt_ids

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::{backend::Backend, Tensor};

use htc_shared::protocol::ServerMessage;

use super::decode::{generate_from, stop_ids, Generation};
use super::engine::{Engine, EngineConfig, ImageData, Job, Question, UploadedImage};
use super::image::{
    clip_pixels, image_tensors, pixel_values_file, read_image_bytes, read_image_file, PixelValues,
};
use super::sampling::Sampling;
use crate::formats::checkpoint::{AnyModel, Snapshot};
use crate::formats::write::write_f32;
use crate::models::htc::{CompressedImage, Htc, ImageTensors};
use crate::models::llama::Prompt;
use crate::models::llava::expand_image_tokens;
use crate::text::StreamDecoder;

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
            let c = snap.model.llm().config();
            let (bos, eos) = (c.bos_token_id, c.eos_token_ids.first().copied());
            tok.prompt_ids(text, image, !no_template, snap.image_marker(), bos, eos)
        }
    }
}

/// Asks the question through the engine (loading `model` in it) and streams the answer to
/// `out`: text when the model has a tokenizer, otherwise the generated ids on one line
/// separated by spaces.
pub fn ask(model: &Path, req: &AskRequest, out: &mut dyn Write) -> Result<()> {
    // The input files first: a bad one fails before a large model loads.
    let image = match &req.image {
        None => None,
        Some(ImageSource::File(p)) => {
            let (bytes, img) = read_image_bytes(p)?;
            Some((bytes, ImageData::from(img)))
        }
        Some(ImageSource::PixelValues(p)) => {
            let pv = PixelValues::read(p)?;
            let bytes: Vec<u8> = pv.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            Some((bytes, ImageData::PixelValues(Arc::new(pv))))
        }
    };
    let engine = Engine::start(EngineConfig {
        model: Some(model.to_path_buf()),
        queue: 1,
        cache_capacity: 1,
        verify_client_codes: crate::runtime::engine::VerifyCodes::Off,
        max_batch: 1,
        max_compress_batch: 1,
        mode: None,
        require_images: false,
    })?;
    let card = &engine.card;
    let question = match &req.prompt {
        PromptInput::Ids(ids) => Question::Ids(ids.clone()),
        PromptInput::Text(_) if !card.has_tokenizer => {
            bail!("the model has no tokenizer.json; pass --prompt-ids")
        }
        PromptInput::Text(t) if req.no_template => Question::Plain(t.clone()),
        PromptInput::Text(t) => Question::Text(t.clone()),
    };
    if let (Some(ImageSource::PixelValues(p)), Some(mode)) = (&req.image, card.mode) {
        if mode.uses_discrete() {
            bail!(
                "mode {mode:?} runs MGVQ on the image itself: pass --image instead of --pixel-values ({})",
                p.display()
            );
        }
    }
    let image =
        image.map(|(bytes, image)| UploadedImage { image, codes: None, key: engine.image_key(&bytes, None) });
    let (reply, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let job = Job {
        request_id: 0,
        image,
        question,
        sampling: req.sampling,
        mode: None,
        cancel: cancel.clone(),
        reply,
    };
    engine.submit(job).map_err(|_| anyhow!("the engine's queue is full"))?;
    loop {
        match rx.blocking_recv() {
            Some(ServerMessage::Token { id, text, .. }) => {
                let written =
                    if card.has_tokenizer { out.write_all(text.as_bytes()) } else { write!(out, "{id} ") };
                if let Err(e) = written.and_then(|_| out.flush()) {
                    // Stop decoding: nobody reads the rest.
                    cancel.store(true, Ordering::Relaxed);
                    return Err(anyhow::Error::new(e).context("writing the answer"));
                }
            }
            Some(ServerMessage::Done { .. }) => break,
            Some(ServerMessage::Error { message, .. }) => bail!("{message}"),
            // The first `<voco>`'s attention map: `--attention` writes them all on the direct path.
            Some(_) => {}
            None => bail!("the engine stopped before the answer was done"),
        }
    }
    writeln!(out)?;
    Ok(())
}

/// Runs one question on a loaded checkpoint without the engine and streams the answer to
/// `out` as [`ask`] does, writing the prefill logits and the `<voco>` attention when asked.
pub fn ask_direct<B: Backend>(
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
