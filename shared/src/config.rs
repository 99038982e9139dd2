//! Model configs read from HF `config.json` files, with transformers' defaults for absent
//! fields, so real hub snapshots (which omit default values) load as they are.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// A LLaMA-architecture decoder config (`LlamaConfig` in transformers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

fn get_usize(v: &Value, key: &str, default: usize) -> Result<usize, Error> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| Error::Config(format!("`{key}` must be a non-negative integer, got {x}"))),
    }
}

fn get_f64(v: &Value, key: &str, default: f64) -> Result<f64, Error> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x.as_f64().ok_or_else(|| Error::Config(format!("`{key}` must be a number, got {x}"))),
    }
}

fn get_bool(v: &Value, key: &str, default: bool) -> Result<bool, Error> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x.as_bool().ok_or_else(|| Error::Config(format!("`{key}` must be a boolean, got {x}"))),
    }
}

fn get_str<'a>(v: &'a Value, key: &str, default: &'a str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or(default)
}

impl LlamaConfig {
    /// Parses a LLaMA config object (a whole `config.json` or a LLaVA `text_config`), applying
    /// transformers' `LlamaConfig` defaults for absent fields. `rope_theta` is read from the top
    /// level (hub snapshots) or from `rope_parameters.rope_theta` (transformers 5).
    pub fn from_json(v: &Value) -> Result<Self, Error> {
        if !v.is_object() {
            return Err(Error::Config("LLaMA config must be a JSON object".into()));
        }
        let hidden_size = get_usize(v, "hidden_size", 4096)?;
        let num_attention_heads = get_usize(v, "num_attention_heads", 32)?;
        if num_attention_heads == 0 || hidden_size == 0 {
            return Err(Error::Config("hidden_size and num_attention_heads must be positive".into()));
        }
        let num_key_value_heads = get_usize(v, "num_key_value_heads", num_attention_heads)?;
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(Error::Config(format!(
                "num_attention_heads ({num_attention_heads}) must be a multiple of num_key_value_heads ({num_key_value_heads})"
            )));
        }
        let head_dim = get_usize(v, "head_dim", hidden_size / num_attention_heads)?;
        let rope_params = v.get("rope_parameters").or_else(|| v.get("rope_scaling"));
        let mut rope_theta = get_f64(v, "rope_theta", 10000.0)?;
        if let Some(rp) = rope_params.filter(|rp| rp.is_object()) {
            rope_theta = get_f64(rp, "rope_theta", rope_theta)?;
            let kind =
                rp.get("rope_type").or_else(|| rp.get("type")).and_then(Value::as_str).unwrap_or("default");
            if kind != "default" {
                return Err(Error::Config(format!(
                    "unsupported rope type `{kind}` (only the default RoPE is implemented)"
                )));
            }
        }
        let hidden_act = get_str(v, "hidden_act", "silu");
        if hidden_act != "silu" {
            return Err(Error::Config(format!(
                "unsupported hidden_act `{hidden_act}` for a LLaMA decoder (expected silu)"
            )));
        }
        let eos_token_ids = match v.get("eos_token_id") {
            None => vec![2],
            Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
            Some(x) => x.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        };
        let bos_token_id = match v.get("bos_token_id") {
            None => Some(1),
            Some(x) => x.as_u64().map(|x| x as u32),
        };
        Ok(Self {
            vocab_size: get_usize(v, "vocab_size", 32000)?,
            hidden_size,
            intermediate_size: get_usize(v, "intermediate_size", 11008)?,
            num_hidden_layers: get_usize(v, "num_hidden_layers", 32)?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: get_usize(v, "max_position_embeddings", 2048)?,
            rms_norm_eps: get_f64(v, "rms_norm_eps", 1e-6)?,
            rope_theta,
            tie_word_embeddings: get_bool(v, "tie_word_embeddings", false)?,
            attention_bias: get_bool(v, "attention_bias", false)?,
            mlp_bias: get_bool(v, "mlp_bias", false)?,
            bos_token_id,
            eos_token_ids,
        })
    }
}

/// A CLIP vision tower config (`CLIPVisionConfig` in transformers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
}

impl ClipVisionConfig {
    /// Parses a CLIP vision config with transformers' `CLIPVisionConfig` defaults. Accepts a full
    /// `CLIPModel` config too (it reads its `vision_config`).
    pub fn from_json(v: &Value) -> Result<Self, Error> {
        let v = match v.get("vision_config") {
            Some(inner) if inner.is_object() => inner,
            _ => v,
        };
        let act = get_str(v, "hidden_act", "quick_gelu");
        if act != "quick_gelu" {
            return Err(Error::Config(format!("unsupported CLIP hidden_act `{act}` (expected quick_gelu)")));
        }
        let c = Self {
            hidden_size: get_usize(v, "hidden_size", 768)?,
            intermediate_size: get_usize(v, "intermediate_size", 3072)?,
            num_hidden_layers: get_usize(v, "num_hidden_layers", 12)?,
            num_attention_heads: get_usize(v, "num_attention_heads", 12)?,
            num_channels: get_usize(v, "num_channels", 3)?,
            image_size: get_usize(v, "image_size", 224)?,
            patch_size: get_usize(v, "patch_size", 32)?,
            layer_norm_eps: get_f64(v, "layer_norm_eps", 1e-5)?,
        };
        if c.patch_size == 0 || c.image_size % c.patch_size != 0 {
            return Err(Error::Config(format!(
                "image_size {} is not a multiple of patch_size {}",
                c.image_size, c.patch_size
            )));
        }
        if c.num_attention_heads == 0 || c.hidden_size % c.num_attention_heads != 0 {
            return Err(Error::Config("CLIP hidden_size must be a multiple of num_attention_heads".into()));
        }
        Ok(c)
    }

