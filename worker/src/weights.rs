//! Weight sources: HF safetensors snapshots (single file or sharded with an index) and GGUF
//! files, read as f32 and turned into burn tensors and modules with HF layouts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::gguf::{self, GgufFile};

pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
}

/// Where tensors come from.
pub enum WeightSource {
    Safetensors { files: Vec<SafetensorsFile>, index: HashMap<String, usize> },
    Gguf(Box<GgufFile>),
    /// Tensors held in memory (random demo models, benchmarks).
    Memory(HashMap<String, HostTensor>),
}

/// A tensor read as f32, row-major.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl WeightSource {
    /// Opens every `*.safetensors` file of a snapshot directory (`model.safetensors`, or the
    /// shards listed in `model.safetensors.index.json`, or any `.safetensors` present).
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let mut paths: Vec<PathBuf> = if index_path.exists() {
            let idx: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path)?)
                .with_context(|| format!("{} is not valid JSON", index_path.display()))?;
            let map = idx
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| anyhow!("{} has no weight_map", index_path.display()))?;
            let mut files: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
            files.sort();
            files.dedup();
            files
        } else {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("cannot read model directory {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("expected")))
                .collect();
            v.sort();
            v
        };
        if paths.is_empty() {
            bail!("no model weights in {} (expected model.safetensors or a sharded index)", dir.display());
        }
        paths.sort();
        Self::open_files(&paths)
    }

    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            let f = std::fs::File::open(p).with_context(|| format!("missing weights file {}", p.display()))?;
            // SAFETY: read-only mapping of a file we do not modify.
            let mmap = unsafe { Mmap::map(&f) }.with_context(|| format!("cannot map {}", p.display()))?;
            let st = SafeTensors::deserialize(&mmap)
                .map_err(|e| anyhow!("{} is not a valid safetensors file: {e}", p.display()))?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            files.push(SafetensorsFile { path: p.clone(), mmap });
        }
        Ok(WeightSource::Safetensors { files, index })
    }

    pub fn open_gguf(path: &Path) -> Result<Self> {
        Ok(WeightSource::Gguf(Box::new(GgufFile::open(path)?)))
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            WeightSource::Safetensors { index, .. } => index.contains_key(name),
            WeightSource::Gguf(g) => gguf_name(name).is_some_and(|n| g.tensors.contains_key(&n)),
            WeightSource::Memory(m) => m.contains_key(name),
        }
    }

    pub fn names(&self) -> Vec<String> {
        match self {
            WeightSource::Safetensors { index, .. } => index.keys().cloned().collect(),
            WeightSource::Gguf(g) => g.tensors.keys().cloned().collect(),
            WeightSource::Memory(m) => m.keys().cloned().collect(),
        }
    }

    /// Reads a tensor as f32.
    pub fn read(&self, name: &str) -> Result<HostTensor> {
        match self {
            WeightSource::Safetensors { files, index } => {
                let fi = *index.get(name).ok_or_else(|| anyhow!("missing tensor `{name}` in the checkpoint"))?;
                let file = &files[fi];
                let st = SafeTensors::deserialize(&file.mmap)
                    .map_err(|e| anyhow!("{}: {e}", file.path.display()))?;
                let view = st.tensor(name).map_err(|e| anyhow!("{}: {e}", file.path.display()))?;
                let bytes = view.data();
                let data: Vec<f32> = match view.dtype() {
                    Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                    Dtype::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                    Dtype::BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                    other => bail!("tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16"),
                };
                Ok(HostTensor { shape: view.shape().to_vec(), data })
            }
            WeightSource::Gguf(g) => {
                let heads = g.meta_u64("llama.attention.head_count").unwrap_or(1) as usize;
                let kv_heads = g.meta_u64("llama.attention.head_count_kv").map(|x| x as usize).unwrap_or(heads);
                gguf_llama_tensor(g, name, heads, kv_heads)
            }
            WeightSource::Memory(m) => {
                let t = m.get(name).ok_or_else(|| anyhow!("missing tensor `{name}`"))?;
                Ok(HostTensor { shape: t.shape.clone(), data: t.data.clone() })
            }
        }
    }

    /// Reads a tensor and checks its shape.
    pub fn read_shaped(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.read(name)?;
        if t.shape != shape {
            bail!("shape mismatch for `{name}`: checkpoint has {:?}, the config expects {:?}", t.shape, shape);
        }
        Ok(t)
    }

    pub fn gguf(&self) -> Option<&GgufFile> {
        match self {
            WeightSource::Gguf(g) => Some(g),
            _ => None,
        }
    }
}

