//! The LLaVA-1.5 config in either checkpoint layout: llava-hf (`LlavaForConditionalGeneration`,
//! `text_config` + `vision_config`) or the original liuhaotian (`LlavaLlamaForCausalLM`, a LLaMA
//! config plus `mm_*` fields whose vision tower is named, not embedded).

use serde_json::Value;

use super::{ClipVisionConfig, LlamaConfig};
use crate::Error;

/// liuhaotian's `IMAGE_TOKEN_INDEX`: the placeholder id `tokenizer_image_token` inserts.
pub const LIUHAOTIAN_IMAGE_TOKEN: i64 = -200;

/// Which checkpoint layout a LLaVA snapshot uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlavaLayout {
    LlavaHf,
    Liuhaotian,
}

#[derive(Debug, Clone)]
pub struct LlavaConfig {
    pub layout: LlavaLayout,
    pub text: LlamaConfig,
    pub vision: ClipVisionConfig,
    pub image_token_id: i64,
    pub select_layer: i64,
    pub projector_mlp: bool,
}

fn config_err(m: String) -> Error {
    Error::Config(m)
}

impl LlavaConfig {
    /// Whether a `config.json` is in the llava-hf layout (else liuhaotian's).
    pub fn is_llava_hf(v: &Value) -> bool {
        v.get("text_config").is_some() || v.get("vision_config").is_some()
    }

    /// The vision tower a liuhaotian config names (`mm_vision_tower`): a local CLIP snapshot
    /// directory or a hub name.
    pub fn vision_tower_name(v: &Value) -> &str {
        v.get("mm_vision_tower").or_else(|| v.get("vision_tower")).and_then(Value::as_str).unwrap_or("")
    }

    /// Parses a LLaVA `config.json`. For liuhaotian configs, `tower` is the `config.json` of
    /// the local CLIP snapshot named by `mm_vision_tower`, when the caller found one; without
    /// it the name `openai/clip-vit-large-patch14-336` gives the built-in ViT-L/14-336 config.
    pub fn from_json(v: &Value, tower: Option<&Value>) -> Result<Self, Error> {
        if Self::is_llava_hf(v) {
            let empty = Value::Object(Default::default());
            let text = LlamaConfig::from_json(v.get("text_config").unwrap_or(&empty))?;
            let vision = match v.get("vision_config") {
                Some(vc) => ClipVisionConfig::from_json(vc)?,
                None => ClipVisionConfig::vit_large_patch14_336(),
            };
            let image_token_id = v
                .get("image_token_index")
                .or_else(|| v.get("image_token_id"))
                .and_then(Value::as_i64)
                .unwrap_or(32000);
            let select_layer = v.get("vision_feature_layer").and_then(Value::as_i64).unwrap_or(-2);
            let strategy =
                v.get("vision_feature_select_strategy").and_then(Value::as_str).unwrap_or("default");
            if strategy != "default" {
                return Err(config_err(format!(
                    "unsupported vision_feature_select_strategy `{strategy}` (only `default`, CLS dropped)"
                )));
            }
            let act = v.get("projector_hidden_act").and_then(Value::as_str).unwrap_or("gelu");
            if act != "gelu" {
                return Err(config_err(format!("unsupported projector_hidden_act `{act}`")));
            }
            Ok(Self {
                layout: LlavaLayout::LlavaHf,
                text,
                vision,
                image_token_id,
                select_layer,
                projector_mlp: true,
            })
        } else {
            let text = LlamaConfig::from_json(v)?;
            let name = Self::vision_tower_name(v);
            let vision = match tower {
                Some(t) => ClipVisionConfig::from_json(t)?,
                None if name.ends_with("clip-vit-large-patch14-336") => ClipVisionConfig::vit_large_patch14_336(),
                None => {
                    return Err(config_err(format!(
                        "cannot find the vision tower `{name}`: give a local CLIP snapshot directory in mm_vision_tower"
                    )))
                }
            };
            let feature = v.get("mm_vision_select_feature").and_then(Value::as_str).unwrap_or("patch");
            if feature != "patch" {
                return Err(config_err(format!(
                    "unsupported mm_vision_select_feature `{feature}` (only `patch`)"
                )));
            }
            let projector_mlp = match v.get("mm_projector_type").and_then(Value::as_str).unwrap_or("linear") {
                "linear" => false,
                "mlp2x_gelu" => true,
                other => {
                    return Err(config_err(format!(
                        "unsupported mm_projector_type `{other}` (expected linear or mlp2x_gelu)"
                    )))
                }
            };
            Ok(Self {
                layout: LlavaLayout::Liuhaotian,
                text,
                vision,
                image_token_id: LIUHAOTIAN_IMAGE_TOKEN,
                select_layer: v.get("mm_vision_select_layer").and_then(Value::as_i64).unwrap_or(-2),
                projector_mlp,
            })
        }
    }

    pub fn num_image_tokens(&self) -> usize {
        self.vision.num_patches()
    }
}
