//! The LLaMA decoder config (`LlamaConfig` in transformers).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::parse;
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

/// transformers' `LlamaConfig` defaults, for the fields a hub snapshot leaves out.
mod defaults {
    pub fn vocab_size() -> usize {
        32000
    }
    pub fn hidden_size() -> usize {
        4096
    }
    pub fn intermediate_size() -> usize {
        11008
    }
    pub fn num_hidden_layers() -> usize {
        32
    }
    pub fn num_attention_heads() -> usize {
        32
    }
    pub fn max_position_embeddings() -> usize {
        2048
    }
    pub fn rms_norm_eps() -> f64 {
        1e-6
    }
    pub fn rope_theta() -> f64 {
        10000.0
    }
    pub fn hidden_act() -> String {
        "silu".into()
    }
    pub fn bos_token_id() -> Option<u32> {
        Some(1)
    }
    pub fn eos_token_id() -> Option<super::TokenIds> {
        Some(super::TokenIds::One(2))
    }
}

/// `eos_token_id`: one id or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a token id or a list of token ids")]
pub(crate) enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// `rope_parameters` (transformers 5) or `rope_scaling` (earlier files).
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a RoPE parameters object")]
pub(crate) struct RawRope {
    /// transformers 5 keeps `rope_theta` here rather than at the top level.
    rope_theta: Option<f64>,
    rope_type: Option<String>,
    /// The older name of `rope_type`; files converted by transformers may carry both, so both
    /// are read (an alias would refuse such a file as a duplicate) and `rope_type` wins.
    #[serde(rename = "type")]
    legacy_type: Option<String>,
}

/// A LLaMA `config.json` (or a LLaVA `text_config`) as transformers writes it: the fields it
/// may leave out carry transformers' defaults; unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a LLaMA config object")]
pub(crate) struct RawLlama {
    #[serde(default = "defaults::vocab_size")]
    vocab_size: usize,
    #[serde(default = "defaults::hidden_size")]
    hidden_size: usize,
    #[serde(default = "defaults::intermediate_size")]
    intermediate_size: usize,
    #[serde(default = "defaults::num_hidden_layers")]
    num_hidden_layers: usize,
    #[serde(default = "defaults::num_attention_heads")]
    num_attention_heads: usize,
    /// Absent or `null`: `num_attention_heads` (no grouped-query attention).
    num_key_value_heads: Option<usize>,
    /// Absent or `null`: `hidden_size / num_attention_heads`.
    head_dim: Option<usize>,
    #[serde(default = "defaults::max_position_embeddings")]
    max_position_embeddings: usize,
    #[serde(default = "defaults::rms_norm_eps")]
    rms_norm_eps: f64,
    #[serde(default = "defaults::rope_theta")]
    rope_theta: f64,
    /// Read in preference to `rope_scaling` when both are present.
    rope_parameters: Option<RawRope>,
    rope_scaling: Option<RawRope>,
    #[serde(default = "defaults::hidden_act")]
    hidden_act: String,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    /// Absent: 1; `null`: none.
    #[serde(default = "defaults::bos_token_id")]
    bos_token_id: Option<u32>,
    /// Absent: 2; `null`: none.
    #[serde(default = "defaults::eos_token_id")]
    eos_token_id: Option<TokenIds>,
}

impl RawLlama {
    /// Checks the fields against each other and fills in the derived ones (`head_dim`,
    /// `num_key_value_heads`, the RoPE base).
    pub(crate) fn into_config(self) -> Result<LlamaConfig, Error> {
        let (hidden_size, num_attention_heads) = (self.hidden_size, self.num_attention_heads);
        if num_attention_heads == 0 || hidden_size == 0 {
            return Err(Error::Config("hidden_size and num_attention_heads must be positive".into()));
        }
        let num_key_value_heads = self.num_key_value_heads.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(Error::Config(format!(
                "num_attention_heads ({num_attention_heads}) must be a multiple of num_key_value_heads ({num_key_value_heads})"
            )));
        }
        let mut rope_theta = self.rope_theta;
        if let Some(rp) = self.rope_parameters.or(self.rope_scaling) {
            rope_theta = rp.rope_theta.unwrap_or(rope_theta);
            let kind = rp.rope_type.or(rp.legacy_type);
            let kind = kind.as_deref().unwrap_or("default");
            if kind != "default" {
                return Err(Error::Config(format!(
                    "unsupported rope type `{kind}` (only the default RoPE is implemented)"
                )));
            }
        }
        if self.hidden_act != "silu" {
            return Err(Error::Config(format!(
                "unsupported hidden_act `{}` for a LLaMA decoder (expected silu)",
                self.hidden_act
            )));
        }
        let eos_token_ids = match self.eos_token_id {
            None => vec![],
            Some(TokenIds::One(id)) => vec![id],
            Some(TokenIds::Many(ids)) => ids,
        };
        Ok(LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim: self.head_dim.unwrap_or(hidden_size / num_attention_heads),
            max_position_embeddings: self.max_position_embeddings,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            bos_token_id: self.bos_token_id,
            eos_token_ids,
        })
    }
}

impl LlamaConfig {
    /// Parses a LLaMA config object (a whole `config.json` or a LLaVA `text_config`), applying
    /// transformers' `LlamaConfig` defaults for absent fields. `rope_theta` is read from the top
    /// level (hub snapshots) or from `rope_parameters.rope_theta` (transformers 5).
    pub fn from_json(v: &Value) -> Result<Self, Error> {
        parse::<RawLlama>(v, "")?.into_config()
    }
}
