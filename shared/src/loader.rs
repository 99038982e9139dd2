//! Building burn modules from named f32 tensors with HF/PyTorch layouts: the [`TensorSource`]
//! trait (implemented by in-memory maps, by [`SafetensorsBytes`] for the browser, and by the
//! worker's file readers), and the prefix-scoped [`Loader`]. Loading only: no file access and no
//! model code here.

use std::sync::{Arc, Mutex};

use burn::module::{Initializer, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d, RmsNorm,
    RmsNormConfig,
};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::params::{id_for_path, ParamName, ParamNames};
use crate::Error;

type Result<T> = std::result::Result<T, Error>;

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
            return Err(Error::Weights(format!(
                "shape mismatch for `{name}`: checkpoint has {:?}, the config expects {:?}",
                t.shape, shape
            )));
        }
        Ok(t)
    }
}

impl TensorSource for std::collections::HashMap<String, HostTensor> {
    fn contains(&self, name: &str) -> bool {
        self.contains_key(name)
    }
    fn read(&self, name: &str) -> Result<HostTensor> {
        self.get(name).cloned().ok_or_else(|| Error::Weights(format!("missing tensor `{name}`")))
    }
}

/// Builds modules under a key prefix, like candle's `VarBuilder`, in one of two modes:
/// from a [`TensorSource`] (checkpoint names and shapes checked), or freshly initialised with
/// burn's initialisers ([`Loader::init`]). Model code is written once against it, so every
/// model's `load` is also its random-init constructor.
///
/// Every parameter it makes gets its id from its checkpoint key ([`id_for_path`]), the same on
/// every load, and is recorded in a registry shared by all prefixed copies ([`Loader::names`]):
/// optimizer state and saved checkpoints are keyed by those names.
pub struct Loader<'a, B: Backend> {
    src: Option<&'a dyn TensorSource>,
    prefix: String,
    names: Arc<Mutex<ParamNames>>,
    pub device: B::Device,
    /// The dtype of every parameter made, when not the device's default ([`Loader::with_dtype`]).
    dtype: Option<burn::tensor::DType>,
}

impl<'a, B: Backend> Loader<'a, B> {
    pub fn new(src: &'a dyn TensorSource, device: &B::Device) -> Self {
        Self {
            src: Some(src),
            prefix: String::new(),
            names: Default::default(),
            device: device.clone(),
            dtype: None,
        }
    }

    /// A loader that initialises every module at random (no weights read).
    pub fn init(device: &B::Device) -> Self {
        Self {
            src: None,
            prefix: String::new(),
            names: Default::default(),
            device: device.clone(),
            dtype: None,
        }
    }

    /// The checkpoint key of every parameter made so far, by id.
    pub fn names(&self) -> ParamNames {
        self.names.lock().expect("the name registry is never poisoned").clone()
    }

    /// Wraps `value` as the trainable parameter stored under `key` (`transposed`: held as the
    /// transpose of the stored tensor, as `Linear` weights are).
    fn named<const D: usize>(
        &self, key: String, value: Tensor<B, D>, transposed: bool,
    ) -> Param<Tensor<B, D>> {
        let id = id_for_path(&key);
        let value = match self.dtype {
            Some(d) => value.cast(d),
            None => value,
        };
        self.names
            .lock()
            .expect("the name registry is never poisoned")
            .insert(id, ParamName { key, transposed });
        Param::initialized(id, value.require_grad())
    }

    /// This loader with every parameter it makes in `dtype`, whatever the device's default
    /// (`--dtype`): the MGVQ tokenizer stays in f32 under a half-precision model, so its codes
    /// are the browser's.
    pub fn with_dtype(mut self, dtype: burn::tensor::DType) -> Self {
        self.dtype = Some(dtype);
        self
    }

    /// Where and in which dtype read tensors are made (straight from the host's f32 values).
    fn options(&self) -> burn::tensor::TensorCreationOptions<B> {
        match self.dtype {
            Some(d) => (&self.device, d).into(),
            None => (&self.device).into(),
        }
    }

    /// Whether this loader initialises at random instead of reading weights.
    pub fn is_init(&self) -> bool {
        self.src.is_none()
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
        Self {
            src: self.src,
            prefix,
            names: self.names.clone(),
            device: self.device.clone(),
            dtype: self.dtype,
        }
    }

    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// Whether the source holds `name` (always false when initialising).
    pub fn contains(&self, name: &str) -> bool {
        self.src.is_some_and(|s| s.contains(&self.key(name)))
    }

