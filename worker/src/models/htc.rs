//! HTC-VLM: the hybrid sequence `[BOS][v_d × N_d][V × 576][<voco> × k][text …]` under the
//! disentanglement mask, with compress-once / ask-many.
//!
//! - `V`: CLIP patch features through the continuous projector P_v (the LLaVA path);
//! - `v_d`: MGVQ's quantised features `q`, flattened channel-first, through the discrete
//!   projector P_d (`q_len → hidden → N_d · d_model`, GELU after each layer, Eq. 4), reshaped
//!   into N_d anchor tokens;
//! - `<voco>`: k trainable embeddings.
//!
//! [`Htc::compress`] runs the prefix once and keeps, per layer, only the K/V of the positions
//! text may see (BOS and the `<voco>` tokens) with their original RoPE positions, plus the
//! head-averaged attention of `<voco>` over `[v_d; V]`. Answering runs only the text.

use anyhow::{bail, Context, Result};
use burn::module::{Initializer, Module, Param};
use burn::nn::Linear;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use rayon::prelude::*;

use htc_shared::config::{Fusion, HtcConfig, HtcMode};
use htc_shared::loader::Loader;
use htc_shared::mask::MaskLayout;
use htc_shared::mgvq::Mgvq;

use super::llama::{self, KvCache, Prompt, Step};
use super::llava::{self, gelu_erf, Llava};

/// The widths from input to output of a P_d of `layers` layers.
pub fn discrete_widths(q_len: usize, hidden: usize, layers: usize, out: usize) -> Vec<usize> {
    std::iter::once(q_len).chain(std::iter::repeat_n(hidden, layers.saturating_sub(1))).chain([out]).collect()
}

/// P_d: `q_len → hidden → N_d · d_model` with GELU after each layer (Eq. 4); one layer is a
/// plain linear map `q_len → N_d · d_model` (Table 10's "Linear"), three layers add a second
/// hidden layer of the same width. Layers are stored as `linear_1`, `linear_2`, ….
#[derive(Module, Debug)]
pub struct DiscreteProjector<B: Backend> {
    layers: Vec<Linear<B>>,
    n_tokens: usize,
}

impl<B: Backend> DiscreteProjector<B> {
    pub fn load(
        vb: &Loader<B>, q_len: usize, hidden: usize, layers: usize, n_tokens: usize, d_model: usize,
    ) -> Result<Self> {
        let widths = discrete_widths(q_len, hidden, layers, n_tokens * d_model);
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| vb.linear(&format!("linear_{}", i + 1), w[0], w[1], true))
            .collect::<Result<_, _>>()?;
        Ok(Self { layers, n_tokens })
    }

    /// `q: [b, C, h, w]` → anchors `[b, N_d, d_model]`.
    pub fn forward(&self, q: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, c, h, w] = q.dims();
        let mut x = q.reshape([b, c * h * w]);
        let linear = self.layers.len() == 1;
        for l in &self.layers {
            x = l.forward(x);
            if !linear {
                x = gelu_erf(x);
            }
        }
        let [_, nd] = x.dims();
        x.reshape([b, self.n_tokens, nd / self.n_tokens])
    }
}

/// An image compressed for answering: per layer, K/V `[1, kv_heads, kept, hd]` of the kept
/// positions, the next free RoPE position, and the `<voco>` attention maps.
#[derive(Debug, Clone)]
pub struct CompressedImage<B: Backend> {
    pub cache: KvCache<B>,
    /// RoPE positions of the kept keys (BOS and the `<voco>` tokens).
    pub kept_positions: Vec<usize>,
    /// The position the first text token takes.
    pub next_position: usize,
    /// The sequence layout with no text yet.
    pub layout: MaskLayout,
    /// Per layer, per `<voco>` token, head-averaged attention over `[v_d; V]`.
    pub voco_attention: Vec<Vec<Vec<f32>>>,
}

