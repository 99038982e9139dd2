//! The LLaVA-1.5 config in either checkpoint layout: llava-hf (`LlavaForConditionalGeneration`,
//! `text_config` + `vision_config`) or the original liuhaotian (`LlavaLlamaForCausalLM`, a LLaMA
//! config plus `mm_*` fields whose vision tower is named, not embedded).

use serde::Deserialize;
use serde_json::Value;

use super::clip::RawClipVision;
use super::llama::RawLlama;
use super::{parse, ClipVisionConfig, LlamaConfig};
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

/// Defaults of transformers' `LlavaConfig` and of liuhaotian's `LlavaConfig`.
mod defaults {
    pub fn select_layer() -> i64 {
        -2
    }
    pub fn select_strategy() -> String {
        "default".into()
    }
    pub fn projector_hidden_act() -> String {
        "gelu".into()
    }
    pub fn select_feature() -> String {
        "patch".into()
    }
    pub fn projector_type() -> String {
        "linear".into()
    }
}

/// transformers' default `image_token_index` (LLaVA-1.5's `<image>` after Vicuna's 32000 ids).
const LLAVA_HF_IMAGE_TOKEN: i64 = 32000;

/// A llava-hf `config.json` (`LlavaForConditionalGeneration`): the towers nested in
/// `text_config` and `vision_config`, each with its own defaults when absent or `null`.
#[derive(Debug, Deserialize)]
#[serde(expecting = "a LLaVA config object")]
struct LlavaHfFile {
    text_config: Option<RawLlama>,
    /// Absent or `null`: CLIP ViT-L/14-336, LLaVA-1.5's tower.
    vision_config: Option<RawClipVision>,
    /// The placeholder id. Some files name it `image_token_id`, and a file may carry both (an
    /// alias would refuse that as a duplicate), so both are read and `image_token_index` wins.
    image_token_index: Option<i64>,
    image_token_id: Option<i64>,
    #[serde(default = "defaults::select_layer")]
    vision_feature_layer: i64,
    #[serde(default = "defaults::select_strategy")]
    vision_feature_select_strategy: String,
    #[serde(default = "defaults::projector_hidden_act")]
    projector_hidden_act: String,
}

/// The `mm_*` fields of a liuhaotian `config.json` (`LlavaLlamaForCausalLM`), which is a flat
/// LLaMA config plus these; the vision tower is named, not embedded. (The LLaMA fields are read
/// by [`RawLlama`] from the same object: a `#[serde(flatten)]` field would lose the path that
/// errors name.)
#[derive(Debug, Deserialize)]
#[serde(expecting = "a LLaVA config object")]
struct LiuhaotianMm {
    #[serde(default = "defaults::select_feature")]
    mm_vision_select_feature: String,
    #[serde(default = "defaults::projector_type")]
    mm_projector_type: String,
    #[serde(default = "defaults::select_layer")]
    mm_vision_select_layer: i64,
}

impl LlavaHfFile {
    fn into_config(self) -> Result<LlavaConfig, Error> {
        let text = match self.text_config {
            Some(t) => t,
            None => parse::<RawLlama>(&Value::Object(Default::default()), "")?,
        };
        let text = text.into_config()?;
        let vision = match self.vision_config {
            Some(vc) => vc.into_config()?,
            None => ClipVisionConfig::vit_large_patch14_336(),
        };
        if self.vision_feature_select_strategy != "default" {
            return Err(Error::Config(format!(
                "unsupported vision_feature_select_strategy `{}` (only `default`, CLS dropped)",
                self.vision_feature_select_strategy
            )));
        }
        if self.projector_hidden_act != "gelu" {
            return Err(Error::Config(format!(
                "unsupported projector_hidden_act `{}`",
                self.projector_hidden_act
            )));
        }
        Ok(LlavaConfig {
            layout: LlavaLayout::LlavaHf,
            text,
            vision,
            image_token_id: self.image_token_index.or(self.image_token_id).unwrap_or(LLAVA_HF_IMAGE_TOKEN),
            select_layer: self.vision_feature_layer,
            projector_mlp: true,
        })
    }
}

impl LiuhaotianMm {
    /// `text` is the same file read as a LLaMA config; `vision` is the tower's config, found by
    /// the caller from `mm_vision_tower`.
    fn into_config(self, text: RawLlama, vision: ClipVisionConfig) -> Result<LlavaConfig, Error> {
        let text = text.into_config()?;
        if self.mm_vision_select_feature != "patch" {
            return Err(Error::Config(format!(
                "unsupported mm_vision_select_feature `{}` (only `patch`)",
                self.mm_vision_select_feature
            )));
        }
        let projector_mlp = match self.mm_projector_type.as_str() {
            "linear" => false,
            "mlp2x_gelu" => true,
            other => {
                return Err(Error::Config(format!(
                    "unsupported mm_projector_type `{other}` (expected linear or mlp2x_gelu)"
                )))
            }
        };
        Ok(LlavaConfig {
            layout: LlavaLayout::Liuhaotian,
            text,
            vision,
            image_token_id: LIUHAOTIAN_IMAGE_TOKEN,
            select_layer: self.mm_vision_select_layer,
            projector_mlp,
        })
    }
}

impl LlavaConfig {
    /// Whether a `config.json` is in the llava-hf layout (else liuhaotian's).
    pub fn is_llava_hf(v: &Value) -> bool {
        v.get("text_config").is_some() || v.get("vision_config").is_some()
    }

    /// The vision tower a liuhaotian config names (`mm_vision_tower`, else `vision_tower`): a
    /// local CLIP snapshot directory or a hub name.
    pub fn vision_tower_name(v: &Value) -> &str {
        v.get("mm_vision_tower").or_else(|| v.get("vision_tower")).and_then(Value::as_str).unwrap_or("")
    }

    /// Parses a LLaVA `config.json`. For liuhaotian configs, `tower` is the `config.json` of
    /// the local CLIP snapshot named by `mm_vision_tower`, when the caller found one; without
    /// it the name `openai/clip-vit-large-patch14-336` gives the built-in ViT-L/14-336 config.
    pub fn from_json(v: &Value, tower: Option<&Value>) -> Result<Self, Error> {
        if Self::is_llava_hf(v) {
            return parse::<LlavaHfFile>(v, "")?.into_config();
        }
        let text = parse::<RawLlama>(v, "")?;
        let mm = parse::<LiuhaotianMm>(v, "")?;
        let name = Self::vision_tower_name(v);
        let vision = match tower {
            Some(t) => ClipVisionConfig::from_json(t).map_err(|e| match e {
                Error::Config(m) => Error::Config(format!("the vision tower `{name}`'s config.json: {m}")),
                other => other,
            })?,
            None if name.ends_with("clip-vit-large-patch14-336") => ClipVisionConfig::vit_large_patch14_336(),
            None => {
                return Err(Error::Config(format!(
                    "cannot find the vision tower `{name}`: give a local CLIP snapshot directory in mm_vision_tower"
                )))
            }
        };
        mm.into_config(text, vision)
    }

    pub fn num_image_tokens(&self) -> usize {
        self.vision.num_patches()
    }
}