/// Builds modules from a [`WeightSource`] under a key prefix, like candle's `VarBuilder`.
pub struct Loader<'a, B: Backend> {
    pub src: &'a WeightSource,
    prefix: String,
    pub device: B::Device,
}

impl<'a, B: Backend> Loader<'a, B> {
    pub fn new(src: &'a WeightSource, device: &B::Device) -> Self {
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

    /// A square-kernel `nn.Conv2d` with PyTorch `[out, in, k, k]` storage.
    pub fn conv2d(&self, name: &str, c_in: usize, c_out: usize, k: usize, stride: usize, bias: bool) -> Result<Conv2d<B>> {
        let l = self.pp(name);
        let mut conv = Conv2dConfig::new([c_in, c_out], [k, k]).with_stride([stride, stride]).with_bias(bias).init(&self.device);
        conv.weight = Param::from_tensor(l.tensor("weight", [c_out, c_in, k, k])?);
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

/// GGUF → HF name mapping for LLaMA tensors, with q/k un-permuted.
pub fn gguf_llama_tensor(g: &GgufFile, hf_name: &str, heads: usize, kv_heads: usize) -> Result<HostTensor> {
    let name = gguf_name(hf_name).ok_or_else(|| anyhow!("no GGUF tensor corresponds to `{hf_name}`"))?;
    let (shape, data) = g.dequantize(&name)?;
    let data = if hf_name.ends_with("q_proj.weight") {
        gguf::unpermute_qk(&data, shape[0], shape[1], heads)
    } else if hf_name.ends_with("k_proj.weight") {
        gguf::unpermute_qk(&data, shape[0], shape[1], kv_heads)
    } else {
        data
    };
    Ok(HostTensor { shape, data })
}

fn gguf_name(hf: &str) -> Option<String> {
    let hf = hf.strip_prefix("model.").unwrap_or(hf);
    Some(match hf {
        "embed_tokens.weight" => "token_embd.weight".into(),
        "norm.weight" => "output_norm.weight".into(),
        "lm_head.weight" => "output.weight".into(),
        _ => {
            let rest = hf.strip_prefix("layers.")?;
            let (n, tail) = rest.split_once('.')?;
            let t = match tail {
                "self_attn.q_proj.weight" => "attn_q.weight",
                "self_attn.k_proj.weight" => "attn_k.weight",
                "self_attn.v_proj.weight" => "attn_v.weight",
                "self_attn.o_proj.weight" => "attn_output.weight",
                "mlp.gate_proj.weight" => "ffn_gate.weight",
                "mlp.up_proj.weight" => "ffn_up.weight",
                "mlp.down_proj.weight" => "ffn_down.weight",
                "input_layernorm.weight" => "attn_norm.weight",
                "post_attention_layernorm.weight" => "ffn_norm.weight",
                _ => return None,
            };
            format!("blk.{n}.{t}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_hf() {
        assert_eq!(gguf_name("model.layers.3.self_attn.k_proj.weight").unwrap(), "blk.3.attn_k.weight");
        assert_eq!(gguf_name("model.embed_tokens.weight").unwrap(), "token_embd.weight");
        assert_eq!(gguf_name("lm_head.weight").unwrap(), "output.weight");
        assert!(gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq").is_none());
    }

    #[test]
    fn missing_dir_and_empty_dir_are_named() {
        let e = WeightSource::open_dir(Path::new("/nonexistent/htc-model")).err().unwrap();
        assert!(e.to_string().contains("cannot read model directory"), "{e}");
        let d = std::env::temp_dir().join(format!("htc-empty-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let e = WeightSource::open_dir(&d).err().unwrap();
        assert!(e.to_string().contains("no model weights"), "{e}");
    }
}