#[derive(Module, Debug)]
pub struct Htc<B: Backend> {
    pub llava: Llava<B>,
    pub mgvq: Option<Mgvq<B>>,
    pub discrete: Option<DiscreteProjector<B>>,
    /// The `<voco>` embeddings `[k, d_model]` (trainable).
    pub voco: Param<Tensor<B, 2>>,
    #[module(skip)]
    pub config: HtcConfig,
}

/// An image as the model takes it: CLIP pixel values, MGVQ pixel values (in [-1, 1]), and,
/// when trusted, MGVQ codes computed elsewhere (they replace running the MGVQ encoder).
pub struct ImageTensors<B: Backend> {
    pub clip: Tensor<B, 4>,
    pub mgvq: Option<Tensor<B, 4>>,
    pub codes: Option<Vec<Vec<u16>>>,
}

impl<B: Backend> Htc<B> {
    /// A randomly initialised HTC model (burn's initialisers; `<voco>` drawn from N(0, 0.02)),
    /// with parameter ids derived from checkpoint keys.
    pub fn init(llava: &llava::Config, config: &HtcConfig, device: &B::Device) -> Result<Self> {
        let vb = Loader::init(device);
        Self::load(&vb, Llava::load(&vb, llava)?, config)
    }

    /// Loads the HTC parts under `htc.*` and `mgvq.*` next to an already loaded LLaVA.
    /// Parameter ids come from checkpoint keys.
    pub fn load(vb: &Loader<B>, llava: Llava<B>, config: &HtcConfig) -> Result<Self> {
        config.validate()?;
        let d = llava.llm.config().hidden_size;
        // A checkpoint trained in a mode without anchors (say, `none` as a first stage) keeps
        // the tokenizer and anchor MLP it was made with, for a later stage to use.
        let kept = config.mgvq.is_some() && vb.contains("htc.discrete_projector.linear_1.weight");
        let (mgvq, discrete) = if config.uses_discrete() || kept {
            let mc = config.mgvq.as_ref().expect("validated");
            // In f32 whatever `--dtype`: its codes must be the browser's, and in f16 some of
            // them move (see docs/backends.md#precision).
            let m = Mgvq::load(&vb.pp("mgvq").with_dtype(burn::tensor::DType::F32), mc)?;
            let p = DiscreteProjector::load(
                &vb.pp("htc.discrete_projector"),
                mc.q_len(),
                config.discrete_hidden,
                config.discrete_layers,
                config.n_discrete,
                d,
            )?;
            (Some(m), Some(p))
        } else {
            (None, None)
        };
        let voco = vb.pp("htc").param(
            "voco_embeddings",
            [config.n_voco, d],
            Initializer::Normal { mean: 0.0, std: 0.02 },
        )?;
        let m = Self { llava, mgvq, discrete, voco, config: config.clone() };
        Ok(m)
    }

    /// The same weights in another mode: for ablations (`htc eval --mode`) and for training
    /// stages (`htc train --mode`). Modes without anchors leave the MGVQ tokenizer and the anchor
    /// MLP unused (kept, so a later stage can use them); a mode with anchors needs a checkpoint
    /// that has them, and a bottleneck mode needs a checkpoint from a bottleneck mode (its
    /// `<voco>`), unless `fresh_voco` (a training stage that learns it).
    pub fn with_mode(mut self, mode: HtcMode, fresh_voco: bool) -> Result<Self> {
        let from = self.config.mode;
        let mut config = self.config.clone();
        config.mode = mode;
        if config.uses_discrete() && (self.mgvq.is_none() || self.discrete.is_none()) {
            bail!("mode {mode:?} needs the discrete anchors (MGVQ and the anchor MLP); this {from:?}-mode checkpoint has none");
        }
        let bottleneck = |m: HtcMode| !matches!(m, HtcMode::None | HtcMode::Avgpool);
        if bottleneck(mode) && !bottleneck(from) && !fresh_voco {
            bail!("mode {mode:?} reads the image through <voco>; this {from:?}-mode checkpoint has no trained <voco>");
        }
        config.validate()?;
        self.config = config;
        Ok(self)
    }

    fn n_visual(&self) -> usize {
        match self.config.mode {
            HtcMode::Discrete => 0,
            HtcMode::Avgpool => self.config.n_voco,
            _ => self.llava.vision_tokens(),
        }
    }

