//! GGUF reader: metadata, tensor directory and dequantisation of F32, F16, BF16, Q8_0, Q4_0
//! and Q4_1 to f32, plus the LLaMA config and byte-level BPE tokenizer stored in the metadata.
//!
//! No maintained crate reads GGUF without pulling in a whole inference stack, so this small
//! reader is written here against the GGUF v2/v3 layout.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use serde_json::{json, Value};

use htc_shared::config::LlamaConfig;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            MetaValue::UInt(x) => Some(*x),
            MetaValue::Int(x) if *x >= 0 => Some(*x as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            MetaValue::Float(x) => Some(*x),
            MetaValue::UInt(x) => Some(*x as f64),
            MetaValue::Int(x) => Some(*x as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            MetaValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// GGML tensor types this reader can dequantise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    BF16,
}

impl GgmlType {
    fn from_id(id: u32) -> Result<Self> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            other => {
                bail!("unsupported GGML tensor type {other} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)")
            }
        })
    }
    /// (elements per block, bytes per block)
    fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
        }
    }
}

/// One tensor's directory entry. `shape` is in row-major (PyTorch) order, i.e. GGUF's `ne`
/// reversed.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub shape: Vec<usize>,
    pub dtype: GgmlType,
    offset: usize,
}

/// A GGUF file's bytes: mapped from disk, or held in memory (a file read whole, or a fuzzer's
/// input).
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A GGUF file: its metadata and tensor directory, over its bytes.
pub struct GgufFile {
    mmap: Bytes,
    pub metadata: HashMap<String, MetaValue>,
    pub tensors: HashMap<String, TensorInfo>,
    data_start: usize,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| anyhow!("GGUF file is truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u64()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue> {
        let b = |c: &mut Self, n| -> Result<[u8; 8]> {
            let mut a = [0u8; 8];
            a[..n].copy_from_slice(c.take(n)?);
            Ok(a)
        };
        Ok(match ty {
            0 => MetaValue::UInt(self.take(1)?[0] as u64),
            1 => MetaValue::Int(self.take(1)?[0] as i8 as i64),
            2 => MetaValue::UInt(u16::from_le_bytes(self.take(2)?.try_into()?) as u64),
            3 => MetaValue::Int(i16::from_le_bytes(self.take(2)?.try_into()?) as i64),
            4 => MetaValue::UInt(self.u32()? as u64),
            5 => MetaValue::Int(i32::from_le_bytes(self.take(4)?.try_into()?) as i64),
            6 => MetaValue::Float(f32::from_le_bytes(self.take(4)?.try_into()?) as f64),
            7 => MetaValue::Bool(self.take(1)?[0] != 0),
            8 => MetaValue::Str(self.string()?),
            9 => {
                if depth > 4 {
                    bail!("GGUF metadata arrays nest too deeply");
                }
                let ity = self.u32()?;
                let n = self.u64()? as usize;
                if n > self.buf.len() {
                    bail!("GGUF metadata array length {n} exceeds the file size");
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(ity, depth + 1)?);
                }
                MetaValue::Array(v)
            }
            10 => MetaValue::UInt(u64::from_le_bytes(b(self, 8)?)),
            11 => MetaValue::Int(i64::from_le_bytes(b(self, 8)?)),
            12 => MetaValue::Float(f64::from_le_bytes(b(self, 8)?)),
            other => bail!("unknown GGUF metadata value type {other}"),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the file is opened read-only and not modified while mapped.
        let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        Self::parse(Bytes::Mapped(mmap)).with_context(|| format!("{}", path.display()))
    }

    /// A GGUF file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Bytes::Owned(bytes))
    }