    /// CLIP ViT-L/14 at 336 px, the LLaVA-1.5 vision tower.
    pub fn vit_large_patch14_336() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 336,
            patch_size: 14,
            layer_norm_eps: 1e-5,
        }
    }

    /// Patch tokens per image (CLS excluded).
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}

/// How the image reaches the text (the `htc` section of a checkpoint's config.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HtcMode {
    /// Vanilla LLaVA: all 576 patch tokens stay visible (the upper bound).
    None,
    /// Continuous only: `[BOS][V][<voco>][text]` (VoCo-LLaMA).
    Voco,
    /// Hybrid: `[BOS][v_d][V][<voco>][text]` (the paper).
    Htc,
    /// Discrete anchors only: `[BOS][v_d][<voco>][text]`.
    Discrete,
    /// The 576 patch tokens average-pooled to `n_voco` tokens, visible to the text.
    Avgpool,
}

/// The continuous projector P_v.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectorKind {
    Linear,
    Mlp2xGelu,
}

fn default_n_discrete() -> usize {
    4
}
fn default_n_voco() -> usize {
    1
}
fn default_topology() -> crate::mask::Topology {
    crate::mask::Topology::Star
}
fn default_projector() -> ProjectorKind {
    ProjectorKind::Mlp2xGelu
}
fn default_discrete_hidden() -> usize {
    8192
}

/// The `htc` section of an HTC checkpoint's config.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HtcConfig {
    pub mode: HtcMode,
    /// N_d: discrete anchor tokens (1, 2, 4 or 8).
    #[serde(default = "default_n_discrete")]
    pub n_discrete: usize,
    /// k: `<voco>` tokens (or pooled tokens in `avgpool`).
    #[serde(default = "default_n_voco")]
    pub n_voco: usize,
    #[serde(default = "default_topology")]
    pub topology: crate::mask::Topology,
    #[serde(default = "default_projector")]
    pub continuous_projector: ProjectorKind,
    /// Hidden width of the discrete projector P_d (8192 in the paper's Eq. 4).
    #[serde(default = "default_discrete_hidden")]
    pub discrete_hidden: usize,
    /// The MGVQ tokenizer (required by `htc` and `discrete`).
    #[serde(default)]
    pub mgvq: Option<crate::mgvq::Config>,
}

impl HtcConfig {
    pub fn from_json(v: &Value) -> Result<Self, Error> {
        let c: Self = serde_json::from_value(v.clone())
            .map_err(|e| Error::Config(format!("invalid `htc` section: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    pub fn uses_discrete(&self) -> bool {
        matches!(self.mode, HtcMode::Htc | HtcMode::Discrete)
    }

    pub fn uses_continuous(&self) -> bool {
        !matches!(self.mode, HtcMode::Discrete)
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.uses_discrete() {
            if !matches!(self.n_discrete, 1 | 2 | 4 | 8) {
                return Err(Error::Config(format!(
                    "n_discrete must be 1, 2, 4 or 8, got {}",
                    self.n_discrete
                )));
            }
            let m = self
                .mgvq
                .as_ref()
                .ok_or_else(|| Error::Config(format!("mode {:?} needs an `mgvq` config", self.mode)))?;
            m.validate().map_err(|e| Error::Config(e.to_string()))?;
        }
        if self.n_voco == 0 {
            return Err(Error::Config("n_voco must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn llama_defaults_follow_transformers() {
        let c = LlamaConfig::from_json(&json!({"hidden_size": 64, "num_attention_heads": 4})).unwrap();
        assert_eq!(c.num_key_value_heads, 4);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rms_norm_eps, 1e-6);
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.vocab_size, 32000);
        assert_eq!(c.max_position_embeddings, 2048);
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.eos_token_ids, vec![2]);
    }

    #[test]
    fn rope_theta_from_either_place() {
        let top = LlamaConfig::from_json(&json!({"rope_theta": 500000.0})).unwrap();
        assert_eq!(top.rope_theta, 500000.0);
        let nested = LlamaConfig::from_json(
            &json!({"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}),
        )
        .unwrap();
        assert_eq!(nested.rope_theta, 100000.0);
    }

    #[test]
    fn bad_configs_are_named() {
        let e =
            LlamaConfig::from_json(&json!({"num_attention_heads": 6, "num_key_value_heads": 4})).unwrap_err();
        assert!(e.to_string().contains("num_key_value_heads"), "{e}");
        let e = LlamaConfig::from_json(&json!({"hidden_size": "big"})).unwrap_err();
        assert!(e.to_string().contains("hidden_size"), "{e}");
        let e = LlamaConfig::from_json(&json!({"rope_scaling": {"rope_type": "llama3"}})).unwrap_err();
        assert!(e.to_string().contains("llama3"), "{e}");
        let e = ClipVisionConfig::from_json(&json!({"image_size": 30, "patch_size": 14})).unwrap_err();
        assert!(e.to_string().contains("multiple of patch_size"), "{e}");
    }

    #[test]
    fn clip_reads_nested_vision_config() {
        let c = ClipVisionConfig::from_json(&json!({"vision_config": {"hidden_size": 1024, "num_attention_heads": 16, "image_size": 336, "patch_size": 14}}))
            .unwrap();
        assert_eq!(c.hidden_size, 1024);
        assert_eq!(c.num_patches(), 576);
    }
}
