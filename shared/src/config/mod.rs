//! Every model config, in one place: read from HF `config.json` files with transformers'
//! defaults for absent fields, so real hub snapshots (which omit default values) load as they
//! are. Parsing only: no file access here (the worker's checkpoint opener reads the files).
//!
//! - [`LlamaConfig`], [`ClipVisionConfig`]: the text and vision towers;
//! - [`LlavaConfig`]: LLaVA-1.5 in either checkpoint layout;
//! - [`HtcConfig`]: the `htc` section (modes, N_d, k, topology, projectors);
//! - [`MgvqConfig`]: the MGVQ encoder and quantiser.

mod clip;
mod htc;
mod llama;
mod llava;
mod mgvq;

pub use clip::ClipVisionConfig;
pub use htc::{ChatFormat, HtcConfig, HtcMode, LoraConfig, ProjectorKind, LORA_TARGETS};
pub use llama::LlamaConfig;
pub use llava::{LlavaConfig, LlavaLayout, LIUHAOTIAN_IMAGE_TOKEN};
pub use mgvq::{BlockType, MgvqConfig};

use serde_json::Value;

use crate::Error;

pub(crate) fn get_usize(v: &Value, key: &str, default: usize) -> Result<usize, Error> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| Error::Config(format!("`{key}` must be a non-negative integer, got {x}"))),
    }
}

pub(crate) fn get_f64(v: &Value, key: &str, default: f64) -> Result<f64, Error> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x.as_f64().ok_or_else(|| Error::Config(format!("`{key}` must be a number, got {x}"))),
    }
}

pub(crate) fn get_bool(v: &Value, key: &str, default: bool) -> Result<bool, Error> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x.as_bool().ok_or_else(|| Error::Config(format!("`{key}` must be a boolean, got {x}"))),
    }
}

pub(crate) fn get_str<'a>(v: &'a Value, key: &str, default: &'a str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or(default)
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