    fn parse(mmap: Bytes) -> Result<Self> {
        let mut c = Cursor { buf: &mmap, pos: 0 };
        if c.take(4).ok() != Some(b"GGUF".as_slice()) {
            bail!("not a GGUF file (bad magic)");
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            bail!("unsupported GGUF version {version} (expected 2 or 3)");
        }
        let n_tensors = c.u64()? as usize;
        let n_kv = c.u64()? as usize;
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let v = c.value(ty, 0)?;
            metadata.insert(key, v);
        }
        let mut tensors = HashMap::new();
        for _ in 0..n_tensors {
            let name = c.string()?;
            let nd = c.u32()? as usize;
            if nd > 8 {
                bail!("tensor {name} has {nd} dimensions");
            }
            let mut ne = Vec::with_capacity(nd);
            for _ in 0..nd {
                ne.push(c.u64()? as usize);
            }
            let dtype = GgmlType::from_id(c.u32()?).with_context(|| format!("tensor {name}"))?;
            let offset = c.u64()? as usize;
            ne.reverse();
            tensors.insert(name, TensorInfo { shape: ne, dtype, offset });
        }
        let align = match metadata.get("general.alignment").map(MetaValue::as_u64) {
            None => 32,
            Some(Some(a)) if (1..=1 << 16).contains(&a) => a as usize,
            Some(a) => bail!("GGUF general.alignment {a:?} is not a size between 1 and 65536"),
        };
        let data_start = c.pos.div_ceil(align) * align;
        Ok(Self { mmap, metadata, tensors, data_start })
    }

    pub fn meta_u64(&self, key: &str) -> Option<u64> {
        self.metadata.get(key).and_then(MetaValue::as_u64)
    }
    pub fn meta_f64(&self, key: &str) -> Option<f64> {
        self.metadata.get(key).and_then(MetaValue::as_f64)
    }
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(MetaValue::as_str)
    }

    /// Dequantises one tensor to f32, row-major.
    pub fn dequantize(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info =
            self.tensors.get(name).ok_or_else(|| anyhow!("tensor `{name}` is missing from the GGUF file"))?;
        let outside = || anyhow!("tensor `{name}` lies outside the GGUF file (truncated?)");
        let n = info.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(outside)?;
        let (bs, bb) = info.dtype.block();
        if !n.is_multiple_of(bs) {
            bail!("tensor `{name}` has {n} elements, not a multiple of the block size {bs}");
        }
        let start = self.data_start.checked_add(info.offset).ok_or_else(outside)?;
        let len = (n / bs).checked_mul(bb).ok_or_else(outside)?;
        let bytes = self.mmap.get(start..start.checked_add(len).ok_or_else(outside)?).ok_or_else(outside)?;
        Ok((info.shape.clone(), dequantize(info.dtype, bytes, n)))
    }

    /// The LLaMA config stored in `llama.*` metadata.
    pub fn llama_config(&self) -> Result<LlamaConfig> {
        let arch = self.meta_str("general.architecture").unwrap_or("");
        if arch != "llama" {
            bail!("unknown GGUF architecture `{arch}` (only `llama` is supported)");
        }
        let need = |k: &str| {
            self.meta_u64(&format!("llama.{k}")).ok_or_else(|| anyhow!("GGUF metadata lacks llama.{k}"))
        };
        let heads = need("attention.head_count")?;
        let vocab = match self.meta_u64("llama.vocab_size") {
            Some(v) => v,
            None => self
                .metadata
                .get("tokenizer.ggml.tokens")
                .and_then(MetaValue::as_array)
                .map(|a| a.len() as u64)
                .ok_or_else(|| anyhow!("GGUF metadata gives no vocabulary size"))?,
        };
        let v = json!({
            "vocab_size": vocab,
            "hidden_size": need("embedding_length")?,
            "intermediate_size": need("feed_forward_length")?,
            "num_hidden_layers": need("block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": self.meta_u64("llama.attention.head_count_kv").unwrap_or(heads),
            "max_position_embeddings": self.meta_u64("llama.context_length").unwrap_or(2048),
            "rms_norm_eps": self.meta_f64("llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            "rope_theta": self.meta_f64("llama.rope.freq_base").unwrap_or(10000.0),
            "tie_word_embeddings": !self.tensors.contains_key("output.weight"),
            "bos_token_id": self.meta_u64("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self.meta_u64("tokenizer.ggml.eos_token_id"),
        });
        Ok(LlamaConfig::from_json(&v)?)
    }

    /// The chat template stored in the metadata, if any.
    pub fn chat_template(&self) -> Option<String> {
        self.meta_str("tokenizer.chat_template").map(str::to_owned)
    }

    /// Builds a `tokenizer.json` document from the embedded byte-level BPE vocabulary, in the
    /// same shape transformers builds from GGUF (`GPT2Tokenizer`: byte-level pre-tokenizer and
    /// decoder, control tokens added as special tokens, BOS prepended when
    /// `tokenizer.ggml.add_bos_token` says so).
    pub fn tokenizer_json(&self) -> Result<Value> {
        let model = self.meta_str("tokenizer.ggml.model").unwrap_or("");
        if model != "gpt2" {
            bail!("unsupported GGUF tokenizer `{model}` (only byte-level BPE, `gpt2`, is supported)");
        }
        let tokens: Vec<&str> = self
            .metadata
            .get("tokenizer.ggml.tokens")
            .and_then(MetaValue::as_array)
            .ok_or_else(|| anyhow!("GGUF metadata lacks tokenizer.ggml.tokens"))?
            .iter()
            .map(|t| t.as_str().unwrap_or(""))
            .collect();
        let merges: Vec<&str> = self
            .metadata
            .get("tokenizer.ggml.merges")
            .and_then(MetaValue::as_array)
            .ok_or_else(|| anyhow!("GGUF metadata lacks tokenizer.ggml.merges"))?
            .iter()
            .map(|t| t.as_str().unwrap_or(""))
            .collect();
        let types: Vec<u64> = self
            .metadata
            .get("tokenizer.ggml.token_type")
            .and_then(MetaValue::as_array)
            .map(|a| a.iter().map(|t| t.as_u64().unwrap_or(1)).collect())
            .unwrap_or_default();
        let vocab: serde_json::Map<String, Value> =
            tokens.iter().enumerate().map(|(i, t)| (t.to_string(), json!(i))).collect();
        let byte_alphabet = byte_level_alphabet();
        let added: Vec<Value> = tokens
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                let ty = types.get(*i).copied().unwrap_or(1);
                (ty == 3 && t.chars().all(|c| byte_alphabet.contains(&c))) || ty == 4
            })
            .map(|(i, t)| {
                let special = types.get(i).copied() == Some(3);
                json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": !special, "special": special})
            })
            .collect();
        let add_bos =
            self.metadata.get("tokenizer.ggml.add_bos_token").and_then(MetaValue::as_bool).unwrap_or(false);
        let bos = self.meta_u64("tokenizer.ggml.bos_token_id").and_then(|i| tokens.get(i as usize).copied());
        let post = match (add_bos, bos) {
            (true, Some(b)) => json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": serde_json::Map::from_iter([(b.to_string(), json!({
                    "id": b, "ids": [self.meta_u64("tokenizer.ggml.bos_token_id")], "tokens": [b]}))])
            }),
            _ => Value::Null,
        };
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges}
        });
        Ok(doc)
    }
}

