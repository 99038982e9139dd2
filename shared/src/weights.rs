//! Building burn modules from named f32 tensors with HF/PyTorch layouts: the [`TensorSource`]
//! trait (implemented by the worker's safetensors/GGUF readers and by in-memory maps) and the
//! prefix-scoped [`Loader`].

use anyhow::{anyhow, bail, Result};
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d, RmsNorm,
    RmsNormConfig,
};
use burn::tensor::{backend::Backend, Tensor, TensorData};

/// A tensor read as f32, row-major.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Anything that holds named tensors.
pub trait TensorSource {
    fn contains(&self, name: &str) -> bool;
    /// Reads a tensor as f32; a missing name is an error that names it.
    fn read(&self, name: &str) -> Result<HostTensor>;
    /// Reads a tensor and checks its shape.
    fn read_shaped(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.read(name)?;
        if t.shape != shape {
            bail!(
                "shape mismatch for `{name}`: checkpoint has {:?}, the config expects {:?}",
                t.shape,
                shape
            );
        }
        Ok(t)
    }
}

impl TensorSource for std::collections::HashMap<String, HostTensor> {
    fn contains(&self, name: &str) -> bool {
        self.contains_key(name)
    }
    fn read(&self, name: &str) -> Result<HostTensor> {
        self.get(name).cloned().ok_or_else(|| anyhow!("missing tensor `{name}`"))
    }
}

/// Builds modules from a [`TensorSource`] under a key prefix, like candle's `VarBuilder`.
pub struct Loader<'a, B: Backend> {
    pub src: &'a dyn TensorSource,
    prefix: String,
    pub device: B::Device,
}

impl<'a, B: Backend> Loader<'a, B> {
    pub fn new(src: &'a dyn TensorSource, device: &B::Device) -> Self {
        Self { src, prefix: String::new(), device: device.clone() }
    }

    /// A loader whose keys are prefixed by `p.` (an empty `p` keeps the prefix).
    pub fn pp(&self, p: impl AsRef<str>) -> Self {
        let p = p.as_ref();
        let prefix = if p.is_empty() {
            self.prefix.clone()
        } else if self.prefix.is_empty() {
            p.to_string()
        } else {
            format!("{}.{}", self.prefix, p)
        };
        Self { src: self.src, prefix, device: self.device.clone() }
    }

    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.src.contains(&self.key(name))
    }

    pub fn host(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        self.src.read_shaped(&self.key(name), shape)
    }

    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        let t = self.host(name, &shape)?;
        Ok(Tensor::from_data(TensorData::new(t.data, shape), &self.device))
    }

    /// `nn.Linear` from HF `[out, in]` storage. The weight is transposed on the host into a
    /// contiguous `[in, out]` tensor, so no backend copies a strided view at every call.
    pub fn linear(&self, name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>> {
        let l = self.pp(name);
        let w = l.host("weight", &[d_out, d_in])?;
        let b = if bias { Some(l.tensor("bias", [d_out])?) } else { None };
        Ok(linear_from_host(w, b, &self.device))
    }

    /// A bias-free `Linear` `d → vocab` from a `[vocab, d]` embedding matrix (tied heads).
    pub fn linear_from_embedding(&self, name: &str, vocab: usize, d: usize) -> Result<Linear<B>> {
        let w = self.pp(name).host("weight", &[vocab, d])?;
        Ok(linear_from_host(w, None, &self.device))
    }

    pub fn layer_norm(&self, name: &str, d: usize, eps: f64) -> Result<LayerNorm<B>> {
        let l = self.pp(name);
        let mut ln = LayerNormConfig::new(d).with_epsilon(eps).init(&self.device);
        ln.gamma = Param::from_tensor(l.tensor("weight", [d])?);
        ln.beta = Some(Param::from_tensor(l.tensor("bias", [d])?));
        Ok(ln)
    }

    pub fn rms_norm(&self, name: &str, d: usize, eps: f64) -> Result<RmsNorm<B>> {
        let mut n = RmsNormConfig::new(d).with_epsilon(eps).init(&self.device);
        n.gamma = Param::from_tensor(self.pp(name).tensor("weight", [d])?);
        Ok(n)
    }

    pub fn embedding(&self, name: &str, n: usize, d: usize) -> Result<Embedding<B>> {
        let mut e = EmbeddingConfig::new(n, d).init(&self.device);
        e.weight = Param::from_tensor(self.pp(name).tensor("weight", [n, d])?);
        Ok(e)
    }

    /// A square-kernel `nn.Conv2d` with PyTorch `[out, in, k, k]` storage, no padding.
    pub fn conv2d(
        &self,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        bias: bool,
    ) -> Result<Conv2d<B>> {
        self.conv2d_padded(name, c_in, c_out, k, stride, 0, 1, bias)
    }

    /// A square-kernel `nn.Conv2d` with padding and groups (`[out, in / groups, k, k]`).
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_padded(
        &self,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
        groups: usize,
        bias: bool,
    ) -> Result<Conv2d<B>> {
        let l = self.pp(name);
        let mut conv = Conv2dConfig::new([c_in, c_out], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
            .with_groups(groups)
            .with_bias(bias)
            .init(&self.device);
        conv.weight = Param::from_tensor(l.tensor("weight", [c_out, c_in / groups, k, k])?);
        if bias {
            conv.bias = Some(Param::from_tensor(l.tensor("bias", [c_out])?));
        }
        Ok(conv)
    }
}

/// A burn `Linear` from an HF weight `[out, in]` on the host and an optional bias.
pub fn linear_from_host<B: Backend>(w: HostTensor, b: Option<Tensor<B, 1>>, device: &B::Device) -> Linear<B> {
    let (d_out, d_in) = (w.shape[0], w.shape[1]);
    let mut t = vec![0f32; w.data.len()];
    for o in 0..d_out {
        for i in 0..d_in {
            t[i * d_out + o] = w.data[o * d_in + i];
        }
    }
    let mut l = LinearConfig::new(d_in, d_out).with_bias(b.is_some()).init(device);
    l.weight = Param::from_tensor(Tensor::from_data(TensorData::new(t, [d_in, d_out]), device));
    l.bias = b.map(Param::from_tensor);
    l
}
