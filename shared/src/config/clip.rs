//! The CLIP vision tower config (`CLIPVisionConfig` in transformers).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{get_f64, get_str, get_usize};
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
