//! The CLIP vision tower config (`CLIPVisionConfig` in transformers).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::parse;
use crate::Error;

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

/// transformers' `CLIPVisionConfig` defaults, for the fields a hub snapshot leaves out.
mod defaults {
    pub fn hidden_size() -> usize {
        768
    }
    pub fn intermediate_size() -> usize {
        3072
    }
    pub fn num_hidden_layers() -> usize {
        12
    }
    pub fn num_attention_heads() -> usize {
        12
    }
    pub fn num_channels() -> usize {
        3
    }
    pub fn image_size() -> usize {
        224
    }
    pub fn patch_size() -> usize {
        32
    }
    pub fn layer_norm_eps() -> f64 {
        1e-5
    }
    pub fn hidden_act() -> String {
        "quick_gelu".into()
    }
}

/// A CLIP vision `config.json` (or a LLaVA `vision_config`) as transformers writes it: the
/// fields it may leave out carry transformers' defaults; unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a CLIP vision config object")]
pub(crate) struct RawClipVision {
    #[serde(default = "defaults::hidden_size")]
    hidden_size: usize,
    #[serde(default = "defaults::intermediate_size")]
    intermediate_size: usize,
    #[serde(default = "defaults::num_hidden_layers")]
    num_hidden_layers: usize,
    #[serde(default = "defaults::num_attention_heads")]
    num_attention_heads: usize,
    #[serde(default = "defaults::num_channels")]
    num_channels: usize,
    #[serde(default = "defaults::image_size")]
    image_size: usize,
    #[serde(default = "defaults::patch_size")]
    patch_size: usize,
    #[serde(default = "defaults::layer_norm_eps")]
    layer_norm_eps: f64,
    #[serde(default = "defaults::hidden_act")]
    hidden_act: String,
}

/// A whole `CLIPModel` config: the vision tower is its `vision_config`.
#[derive(Deserialize)]
struct ClipModelFile {
    vision_config: RawClipVision,
}

impl RawClipVision {
    /// Checks the activation and that the patches and heads divide the image and the width.
    pub(crate) fn into_config(self) -> Result<ClipVisionConfig, Error> {
        if self.hidden_act != "quick_gelu" {
            return Err(Error::Config(format!(
                "unsupported CLIP hidden_act `{}` (expected quick_gelu)",
                self.hidden_act
            )));
        }
        let c = ClipVisionConfig {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_channels: self.num_channels,
            image_size: self.image_size,
            patch_size: self.patch_size,
            layer_norm_eps: self.layer_norm_eps,
        };
        if c.patch_size == 0 || !c.image_size.is_multiple_of(c.patch_size) {
            return Err(Error::Config(format!(
                "image_size {} is not a multiple of patch_size {}",
                c.image_size, c.patch_size
            )));
        }
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(Error::Config("CLIP hidden_size must be a multiple of num_attention_heads".into()));
        }
        Ok(c)
    }
}

impl ClipVisionConfig {
    /// Parses a CLIP vision config with transformers' `CLIPVisionConfig` defaults. Accepts a full
    /// `CLIPModel` config too (it reads its `vision_config`).
    pub fn from_json(v: &Value) -> Result<Self, Error> {
        let raw = if v.get("vision_config").is_some_and(Value::is_object) {
            parse::<ClipModelFile>(v, "")?.vision_config
        } else {
            parse::<RawClipVision>(v, "")?
        };
        raw.into_config()
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