/// The 256 characters GPT-2's byte-level BPE uses to spell bytes.
fn byte_level_alphabet() -> std::collections::HashSet<char> {
    let mut set = std::collections::HashSet::new();
    let mut n = 0u32;
    for b in 0u32..256 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        if printable {
            set.insert(char::from_u32(b).unwrap());
        } else {
            set.insert(char::from_u32(256 + n).unwrap());
            n += 1;
        }
    }
    set
}

/// Dequantises `n` elements of GGML `dtype` from `bytes`.
pub fn dequantize(dtype: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    let h = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    match dtype {
        GgmlType::F32 => {
            out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        }
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(h)),
        GgmlType::BF16 => {
            out.extend(bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()))
        }
        GgmlType::Q8_0 => {
            for blk in bytes.chunks_exact(34) {
                let d = h(&blk[0..2]);
                out.extend(blk[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4_0 => {
            for blk in bytes.chunks_exact(18) {
                let d = h(&blk[0..2]);
                let qs = &blk[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for blk in bytes.chunks_exact(20) {
                let d = h(&blk[0..2]);
                let m = h(&blk[2..4]);
                let qs = &blk[4..20];
                out.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
    }
    out
}

/// Undoes llama.cpp's q/k row permutation (GGML's interleaved RoPE) so the weight is back in
/// HF's rotate-half layout: rows `[heads, head_dim/2, 2]` become `[heads, 2, head_dim/2]`.
pub fn unpermute_qk(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let half = rows / heads / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for two in 0..2 {
                let src = ((h * half + i) * 2 + two) * cols;
                let dst = ((h * 2 + two) * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_blocks_dequantize_per_spec() {
        // d = 0.5, m = -1.0; nibbles 0..15 in the low half, 15..0 in the high half.
        let mut blk = Vec::new();
        blk.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        blk.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        for j in 0..16u8 {
            blk.push(j | ((15 - j) << 4));
        }
        let x = dequantize(GgmlType::Q4_1, &blk, 32);
        assert_eq!(x[0], -1.0);
        assert_eq!(x[15], 15.0 * 0.5 - 1.0);
        assert_eq!(x[16], 15.0 * 0.5 - 1.0);
        assert_eq!(x[31], -1.0);

        let mut blk0 = Vec::new();
        blk0.extend_from_slice(&f16::from_f32(2.0).to_le_bytes());
        for j in 0..16u8 {
            blk0.push(j | (j << 4));
        }
        let y = dequantize(GgmlType::Q4_0, &blk0, 32);
        assert_eq!(y[0], -16.0);
        assert_eq!(y[8], 0.0);
        assert_eq!(y[31], 14.0);

        let mut blk8 = Vec::new();
        blk8.extend_from_slice(&f16::from_f32(0.25).to_le_bytes());
        blk8.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let z = dequantize(GgmlType::Q8_0, &blk8, 32);
        assert_eq!(z[0], -4.0);
        assert_eq!(z[31], 15.0 * 0.25);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: w.reshape(heads, 2, half, cols).swapaxes(1, 2)
        let (heads, half, cols) = (2, 3, 2);
        let rows = heads * 2 * half;
        let hf: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let mut permuted = vec![0f32; hf.len()];
        for h in 0..heads {
            for two in 0..2 {
                for i in 0..half {
                    let src = ((h * 2 + two) * half + i) * cols;
                    let dst = ((h * half + i) * 2 + two) * cols;
                    permuted[dst..dst + cols].copy_from_slice(&hf[src..src + cols]);
                }
            }
        }
        assert_ne!(permuted, hf);
        assert_eq!(unpermute_qk(&permuted, rows, cols, heads), hf);
    }

    #[test]
    fn truncated_and_foreign_files_are_named() {
        let dir = std::env::temp_dir().join(format!("htc-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.gguf");
        std::fs::write(&p, b"NOPE0000").unwrap();
        let e = format!("{:#}", GgufFile::open(&p).err().unwrap());
        assert!(e.contains("bad.gguf: not a GGUF file (bad magic)"), "{e}");
        let mut trunc = b"GGUF".to_vec();
        trunc.extend_from_slice(&3u32.to_le_bytes());
        trunc.extend_from_slice(&5u64.to_le_bytes());
        std::fs::write(&p, &trunc).unwrap();
        let e = format!("{:#}", GgufFile::open(&p).err().unwrap());
        assert!(e.contains("bad.gguf: GGUF file is truncated"), "{e}");
    }
}
