//! LLaVA-1.5 (vanilla path): CLIP patch features from `hidden_states[select_layer]`, a
//! `linear` or `mlp2x_gelu` projector, and the projected features spliced into the LLaMA input
//! embeddings at the image token. Loads llava-hf (`LlavaForConditionalGeneration`, hub and
//! transformers-5 key layouts) and original liuhaotian (`LlavaLlamaForCausalLM`) snapshots.

use anyhow::{anyhow, bail, Result};
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{backend::Backend, Tensor};

pub use htc_shared::config::{LlavaConfig as Config, LlavaLayout as Layout, LIUHAOTIAN_IMAGE_TOKEN};
use htc_shared::loader::Loader;

use super::clip::ClipVision;
use super::llama::Llama;
use crate::kernels::linear::flat_linear;

/// The multimodal projector: `linear`, or `mlp2x_gelu` (`Linear → GELU (erf) → Linear`).
#[derive(Module, Debug)]
pub struct Projector<B: Backend> {
    linear_1: Linear<B>,
    linear_2: Option<Linear<B>>,
}

/// Exact (erf) GELU, as `nn.GELU()`. Written out because backends differ: burn-candle's
/// `gelu` is the tanh approximation.
pub fn gelu_erf<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() * ((x / std::f64::consts::SQRT_2).erf() + 1.0) * 0.5
}

impl<B: Backend> Projector<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = flat_linear(&self.linear_1, x);
        match &self.linear_2 {
            Some(l2) => flat_linear(l2, gelu_erf(x)),
            None => x,
        }
    }
}

#[derive(Module, Debug)]
pub struct Llava<B: Backend> {
    pub vision: ClipVision<B>,
    pub projector: Projector<B>,
    pub llm: Llama<B>,
    select_layer: i64,
}

/// The first prefix under which `probe` exists (the first candidate when initialising).
fn find_prefix<B: Backend>(vb: &Loader<B>, candidates: &[&str], probe: &str) -> Result<String> {
    if vb.is_init() {
        return Ok(candidates[0].to_string());
    }
    candidates
        .iter()
        .find(|p| vb.pp(**p).contains(probe))
        .map(|p| p.to_string())
        .ok_or_else(|| anyhow!("checkpoint has no `{probe}` under any of {candidates:?}"))
}

impl<B: Backend> Llava<B> {
    /// A randomly initialised LLaVA (burn's initialisers), with parameter ids derived from checkpoint keys.
    pub fn init(c: &Config, device: &B::Device) -> Result<Self> {
        Self::load(&Loader::init(device), c)
    }

    /// Loads either layout; parameter ids are derived from their paths.
    pub fn load(vb: &Loader<B>, c: &Config) -> Result<Self> {
        let (vd, td) = (c.vision.hidden_size, c.text.hidden_size);
        let (vision_p, proj_p, lm_p, head_p) = match c.layout {
            Layout::LlavaHf => (
                find_prefix(
                    vb,
                    &["vision_tower", "model.vision_tower"],
                    "vision_model.embeddings.patch_embedding.weight",
                )
                .or_else(|_| {
                    find_prefix(
                        vb,
                        &["vision_tower", "model.vision_tower"],
                        "embeddings.patch_embedding.weight",
                    )
                })?,
                find_prefix(
                    vb,
                    &["multi_modal_projector", "model.multi_modal_projector"],
                    "linear_1.weight",
                )?,
                find_prefix(vb, &["language_model.model", "model.language_model"], "embed_tokens.weight")?,
                if vb.contains("language_model.lm_head.weight") {
                    "language_model.lm_head"
                } else {
                    "lm_head"
                }
                .to_string(),
            ),
            Layout::Liuhaotian => (
                "model.vision_tower.vision_tower".to_string(),
                "model.mm_projector".to_string(),
                "model".to_string(),
                "lm_head".to_string(),
            ),
        };
        let vis = vb.pp(&vision_p);
        if !vb.is_init()
            && !vis.contains("vision_model.embeddings.patch_embedding.weight")
            && !vis.contains("embeddings.patch_embedding.weight")
        {
            bail!("the checkpoint has no vision tower weights under `{vision_p}` (liuhaotian snapshots need the CLIP weights merged in)");
        }
        let vision = ClipVision::load(&vis, &c.vision)?;
        let p = vb.pp(&proj_p);
        let projector = match (c.layout, c.projector_mlp) {
            (Layout::LlavaHf, true) => Projector {
                linear_1: p.linear("linear_1", vd, td, true)?,
                linear_2: Some(p.linear("linear_2", td, td, true)?),
            },
            (Layout::LlavaHf, false) => {
                Projector { linear_1: p.linear("linear_1", vd, td, true)?, linear_2: None }
            }
            (Layout::Liuhaotian, true) => Projector {
                linear_1: p.linear("0", vd, td, true)?,
                linear_2: Some(p.linear("2", td, td, true)?),
            },
            (Layout::Liuhaotian, false) => {
                Projector { linear_1: p.linear("", vd, td, true)?, linear_2: None }
            }
        };
        let llm = Llama::load(&vb.pp(&lm_p), &vb.pp(&head_p), &c.text)?;
        Ok(Self { vision, projector, llm, select_layer: c.select_layer })
    }

