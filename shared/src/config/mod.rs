//! Every model config, in one place: parsed by serde from HF `config.json` files with
//! transformers' defaults for absent fields, so real hub snapshots (which omit default values)
//! load as they are. Parsing only: no file access here (the worker's checkpoint opener reads the
//! files and names them in its errors).
//!
//! Each file layout has a raw serde struct that mirrors it (`#[serde(default = ...)]` for the
//! defaults, `Option` where transformers derives a default from other fields); `into_config`
//! checks it and returns the config the models use:
//!
//! - [`LlamaConfig`], [`ClipVisionConfig`]: the text and vision towers;
//! - [`LlavaConfig`]: LLaVA-1.5 in either checkpoint layout;
//! - [`HtcConfig`]: the `htc` section (modes, N_d, k, topology, projectors);
//! - [`MgvqConfig`]: the MGVQ encoder and quantiser.
//!
//! A field of the wrong type, or a required field left out, is an [`Error::Config`] naming the
//! field by its path in the file: "config: `text_config.hidden_size`: invalid type: string
//! "big", expected usize".

mod clip;
mod htc;
mod llama;
mod llava;
mod mgvq;

pub use clip::ClipVisionConfig;
pub use htc::{ChatFormat, Fusion, HtcConfig, HtcMode, LoraConfig, ProjectorKind, LORA_TARGETS};
pub use llama::LlamaConfig;
pub use llava::{LlavaConfig, LlavaLayout, LIUHAOTIAN_IMAGE_TOKEN};
pub use mgvq::{BlockType, MgvqConfig};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Error;