    /// The sequence layout for `n_text` text tokens. `none` and `avgpool` have no bottleneck:
    /// their visual tokens are plain causal context.
    pub fn layout(&self, n_text: usize) -> MaskLayout {
        let c = &self.config;
        MaskLayout {
            bos: true,
            // Mean fusion adds the anchors into the patches: no positions of their own.
            n_discrete: if c.uses_discrete() && !self.mean_fused() { c.n_discrete } else { 0 },
            n_visual: self.n_visual(),
            n_voco: if matches!(c.mode, HtcMode::None | HtcMode::Avgpool) { 0 } else { c.n_voco },
            n_text,
        }
    }

    /// How many leading positions of `layout` attend only to themselves (BOS, the anchors and
    /// the patches under the star mask), for [`Step::self_only`].
    pub fn self_only(&self, layout: &MaskLayout) -> usize {
        if self.bottleneck() && self.config.topology == htc_shared::mask::Topology::Star {
            layout.voco_start()
        } else {
            0
        }
    }

    /// Whether the anchors are averaged into the patches ([`Fusion::Mean`] with both channels).
    fn mean_fused(&self) -> bool {
        self.config.fusion == Fusion::Mean && self.config.mode == HtcMode::Htc
    }

    fn bottleneck(&self) -> bool {
        !matches!(self.config.mode, HtcMode::None | HtcMode::Avgpool)
    }

    /// Embeddings of `[BOS][v_d][V][<voco>]` (`[b, prefix, d]`) for a batch of `b` images
    /// (MGVQ codes given from outside: `[b*h*w][G]`, images one after another).
    pub fn prefix_embeds(&self, img: &ImageTensors<B>) -> Result<Tensor<B, 3>> {
        let llm = &self.llava.llm;
        let bos = llm.config().bos_token_id.unwrap_or(1);
        let b = img.clip.dims()[0];
        let mut parts = vec![llm.embed(&[bos]).repeat_dim(0, b)];
        let mut anchors = None;
        if let (true, Some(m), Some(p)) = (self.config.uses_discrete(), &self.mgvq, &self.discrete) {
            let q = match (&img.codes, &img.mgvq) {
                (Some(codes), _) if codes.len() != b * m.config().latent_side().pow(2) => bail!(
                    "{} rows of MGVQ codes for {b} images of {} latent positions each",
                    codes.len(),
                    m.config().latent_side().pow(2)
                ),
                (Some(codes), _) => m.q_from_codes(codes),
                (None, Some(px)) => m.encode(px.clone())?.q,
                (None, None) => bail!("mode {:?} needs MGVQ pixel values", self.config.mode),
            };
            anchors = Some(p.forward(q.cast(parts[0].dtype())));
        }
        let patches = if self.config.uses_continuous() {
            let v = self.llava.image_features(img.clip.clone());
            Some(if self.config.mode == HtcMode::Avgpool {
                avg_pool_tokens(v, self.config.n_voco)
            } else {
                v
            })
        } else {
            None
        };
        // The hybrid sequence in the configured fusion order (the mask treats anchors and
        // patches alike, so only the positions differ).
        match (anchors, patches, self.config.fusion) {
            (Some(a), Some(v), Fusion::After) => parts.extend([v, a]),
            (Some(a), Some(v), Fusion::Mean) => {
                let n = v.dims()[1];
                parts.push(v + a.mean_dim(1).repeat_dim(1, n))
            }
            (a, v, _) => parts.extend(a.into_iter().chain(v)),
        }
        if self.bottleneck() {
            parts.push(self.voco.val().unsqueeze::<3>().repeat_dim(0, b));
        }
        Ok(Tensor::cat(parts, 1))
    }

    /// The additive mask `[len, len]` of a layout, on the model's device.
    fn mask(&self, layout: &MaskLayout) -> Tensor<B, 2> {
        let n = layout.len();
        let m = if self.bottleneck() {
            layout.additive(self.config.topology)
        } else {
            (0..n)
                .flat_map(|q| (0..n).map(move |k| if k <= q { 0.0 } else { htc_shared::mask::BLOCKED }))
                .collect()
        };
        Tensor::from_data(TensorData::new(m, [n, n]), &self.llava.llm.device())
    }

