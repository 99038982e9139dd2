//! Checkpoint formats: where weights come from and how a model directory or file is opened.
//!
//! - [`WeightSource`] (here): HF safetensors snapshots (single file or sharded with an index,
//!   memory-mapped), GGUF files and in-memory tensors, read as f32; modules are built from them
//!   with the shared [`Loader`].
//! - [`gguf`]: the GGUF reader, including the tokenizer in its metadata.
//! - [`checkpoint`]: opening any supported model directory or file into a model + tokenizer.
//! - [`random`]: random weights in the llava-hf key layout (demo model, benchmarks, tests).
//! - [`write`]: streaming safetensors writer.
//! - [`encoder`]: the MGVQ encoder's weights as one file for pages that run it themselves.
//! - [`about`]: a model directory's optional `about.json` (what the model knows, and the
//!   sample images to try it with, rendered by the generator of [`crate::data`] it names).
//!
//! Reading and writing files only: no decoding, serving or command-line parsing here.

pub mod about;
pub mod checkpoint;
pub mod encoder;
pub mod gguf;
pub mod random;
pub mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use safetensors::SafeTensors;

use self::gguf::GgufFile;
use htc_shared::loader::host_from_view;
pub use htc_shared::loader::{HostTensor, Loader, TensorSource};

pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
}

/// Where tensors come from.
pub enum WeightSource {
    Safetensors {
        files: Vec<SafetensorsFile>,
        index: HashMap<String, usize>,
    },
    Gguf(Box<GgufFile>),
    /// Tensors held in memory (random demo models, benchmarks).
    Memory(HashMap<String, HostTensor>),
}

/// Tensors read from any source by this process, for load progress displays.
pub static TENSORS_READ: AtomicUsize = AtomicUsize::new(0);

impl WeightSource {
    /// Opens a snapshot directory's weights: `model.safetensors`, else the shards listed in
    /// `model.safetensors.index.json`, else every `*.safetensors` present.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut paths: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index_path.exists() {
            let idx: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path)?)
                .with_context(|| format!("{} is not valid JSON", index_path.display()))?;
            let map = idx
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| anyhow!("{} has no weight_map", index_path.display()))?;
            let mut files: Vec<PathBuf> =
                map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
            files.sort();
            files.dedup();
            files
        } else {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("cannot read model directory {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
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
            let f =
                std::fs::File::open(p).with_context(|| format!("missing weights file {}", p.display()))?;
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

    /// A tensor's shape, without reading its data where the format allows.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        match self {
            WeightSource::Safetensors { files, index } => {
                let fi =
                    *index.get(name).ok_or_else(|| anyhow!("missing tensor `{name}` in the checkpoint"))?;
                let st = SafeTensors::deserialize(&files[fi].mmap)
                    .map_err(|e| anyhow!("{}: {e}", files[fi].path.display()))?;
                Ok(st.tensor(name).map_err(|e| anyhow!("{e}"))?.shape().to_vec())
            }
            _ => Ok(self.read(name)?.shape),
        }
    }

    /// Reads a tensor as f32.
    pub fn read(&self, name: &str) -> Result<HostTensor> {
        TENSORS_READ.fetch_add(1, Ordering::Relaxed);
        match self {
            WeightSource::Safetensors { files, index } => {
                let fi =
                    *index.get(name).ok_or_else(|| anyhow!("missing tensor `{name}` in the checkpoint"))?;
                let file = &files[fi];
                let st = SafeTensors::deserialize(&file.mmap)
                    .map_err(|e| anyhow!("{}: {e}", file.path.display()))?;
                let view = st.tensor(name).map_err(|e| anyhow!("{}: {e}", file.path.display()))?;
                Ok(host_from_view(name, &view)?)
            }
            WeightSource::Gguf(g) => {
                let heads = g.meta_u64("llama.attention.head_count").unwrap_or(1) as usize;
                let kv_heads =
                    g.meta_u64("llama.attention.head_count_kv").map(|x| x as usize).unwrap_or(heads);
                gguf_llama_tensor(g, name, heads, kv_heads)
            }
            WeightSource::Memory(m) => {
                let t = m.get(name).ok_or_else(|| anyhow!("missing tensor `{name}`"))?;
                Ok(HostTensor { shape: t.shape.clone(), data: t.data.clone() })
            }
        }
    }

    pub fn gguf(&self) -> Option<&GgufFile> {
        match self {
            WeightSource::Gguf(g) => Some(g),
            _ => None,
        }
    }
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

impl TensorSource for WeightSource {
    fn contains(&self, name: &str) -> bool {
        WeightSource::contains(self, name)
    }
    fn read(&self, name: &str) -> std::result::Result<HostTensor, htc_shared::Error> {
        WeightSource::read(self, name).map_err(|e| htc_shared::Error::Weights(format!("{e:#}")))
    }
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