/// Deserializes one config object as `T`. A failure names the field by its path below `v`
/// (`text_config.hidden_size`; none when `v` itself is wrong or a field of its own is missing)
/// after `what`, which says which section it is ("" for a whole config.json).
pub(crate) fn parse<T: DeserializeOwned>(v: &Value, what: &str) -> Result<T, Error> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { format!("`{path}`: ") };
        Error::Config(format!("{what}{field}{}", e.into_inner()))
    })
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

    /// The text of a config error.
    fn err<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn a_missing_required_field_is_named() {
        let e = err(HtcConfig::from_json(&json!({"n_voco": 1})));
        assert_eq!(e, "config: invalid `htc` section: missing field `mode`");
        let mut mgvq = serde_json::to_value(MgvqConfig::f16c32_g8()).unwrap();
        mgvq.as_object_mut().unwrap().remove("groups");
        let e = err(HtcConfig::from_json(&json!({"mode": "htc", "mgvq": mgvq})));
        assert_eq!(e, "config: invalid `htc` section: `mgvq`: missing field `groups`");
        let e = err(LoraConfig::from_htc_json(&json!({"lora": {"rank": 8, "alpha": 16}})));
        assert_eq!(e, "config: invalid `htc.lora` section: missing field `targets`");
    }

    #[test]
    fn fusion_and_discrete_depth_default_to_the_paper_and_are_checked() {
        let mgvq = serde_json::to_value(MgvqConfig::f16c32_g8()).unwrap();
        let h = HtcConfig::from_json(&json!({"mode": "htc", "mgvq": mgvq})).unwrap();
        assert_eq!((h.fusion, h.discrete_layers), (Fusion::Before, 2));
        let h = HtcConfig::from_json(
            &json!({"mode": "htc", "mgvq": mgvq, "fusion": "mean", "discrete_layers": 3}),
        )
        .unwrap();
        assert_eq!((h.fusion, h.discrete_layers), (Fusion::Mean, 3));
        let e = err(HtcConfig::from_json(&json!({"mode": "htc", "mgvq": mgvq, "discrete_layers": 4})));
        assert_eq!(e, "config: discrete_layers must be 1, 2 or 3, got 4");
        let e = err(HtcConfig::from_json(&json!({"mode": "htc", "mgvq": mgvq, "fusion": "middle"})));
        assert!(e.starts_with("config: invalid `htc` section: `fusion`: unknown variant `middle`"), "{e}");
    }

    #[test]
    fn a_wrongly_typed_field_is_named_by_its_path() {
        let e = err(LlavaConfig::from_json(&json!({"text_config": {"hidden_size": "big"}}), None));
        assert!(e.starts_with("config: `text_config.hidden_size`: invalid type: string \"big\""), "{e}");
        let e = err(LlavaConfig::from_json(&json!({"vision_config": {"patch_size": -14}}), None));
        assert!(e.starts_with("config: `vision_config.patch_size`: invalid value: integer `-14`"), "{e}");
        let e = err(LlavaConfig::from_json(&json!({"text_config": {}, "vision_feature_layer": [-2]}), None));
        assert!(e.starts_with("config: `vision_feature_layer`: invalid type: sequence"), "{e}");
        // liuhaotian's flat layout: the LLaMA fields sit at the top level.
        let flat = json!({"mm_vision_tower": "openai/clip-vit-large-patch14-336", "rms_norm_eps": "small"});
        let e = err(LlavaConfig::from_json(&flat, None));
        assert!(e.starts_with("config: `rms_norm_eps`: invalid type: string \"small\""), "{e}");
        let e = err(LlavaConfig::from_json(&json!({"mm_projector_type": 2}), None));
        assert!(e.starts_with("config: `mm_projector_type`: invalid type: integer `2`"), "{e}");
        let tower = json!({"hidden_act": "quick_gelu", "layer_norm_eps": false});
        let e = err(LlavaConfig::from_json(&json!({"mm_vision_tower": "clip"}), Some(&tower)));
        assert!(
            e.starts_with("config: the vision tower `clip`'s config.json: `layer_norm_eps`: invalid type"),
            "{e}"
        );
        let e = err(LlamaConfig::from_json(&json!({"eos_token_id": "</s>"})));
        assert!(e.contains("`eos_token_id`: ") && e.contains("a token id or a list of token ids"), "{e}");
        let e = err(LlamaConfig::from_json(&json!({"rope_parameters": {"rope_theta": "1e4"}})));
        assert!(e.starts_with("config: `rope_parameters.rope_theta`: invalid type"), "{e}");
        let e = err(LlamaConfig::from_json(&json!([1, 2])));
        assert!(e.contains("expected a LLaMA config object"), "{e}");
        let e = err(ClipVisionConfig::from_json(&json!({"vision_config": {"image_size": 33.5}})));
        assert!(e.starts_with("config: `vision_config.image_size`: invalid type: floating point"), "{e}");
        let e = err(MgvqConfig::from_json(&json!({"width_list": [16, "32"]})));
        assert!(e.starts_with("config: invalid MGVQ config: `width_list[1]`: invalid type"), "{e}");
        let e = err(HtcConfig::from_json(&json!({"mode": "htc", "n_voco": "one"})));
        assert!(e.starts_with("config: invalid `htc` section: `n_voco`: invalid type"), "{e}");
    }

    #[test]
    fn absent_fields_take_the_defaults() {
        let c = ClipVisionConfig::from_json(&json!({})).unwrap();
        assert_eq!(
            (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads),
            (768, 3072, 12, 12)
        );
        assert_eq!((c.num_channels, c.image_size, c.patch_size, c.layer_norm_eps), (3, 224, 32, 1e-5));
        let t = LlamaConfig::from_json(&json!({})).unwrap();
        assert_eq!((t.hidden_size, t.intermediate_size, t.num_hidden_layers), (4096, 11008, 32));
        assert_eq!((t.num_attention_heads, t.num_key_value_heads, t.head_dim), (32, 32, 128));
        assert_eq!((t.bos_token_id, t.eos_token_ids.clone()), (Some(1), vec![2]));
        assert!(!t.attention_bias && !t.mlp_bias);

        // llava-hf: no vision_config means LLaVA-1.5's tower; no text_config, LLaMA's defaults.
        let hf = LlavaConfig::from_json(&json!({"vision_config": null}), None).unwrap();
        assert_eq!(hf.layout, LlavaLayout::LlavaHf);
        assert_eq!(hf.text, t);
        assert_eq!(hf.vision, ClipVisionConfig::vit_large_patch14_336());
        assert_eq!((hf.image_token_id, hf.select_layer, hf.projector_mlp), (32000, -2, true));
        let hf = LlavaConfig::from_json(&json!({"text_config": {}, "image_token_id": 7}), None).unwrap();
        assert_eq!(hf.image_token_id, 7);

        let lt =
            LlavaConfig::from_json(&json!({"mm_vision_tower": "openai/clip-vit-large-patch14-336"}), None)
                .unwrap();
        assert_eq!(lt.layout, LlavaLayout::Liuhaotian);
        assert_eq!(lt.text, t);
        assert_eq!(
            (lt.image_token_id, lt.select_layer, lt.projector_mlp),
            (LIUHAOTIAN_IMAGE_TOKEN, -2, false)
        );

        let mut mgvq = serde_json::to_value(MgvqConfig::f16c32_g8()).unwrap();
        for k in ["attention_dim", "expand_ratio", "norm_eps"] {
            mgvq.as_object_mut().unwrap().remove(k);
        }
        let h = HtcConfig::from_json(&json!({"mode": "htc", "mgvq": mgvq})).unwrap();
        assert_eq!(h, HtcConfig::paper(MgvqConfig::f16c32_g8(), 8192));
    }

    #[test]
    fn null_ids_mean_none_and_derived_fields_follow_the_others() {
        let c = LlamaConfig::from_json(
            &json!({"bos_token_id": null, "eos_token_id": null, "num_key_value_heads": null, "head_dim": null,
                    "hidden_size": 96, "num_attention_heads": 6, "rope_scaling": null}),
        )
        .unwrap();
        assert_eq!((c.bos_token_id, c.eos_token_ids), (None, vec![]));
        assert_eq!((c.num_key_value_heads, c.head_dim), (6, 16));
        let c = LlamaConfig::from_json(&json!({"eos_token_id": [2, 32007], "head_dim": 64})).unwrap();
        assert_eq!((c.eos_token_ids, c.head_dim), (vec![2, 32007], 64));
    }

    #[test]
    fn files_carrying_both_names_of_a_field_read_the_newer_one() {
        // transformers keeps the legacy `type` beside `rope_type`, and `rope_scaling` beside
        // `rope_parameters`; llava-hf files may carry both `image_token_index` and `_id`.
        let c = LlamaConfig::from_json(&json!({
            "rope_parameters": {"rope_type": "default", "type": "default", "rope_theta": 20000.0},
            "rope_scaling": {"rope_type": "default", "rope_theta": 30000.0},
        }))
        .unwrap();
        assert_eq!(c.rope_theta, 20000.0);
        let e = err(LlamaConfig::from_json(&json!({"rope_scaling": {"type": "linear", "factor": 2.0}})));
        assert!(e.contains("unsupported rope type `linear`"), "{e}");
        let hf = LlavaConfig::from_json(
            &json!({"text_config": {}, "image_token_index": 5, "image_token_id": 6}),
            None,
        )
        .unwrap();
        assert_eq!(hf.image_token_id, 5);
    }

    #[test]
    fn clip_reads_nested_vision_config() {
        let c = ClipVisionConfig::from_json(&json!({"vision_config": {"hidden_size": 1024, "num_attention_heads": 16, "image_size": 336, "patch_size": 14}}))
            .unwrap();
        assert_eq!(c.hidden_size, 1024);
        assert_eq!(c.num_patches(), 576);
    }
}