    /// The model tuned for CPU inference on `threads` threads (1: as on the GPU backends): the
    /// LLM's few-row products split over them ([`llama::Llama::with_row_split`]) and, with more
    /// than one, the MGVQ encoder's convolutions as plain products
    /// ([`Mgvq::with_conv_products`]), the vision tower's elementwise work as fused kernels
    /// ([`super::clip::ClipVision::with_host_kernels`]) and a batch of images compressed one image per thread
    /// ([`Self::compress_batch`]).
    pub fn with_row_split(mut self, threads: usize) -> Self {
        self.llava.llm = self.llava.llm.with_row_split(threads);
        self.llava.vision = self.llava.vision.with_host_kernels(threads > 1);
        self.mgvq = self.mgvq.map(|m| m.with_conv_products(threads > 1));
        self
    }

    /// The model's LLM storing the caches it decodes on in `dtype` in f32 CPU inference
    /// ([`llama::Llama::with_kv_dtype`]).
    pub fn with_kv_dtype(mut self, dtype: crate::kernels::kv_cache::KvDtype) -> Self {
        self.llava.llm = self.llava.llm.with_kv_dtype(dtype);
        self
    }

    /// Runs the prefix once and keeps what text may see.
    pub fn compress(&self, img: &ImageTensors<B>) -> Result<CompressedImage<B>> {
        self.compress_embeds(self.prefix_embeds(img)?)
    }

    /// [`Self::compress`] for several images at once: the encoders and the prefix run as one
    /// batch, then each image gets its own compressed cache (what compressing it alone gives,
    /// up to the order of float additions); on a CPU backend (row split > 1) the images are
    /// compressed side by side, one per thread. Images must all carry MGVQ codes or all not.
    pub fn compress_batch(&self, imgs: &[ImageTensors<B>]) -> Result<Vec<CompressedImage<B>>> {
        if imgs.len() < 2 {
            return imgs.iter().map(|i| self.compress(i)).collect();
        }
        let codes = match imgs.iter().filter(|i| i.codes.is_some()).count() {
            0 => None,
            n if n == imgs.len() => {
                Some(imgs.iter().flat_map(|i| i.codes.clone().unwrap_or_default()).collect())
            }
            _ => bail!("a batch of images to compress mixes client MGVQ codes and pixels"),
        };
        if self.llava.llm.row_split() > 1 {
            // On a CPU backend a batch gains nothing (the encoders' convolutions are already
            // products over every pixel, and their elementwise passes run on one core each),
            // so each image is compressed on a thread of rayon's pool instead, exactly as it
            // would be alone: the same bits (a batch rounds half-precision products otherwise).
            return imgs.par_iter().map(|i| self.compress(i)).collect();
        }
        let mgvq = match (&codes, imgs.iter().all(|i| i.mgvq.is_some())) {
            (None, true) => Some(Tensor::cat(imgs.iter().filter_map(|i| i.mgvq.clone()).collect(), 0)),
            _ => None,
        };
        let batch =
            ImageTensors { clip: Tensor::cat(imgs.iter().map(|i| i.clip.clone()).collect(), 0), mgvq, codes };
        self.compress_rows(self.prefix_embeds(&batch)?)
    }

    /// [`Self::compress`] from the prefix's embeddings ([`Self::prefix_embeds`]): the LLM part.
    pub fn compress_embeds(&self, embeds: Tensor<B, 3>) -> Result<CompressedImage<B>> {
        if embeds.dims()[0] != 1 {
            bail!("compress_embeds takes one image's prefix; {} given", embeds.dims()[0]);
        }
        self.compress_rows(embeds)?.pop().context("one compressed image")
    }