    fn host(&self, name: &str, shape: &[usize]) -> Result<Option<HostTensor>> {
        self.src.map(|s| s.read_shaped(&self.key(name), shape)).transpose()
    }

    /// A trainable tensor: read, or drawn from `init` when initialising.
    pub fn param<const D: usize>(
        &self, name: &str, shape: [usize; D], init: Initializer,
    ) -> Result<Param<Tensor<B, D>>> {
        let value = match self.host(name, &shape)? {
            Some(t) => Tensor::from_data(TensorData::new(t.data, shape), self.options()),
            None => init.init::<B, D, _>(shape, &self.device).into_value(),
        };
        Ok(self.named(self.key(name), value, false))
    }

    /// `nn.Linear` from HF `[out, in]` storage. The weight is transposed on the host into a
    /// contiguous `[in, out]` tensor, so no backend copies a strided view at every call.
    pub fn linear(&self, name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>> {
        let l = self.pp(name);
        let host = l.host("weight", &[d_out, d_in])?;
        l.linear_with(host, d_in, d_out, bias)
    }

    /// A bias-free `Linear` `d → vocab` stored under this loader's `weight` (a tied LM head),
    /// read from the `[vocab, d]` embedding matrix under `embedding`. It is its own parameter:
    /// a saved checkpoint stores it as the head, untied.
    pub fn tied_linear(&self, embedding: &Loader<'_, B>, vocab: usize, d: usize) -> Result<Linear<B>> {
        let host = embedding.host("weight", &[vocab, d])?;
        self.linear_with(host, d, vocab, false)
    }

    /// A `Linear` whose weight is `w` (HF `[out, in]`) or freshly initialised, keyed under
    /// this loader's `weight` / `bias`.
    fn linear_with(&self, w: Option<HostTensor>, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>> {
        let mut l = LinearConfig::new(d_in, d_out).with_bias(bias).init(&self.device);
        let weight = match w {
            Some(w) => Tensor::from_data(
                TensorData::new(transpose(&w.data, d_out, d_in), [d_in, d_out]),
                self.options(),
            ),
            None => l.weight.into_value(),
        };
        l.weight = self.named(self.key("weight"), weight, true);
        l.bias = match l.bias.take() {
            Some(b) if self.is_init() => Some(self.named(self.key("bias"), b.into_value(), false)),
            Some(_) => Some(self.param("bias", [d_out], Initializer::Zeros)?),
            None => None,
        };
        Ok(l)
    }

    pub fn layer_norm(&self, name: &str, d: usize, eps: f64) -> Result<LayerNorm<B>> {
        let l = self.pp(name);
        let mut ln = LayerNormConfig::new(d).with_epsilon(eps).init(&self.device);
        ln.gamma = l.param("weight", [d], Initializer::Ones)?;
        ln.beta = Some(l.param("bias", [d], Initializer::Zeros)?);
        Ok(ln)
    }

    pub fn rms_norm(&self, name: &str, d: usize, eps: f64) -> Result<RmsNorm<B>> {
        let mut n = RmsNormConfig::new(d).with_epsilon(eps).init(&self.device);
        n.gamma = self.pp(name).param("weight", [d], Initializer::Ones)?;
        Ok(n)
    }

    pub fn embedding(&self, name: &str, n: usize, d: usize) -> Result<Embedding<B>> {
        let mut e = EmbeddingConfig::new(n, d).init(&self.device);
        e.weight = self.pp(name).param("weight", [n, d], Initializer::Normal { mean: 0.0, std: 1.0 })?;
        Ok(e)
    }

    /// A square-kernel `nn.Conv2d` with PyTorch `[out, in, k, k]` storage, no padding.
    pub fn conv2d(
        &self, name: &str, c_in: usize, c_out: usize, k: usize, stride: usize, bias: bool,
    ) -> Result<Conv2d<B>> {
        self.conv2d_padded(name, c_in, c_out, k, stride, 0, 1, bias)
    }

    /// A square-kernel `nn.Conv2d` with padding and groups (`[out, in / groups, k, k]`).
    #[allow(clippy::too_many_arguments)] // mirrors nn.Conv2d's own argument list
    pub fn conv2d_padded(
        &self, name: &str, c_in: usize, c_out: usize, k: usize, stride: usize, padding: usize, groups: usize,
        bias: bool,
    ) -> Result<Conv2d<B>> {
        let l = self.pp(name);
        let mut conv = Conv2dConfig::new([c_in, c_out], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
            .with_groups(groups)
            .with_bias(bias)
            .init(&self.device);
        if self.is_init() {
            conv.weight = l.named(l.key("weight"), conv.weight.into_value(), false);
            conv.bias = conv.bias.map(|b| l.named(l.key("bias"), b.into_value(), false));
            return Ok(conv);
        }
        conv.weight = l.param("weight", [c_out, c_in / groups, k, k], Initializer::Zeros)?;
        if bias {
            conv.bias = Some(l.param("bias", [c_out], Initializer::Zeros)?);
        }
        Ok(conv)
    }
}

/// The transpose of a row-major `[rows, cols]` matrix, on the host, so no backend copies a
/// strided view at every call.
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = data[r * cols + c];
        }
    }
    t
}

