//! CLIP vision transformer (`CLIPVisionModel`): patch embedding, CLS token, learned positions,
//! `pre_layrnorm`, pre-norm encoder layers with quick_gelu. LLaVA reads `hidden_states[-2]`
//! without the CLS token, so [`ClipVision::forward`] can stop early.

use crate::kernels::linear::flat_linear;
use anyhow::Result;
use burn::module::{Initializer, Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{backend::Backend, Tensor};

pub use htc_shared::config::ClipVisionConfig as Config;

use htc_shared::loader::Loader;

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    out_proj: Linear<B>,
    heads: usize,
}

impl<B: Backend> Attention<B> {
    fn load(vb: &Loader<B>, c: &Config) -> Result<Self> {
        let d = c.hidden_size;
        Ok(Self {
            q_proj: vb.linear("q_proj", d, d, true)?,
            k_proj: vb.linear("k_proj", d, d, true)?,
            v_proj: vb.linear("v_proj", d, d, true)?,
            out_proj: vb.linear("out_proj", d, d, true)?,
            heads: c.num_attention_heads,
        })
    }

    /// `host`: the softmax as [`crate::kernels::host::host_softmax`] (see [`ClipVision::with_host_kernels`]).
    fn forward(&self, x: Tensor<B, 3>, host: bool) -> Tensor<B, 3> {
        let [b, n, d] = x.dims();
        let hd = d / self.heads;
        let split = |t: Tensor<B, 3>| t.reshape([b, n, self.heads, hd]).swap_dims(1, 2);
        let q = split(flat_linear(&self.q_proj, x.clone())) * (hd as f64).powf(-0.5);
        let k = split(flat_linear(&self.k_proj, x.clone()));
        let v = split(flat_linear(&self.v_proj, x));
        let scores = q.matmul(k.swap_dims(2, 3));
        let attn = if host {
            crate::kernels::host::host_softmax(scores, 1.0, None)
        } else {
            crate::kernels::ops::softmax_f32(scores, 3)
        };
        let out = attn.matmul(v).swap_dims(1, 2).reshape([b, n, d]);
        flat_linear(&self.out_proj, out)
    }
}

#[derive(Module, Debug)]
pub struct EncoderLayer<B: Backend> {
    self_attn: Attention<B>,
    layer_norm1: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
    layer_norm2: LayerNorm<B>,
    eps: f64,
}

fn quick_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    crate::kernels::ops::x_sigmoid(x, 1.702)
}

impl<B: Backend> EncoderLayer<B> {
    fn load(vb: &Loader<B>, c: &Config) -> Result<Self> {
        let (d, eps) = (c.hidden_size, c.layer_norm_eps);
        Ok(Self {
            self_attn: Attention::load(&vb.pp("self_attn"), c)?,
            layer_norm1: vb.layer_norm("layer_norm1", d, eps)?,
            fc1: vb.pp("mlp").linear("fc1", d, c.intermediate_size, true)?,
            fc2: vb.pp("mlp").linear("fc2", c.intermediate_size, d, true)?,
            layer_norm2: vb.layer_norm("layer_norm2", d, eps)?,
            eps,
        })
    }

    /// `host`: the norms, the softmax and the activation as fused kernels on the host
    /// ([`super::host`]), for f32 CPU inference.
    fn forward(&self, x: Tensor<B, 3>, host: bool) -> Tensor<B, 3> {
        let norm = |ln: &LayerNorm<B>, x: Tensor<B, 3>| match host {
            true => crate::kernels::host::layer_norm(x, ln, self.eps),
            false => crate::kernels::ops::layer_norm_f32(ln, x, self.eps),
        };
        let x = x.clone() + self.self_attn.forward(norm(&self.layer_norm1, x), host);
        let up = flat_linear(&self.fc1, norm(&self.layer_norm2, x.clone()));
        let act = if host { crate::kernels::host::x_sigmoid(up, 1.702) } else { quick_gelu(up) };
        x + flat_linear(&self.fc2, act)
    }
}

#[derive(Module, Debug)]
pub struct ClipVision<B: Backend> {
    patch_embedding: Conv2d<B>,
    class_embedding: Param<Tensor<B, 1>>,
    position_embedding: Param<Tensor<B, 2>>,
    pre_layrnorm: LayerNorm<B>,
    layers: Vec<EncoderLayer<B>>,
    image_size: usize,
    eps: f64,
    /// Norms, softmax and activation as fused host kernels (see [`Self::with_host_kernels`]).
    host: bool,
}