    /// Compresses each row of a batch of prefixes `[b, prefix, d]`.
    fn compress_rows(&self, embeds: Tensor<B, 3>) -> Result<Vec<CompressedImage<B>>> {
        let llm = &self.llava.llm;
        let rows = embeds.dims()[0];
        let layout = self.layout(0);
        let n = layout.len();
        if embeds.dims()[1] != n {
            bail!("a prefix of {} embeddings for a layout of {n} positions", embeds.dims()[1]);
        }
        let positions: Vec<usize> = (0..n).collect();
        let mut cache = llm.new_cache();
        let out = llm.forward(
            embeds,
            Step {
                positions: &positions,
                mask: Some(self.mask(&layout)),
                want_attention: true,
                self_only: self.self_only(&layout),
            },
            &mut cache,
        );
        let kept: Vec<usize> = if self.bottleneck() {
            layout.text_rows_over_kept(self.config.topology).0
        } else {
            positions.clone()
        };
        // Gather the kept positions as contiguous runs (some backends cannot index-select
        // strided tensors).
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        for &i in &kept {
            match runs.last_mut() {
                Some(r) if r.end == i => r.end += 1,
                _ => runs.push(i..i + 1),
            }
        }
        let gather = |t: Tensor<B, 4>| {
            let [b, h, _, d] = t.dims();
            Tensor::cat(runs.iter().map(|r| t.clone().slice([0..b, 0..h, r.clone(), 0..d])).collect(), 2)
        };
        cache.seal();
        for layer in cache.layers.iter_mut() {
            if let Some((k, v)) = layer.take() {
                *layer = Some((gather(k), gather(v)));
            }
        }
        let (vis0, vis1) = (layout.bos as usize, layout.voco_start());
        let from = out.attention_from;
        let (q0, q1) = (layout.voco_start() - from, layout.text_start() - from);
        // Per layer, the `<voco>` rows of every image: `[rows][q1 - q0][vis1 - vis0]`.
        let mut attention: Vec<Vec<f32>> = Vec::with_capacity(out.attention.len());
        for a in out.attention {
            let picked = a.slice([0..rows, q0..q1, vis0..vis1]);
            attention.push(
                picked.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?,
            );
        }
        let per_image = (q1 - q0) * (vis1 - vis0);
        (0..rows)
            .map(|i| {
                let mut c = cache.clone();
                if rows > 1 {
                    for layer in c.layers.iter_mut() {
                        if let Some((k, v)) = layer.take() {
                            let [_, h, t, d] = k.dims();
                            *layer = Some((
                                k.slice([i..i + 1, 0..h, 0..t, 0..d]),
                                v.slice([i..i + 1, 0..h, 0..t, 0..d]),
                            ));
                        }
                    }
                }
                let voco_attention = attention
                    .iter()
                    .map(|a| {
                        a[i * per_image..(i + 1) * per_image]
                            .chunks(vis1 - vis0)
                            .map(<[f32]>::to_vec)
                            .collect()
                    })
                    .collect();
                Ok(CompressedImage {
                    cache: c,
                    kept_positions: kept.clone(),
                    next_position: n,
                    layout,
                    voco_attention,
                })
            })
            .collect()
    }

    /// The prompt that answers `text_ids` against a compressed image.
    pub fn answer_prompt(&self, c: &CompressedImage<B>, text_ids: &[u32]) -> Result<Prompt<B>> {
        let llm = &self.llava.llm;
        llm.check_ids(text_ids)?;
        let t = text_ids.len();
        let kept = c.kept_positions.len();
        let mask = if self.bottleneck() {
            let layout = MaskLayout { n_text: t, ..c.layout };
            layout.text_rows_over_kept(self.config.topology).1
        } else {
            (0..t)
                .flat_map(|q| {
                    (0..kept + t).map(move |k| if k <= kept + q { 0.0 } else { htc_shared::mask::BLOCKED })
                })
                .collect()
        };
        Ok(Prompt {
            cache: c.cache.clone(),
            embeds: llm.embed(text_ids),
            first_position: c.next_position,
            mask: Some(Tensor::from_data(TensorData::new(mask, [t, kept + t]), &llm.device())),
        })
    }

