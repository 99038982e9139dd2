//! The LLaMA decoder config (`LlamaConfig` in transformers).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{get_bool, get_f64, get_str, get_usize};
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