impl<B: Backend> ClipVision<B> {
    /// A randomly initialised tower (burn's initialisers), with parameter ids derived from checkpoint keys.
    pub fn init(c: &Config, device: &B::Device) -> Result<Self> {
        Self::load(&Loader::init(device), c)
    }

    /// Loads from `vb`, which points at the `vision_model` level. Keys with or without the
    /// `vision_model.` segment are both accepted. Parameter ids come from checkpoint keys.
    pub fn load(vb: &Loader<B>, c: &Config) -> Result<Self> {
        let vb = if vb.contains("vision_model.embeddings.patch_embedding.weight") {
            vb.pp("vision_model")
        } else {
            vb.pp("")
        };
        let d = c.hidden_size;
        let emb = vb.pp("embeddings");
        let n_pos = c.num_patches() + 1;
        let layers = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::load(&vb.pp(format!("encoder.layers.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        let m = Self {
            patch_embedding: emb.conv2d(
                "patch_embedding",
                c.num_channels,
                d,
                c.patch_size,
                c.patch_size,
                false,
            )?,
            class_embedding: emb.param(
                "class_embedding",
                [d],
                Initializer::Normal { mean: 0.0, std: 1.0 },
            )?,
            position_embedding: emb.pp("position_embedding").param(
                "weight",
                [n_pos, d],
                Initializer::Normal { mean: 0.0, std: 1.0 },
            )?,
            pre_layrnorm: vb.layer_norm("pre_layrnorm", d, c.layer_norm_eps)?,
            layers,
            image_size: c.image_size,
            eps: c.layer_norm_eps,
            host: false,
        };
        Ok(m)
    }

    /// Returns hidden states `[emb, layer_1, ..., layer_n]` for `n = upto` layers (all when
    /// `None`), each `[batch, 1 + patches, hidden]`, like transformers' `hidden_states`.
    pub fn forward(&self, pixels: Tensor<B, 4>, upto: Option<usize>) -> Vec<Tensor<B, 3>> {
        let [b, _, _, _] = pixels.dims();
        let x = self.patch_embedding.forward(pixels); // [b, d, h, w]
        let [_, d, h, w] = x.dims();
        let x = x.reshape([b, d, h * w]).swap_dims(1, 2);
        let cls = self.class_embedding.val().reshape([1, 1, d]).expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, x], 1) + self.position_embedding.val().unsqueeze::<3>();
        let mut x = crate::kernels::ops::layer_norm_f32(&self.pre_layrnorm, x, self.eps);
        let n = upto.unwrap_or(self.layers.len()).min(self.layers.len());
        let mut states = Vec::with_capacity(n + 1);
        states.push(x.clone());
        let host = self.host && crate::kernels::host::applies(&x);
        for layer in &self.layers[..n] {
            x = layer.forward(x, host);
            states.push(x.clone());
        }
        states
    }

    /// LLaVA's image features: `hidden_states[select_layer]` with the CLS token dropped,
    /// `[batch, patches, hidden]`. `select_layer` is negative from the end, as in HF.
    pub fn patch_features(&self, pixels: Tensor<B, 4>, select_layer: i64) -> Tensor<B, 3> {
        let total = self.layers.len() as i64 + 1;
        let idx = if select_layer < 0 { total + select_layer } else { select_layer };
        let idx = idx.clamp(0, total - 1) as usize;
        let mut states = self.forward(pixels, Some(idx));
        let x = states.pop().expect("at least the embedding state");
        let [b, n, d] = x.dims();
        x.slice([0..b, 1..n, 0..d])
    }

    /// The tower with its layer norms, attention softmax and quick GELU run as fused kernels on
    /// the host ([`super::host`]; rows on rayon's pool) in f32 without autodiff, for CPU
    /// inference (`on`), or as burn's operations.
    pub fn with_host_kernels(mut self, on: bool) -> Self {
        self.host = on;
        self
    }

    pub fn num_patches(&self) -> usize {
        self.position_embedding.val().dims()[0] - 1
    }

    /// Input side in pixels.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}