    /// One full forward of the whole sequence under the mask; returns the text logits
    /// `[1, n_text, vocab]`. The reference that compress-then-answer must equal.
    pub fn full_text_logits(&self, img: &ImageTensors<B>, text_ids: &[u32]) -> Result<Tensor<B, 3>> {
        let llm = &self.llava.llm;
        let hidden = self.full_hidden(img, llm.embed(text_ids))?;
        let [_, n, d] = hidden.dims();
        let start = self.layout(text_ids.len()).text_start();
        Ok(llm.logits(hidden.slice([0..1, start..n, 0..d])))
    }

    /// Final hidden states `[b, len, d]` of the whole sequence `[prefix][text]` under the mask,
    /// for a batch of images and text embeddings `[b, n_text, d]` (right-padded: padding comes
    /// after every real token, so no real token sees it). Training's forward pass.
    pub fn full_hidden(&self, img: &ImageTensors<B>, text: Tensor<B, 3>) -> Result<Tensor<B, 3>> {
        Ok(self.full_forward(img, text)?.hidden)
    }

    /// [`Self::full_hidden`] with everything the decoder reports (each layer's normalised input
    /// too, which the training probes read at the `<voco>` position).
    pub fn full_forward(&self, img: &ImageTensors<B>, text: Tensor<B, 3>) -> Result<llama::Output<B>> {
        let llm = &self.llava.llm;
        let layout = self.layout(text.dims()[1]);
        let embeds = Tensor::cat(vec![self.prefix_embeds(img)?, text], 1);
        let positions: Vec<usize> = (0..layout.len()).collect();
        let self_only = self.self_only(&layout);
        Ok(llm.forward(
            embeds,
            Step { positions: &positions, mask: Some(self.mask(&layout)), want_attention: false, self_only },
            &mut llm.new_cache(),
        ))
    }

    /// Final hidden states `[b, prefix, d]` of a batch of prefixes ([`Self::prefix_embeds`])
    /// run alone under the model's mask: what [`Self::full_hidden`] gives at the prefix
    /// positions whatever the text (no prefix position sees the text), without running the
    /// encoders again. The representation probes read the `<voco>` positions of it.
    pub fn prefix_hidden(&self, embeds: Tensor<B, 3>) -> Result<Tensor<B, 3>> {
        let llm = &self.llava.llm;
        let layout = self.layout(0);
        if embeds.dims()[1] != layout.len() {
            bail!("a prefix of {} embeddings for a layout of {} positions", embeds.dims()[1], layout.len());
        }
        let positions: Vec<usize> = (0..layout.len()).collect();
        let self_only = self.self_only(&layout);
        let step =
            Step { positions: &positions, mask: Some(self.mask(&layout)), want_attention: false, self_only };
        Ok(llm.forward(embeds, step, &mut llm.new_cache()).hidden)
    }

    /// Text logits `[1, n_text, vocab]` from a compressed image.
    pub fn answer_logits(&self, c: &CompressedImage<B>, text_ids: &[u32]) -> Result<Tensor<B, 3>> {
        let p = self.answer_prompt(c, text_ids)?;
        let positions: Vec<usize> = (p.first_position..p.first_position + text_ids.len()).collect();
        let mut cache = p.cache;
        let out = self.llava.llm.forward(
            p.embeds,
            Step { positions: &positions, mask: p.mask, want_attention: false, self_only: 0 },
            &mut cache,
        );
        Ok(self.llava.llm.logits(out.hidden))
    }
}

/// Average-pools `[b, n, d]` patch tokens into `k` tokens of consecutive patches.
fn avg_pool_tokens<B: Backend>(v: Tensor<B, 3>, k: usize) -> Tensor<B, 3> {
    let [b, n, d] = v.dims();
    let parts: Vec<Tensor<B, 3>> = (0..k)
        .map(|i| {
            let (s, e) = (i * n / k, ((i + 1) * n / k).max(i * n / k + 1).min(n));
            v.clone().slice([0..b, s..e, 0..d]).mean_dim(1)
        })
        .collect();
    Tensor::cat(parts, 1)
}