/// Reads a safetensors tensor view as f32 (F32, F16 and BF16 storage).
pub fn host_from_view(name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<HostTensor> {
    let bytes = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => {
            return Err(Error::Weights(format!(
                "tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16"
            )))
        }
    };
    Ok(HostTensor { shape: view.shape().to_vec(), data })
}

/// A safetensors file held in memory (a browser `fetch`, an upload): the same format and
/// checks as the worker's memory-mapped files.
pub struct SafetensorsBytes {
    bytes: Vec<u8>,
    names: std::collections::HashSet<String>,
}

impl SafetensorsBytes {
    /// Parses the header; `what` names the source in errors (a URL or a file name).
    pub fn new(bytes: Vec<u8>, what: &str) -> Result<Self> {
        let names = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::Weights(format!("{what} is not a valid safetensors file: {e}")))?
            .names()
            .into_iter()
            .map(str::to_string)
            .collect();
        Ok(Self { bytes, names })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }
}

impl TensorSource for SafetensorsBytes {
    fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    fn read(&self, name: &str) -> Result<HostTensor> {
        if !self.names.contains(name) {
            return Err(Error::Weights(format!("missing tensor `{name}` in the checkpoint")));
        }
        let st = SafeTensors::deserialize(&self.bytes).map_err(|e| Error::Weights(e.to_string()))?;
        let view = st.tensor(name).map_err(|e| Error::Weights(format!("`{name}`: {e}")))?;
        host_from_view(name, &view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<_> = tensors
            .iter()
            .map(|(n, d, s, b)| {
                (n.to_string(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn bytes_source_reads_every_float_dtype_and_names_problems() {
        let f32s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let f16s: Vec<u8> =
            [f16::from_f32(0.5), f16::from_f32(3.0)].iter().flat_map(|x| x.to_le_bytes()).collect();
        let bf16s: Vec<u8> = [bf16::from_f32(-1.0)].iter().flat_map(|x| x.to_le_bytes()).collect();
        let bytes = file(&[
            ("a", Dtype::F32, vec![2], f32s),
            ("b", Dtype::F16, vec![1, 2], f16s),
            ("c", Dtype::BF16, vec![1], bf16s),
            ("i", Dtype::I32, vec![1], vec![0; 4]),
        ]);
        let src = SafetensorsBytes::new(bytes, "test.safetensors").unwrap();
        assert_eq!(src.read("a").unwrap().data, vec![1.5, -2.0]);
        let b = src.read_shaped("b", &[1, 2]).unwrap();
        assert_eq!(b.data, vec![0.5, 3.0]);
        assert_eq!(src.read("c").unwrap().data, vec![-1.0]);
        assert!(src.read("i").unwrap_err().to_string().contains("dtype I32"));
        assert!(src.read("zz").unwrap_err().to_string().contains("missing tensor `zz`"));
        assert!(src.read_shaped("a", &[3]).unwrap_err().to_string().contains("shape mismatch for `a`"));
        let e = SafetensorsBytes::new(b"not safetensors".to_vec(), "x.safetensors").err().unwrap();
        assert!(e.to_string().contains("x.safetensors is not a valid safetensors file"), "{e}");
    }
}