    /// Image tokens per image (CLIP patches).
    /// The CLIP layer whose patch features feed the projector (negative: from the end).
    pub fn select_layer(&self) -> i64 {
        self.select_layer
    }

    pub fn vision_tokens(&self) -> usize {
        self.vision.num_patches()
    }

    /// Projected image features `[b, patches, d_model]` from CLIP pixel values `[b, 3, h, w]`.
    pub fn image_features(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        self.projector.forward(self.vision.patch_features(pixels, self.select_layer))
    }

    /// Input embeddings `[1, t, d]` for `ids` (already expanded), with the rows at `marker`
    /// replaced by `features` `[1, n, d]` in order.
    pub fn splice(&self, ids: &[i64], marker: i64, features: Option<Tensor<B, 3>>) -> Result<Tensor<B, 3>> {
        let mut parts = Vec::new();
        let mut text: Vec<u32> = Vec::new();
        let mut used = 0usize;
        let n_feat = features.as_ref().map(|f| f.dims()[1]).unwrap_or(0);
        let mut i = 0;
        while i < ids.len() {
            if ids[i] == marker {
                let f = features
                    .as_ref()
                    .ok_or_else(|| anyhow!("the prompt has an image token but no image was given"))?;
                if !text.is_empty() {
                    parts.push(self.llm.embed(&text));
                    text.clear();
                }
                let start = i;
                while i < ids.len() && ids[i] == marker {
                    i += 1;
                }
                let n = i - start;
                if used + n > n_feat {
                    bail!("the prompt has more image positions than image features ({n_feat})");
                }
                let [_, _, d] = f.dims();
                parts.push(f.clone().slice([0..1, used..used + n, 0..d]));
                used += n;
            } else {
                text.extend(self.llm.checked_ids(&ids[i..i + 1])?);
                i += 1;
            }
        }
        if !text.is_empty() {
            parts.push(self.llm.embed(&text));
        }
        if features.is_some() && used != n_feat {
            bail!("the prompt has {used} image positions but the image gives {n_feat} features");
        }
        if parts.is_empty() {
            bail!("empty prompt");
        }
        Ok(Tensor::cat(parts, 1))
    }
}

/// Expands the image placeholder: a single `marker` becomes `n` markers; a run of exactly `n`
/// (llava-hf's pre-expanded form) is kept; any other run length is an error.
pub fn expand_image_tokens(ids: &[i64], marker: i64, n: usize) -> Result<Vec<i64>> {
    let mut out = Vec::with_capacity(ids.len() + n);
    let mut i = 0;
    let mut runs = 0;
    while i < ids.len() {
        if ids[i] == marker {
            let start = i;
            while i < ids.len() && ids[i] == marker {
                i += 1;
            }
            let len = i - start;
            runs += 1;
            match len {
                1 => out.extend(std::iter::repeat_n(marker, n)),
                l if l == n => out.extend(std::iter::repeat_n(marker, n)),
                l => bail!("the prompt has a run of {l} image tokens; expected 1 or {n}"),
            }
        } else {
            out.push(ids[i]);
            i += 1;
        }
    }
    if runs > 1 {
        bail!("the prompt has {runs} image placeholders; exactly one image per prompt is supported");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_rules() {
        assert_eq!(expand_image_tokens(&[1, 9, 5], 9, 3).unwrap(), vec![1, 9, 9, 9, 5]);
        assert_eq!(expand_image_tokens(&[1, 9, 9, 9, 5], 9, 3).unwrap(), vec![1, 9, 9, 9, 5]);
        assert_eq!(expand_image_tokens(&[1, 5], 9, 3).unwrap(), vec![1, 5]);
        let e = expand_image_tokens(&[1, 9, 9, 5], 9, 3).unwrap_err();
        assert!(e.to_string().contains("run of 2"), "{e}");
        let e = expand_image_tokens(&[9, 1, 9], 9, 3).unwrap_err();
        assert!(e.to_string().contains("2 image placeholders"), "{e}");
    }
}
