//! The MGVQ tokenizer's config: encoder widths, depths and block types (names follow the
//! official `mgvq_f16c32` function), latent channels and the grouped codebook.

use serde::{Deserialize, Serialize};

use super::parse;
use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockType {
    ResBlock,
    #[serde(rename = "EViT_GLU")]
    EvitGlu,
}

/// Encoder and quantiser settings (names follow the official `mgvq_f16c32` function).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MgvqConfig {
    pub width_list: Vec<usize>,
    pub depth_list: Vec<usize>,
    pub block_type: Vec<BlockType>,
    pub latent_channels: usize,
    /// Quantiser groups G; each owns `codebook_size / G` codes of `latent_channels / G` dims.
    pub groups: usize,
    /// Total codes over all groups.
    pub codebook_size: usize,
    /// Input side in pixels (a multiple of the downsampling factor).
    pub image_size: usize,
    #[serde(default = "default_attention_dim")]
    pub attention_dim: usize,
    #[serde(default = "default_expand")]
    pub expand_ratio: usize,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
}

fn default_attention_dim() -> usize {
    32
}
fn default_expand() -> usize {
    4
}
fn default_eps() -> f64 {
    1e-5
}

impl MgvqConfig {
    /// `mgvq_f16c32_g8` at 336 px: 21×21 latents, 8 groups × 2048 codes (the HTC setting).
    pub fn f16c32_g8() -> Self {
        use BlockType::*;
        Self {
            width_list: vec![128, 256, 512, 512, 1024],
            depth_list: vec![0, 4, 8, 2, 2],
            block_type: vec![ResBlock, ResBlock, ResBlock, EvitGlu, EvitGlu],
            latent_channels: 32,
            groups: 8,
            codebook_size: 16384,
            image_size: 336,
            attention_dim: 32,
            expand_ratio: 4,
            norm_eps: 1e-5,
        }
    }

    /// Parses and validates a config (`mgvq` section or standalone JSON).
    pub fn from_json(v: &serde_json::Value) -> Result<Self, Error> {
        let c: Self = parse(v, "invalid MGVQ config: ")?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), Error> {
        let n = self.width_list.len();
        if n < 2 || self.depth_list.len() != n || self.block_type.len() != n {
            return Err(Error::Config(
                "MGVQ: width_list, depth_list and block_type must have the same length (at least 2)"
                    .to_string(),
            ));
        }
        if self.groups == 0
            || !self.latent_channels.is_multiple_of(self.groups)
            || !self.codebook_size.is_multiple_of(self.groups)
        {
            return Err(Error::Config(
                "MGVQ: latent_channels and codebook_size must be multiples of groups".to_string(),
            ));
        }
        if self.codebook_size / self.groups > u16::MAX as usize + 1 {
            return Err(Error::Config("MGVQ: more than 65536 codes per group".to_string()));
        }
        for (i, (&w, t)) in self.width_list.iter().zip(&self.block_type).enumerate() {
            if *t == BlockType::EvitGlu && w % self.attention_dim != 0 {
                return Err(Error::Config(format!(
                    "MGVQ: stage {i} width {w} is not a multiple of attention_dim {}",
                    self.attention_dim
                )));
            }
        }
        if self.image_size == 0 || !self.image_size.is_multiple_of(self.downsample_factor()) {
            return Err(Error::Config(format!(
                "MGVQ: image_size {} is not a multiple of the downsampling factor {}",
                self.image_size,
                self.downsample_factor()
            )));
        }
        Ok(())
    }

    /// Total spatial downsampling of the encoder.
    pub fn downsample_factor(&self) -> usize {
        let mut f = if self.depth_list[0] == 0 { 2 } else { 1 };
        let last = self.width_list.len() - 1;
        for (i, &d) in self.depth_list.iter().enumerate() {
            if i < last && d > 0 {
                f *= 2;
            }
        }
        f
    }

    /// Floating-point operations (a multiply-add counts two) of one encoding, convolutions,
    /// linear attention and the quantiser's grouped projection (norms and activations left
    /// out): about 880 GFLOP for `f16c32_g8` at 336 px, most of it the 3×3 convolutions of the
    /// ResBlocks at 168² and 84². For comparing measured times with the arithmetic they do.
    pub fn encoder_flops(&self) -> f64 {
        let (w, d, t) = (&self.width_list, &self.depth_list, &self.block_type);
        let conv =
            |cin: usize, cout: usize, k: usize, side: usize| 2.0 * (k * k * cin * cout * side * side) as f64;
        let unshuffle_in = d[0] == 0;
        let first = if unshuffle_in { w[1] } else { w[0] };
        let mut side = self.image_size;
        let mut flops = conv(3, if unshuffle_in { first / 4 } else { first }, 3, side);
        if unshuffle_in {
            side /= 2;
        }
        for s in 0..w.len() {
            let c = w[s];
            let hw = (side * side) as f64;
            for _ in 0..d[s] {
                flops += match t[s] {
                    BlockType::ResBlock => 2.0 * conv(c, c, 3, side),
                    BlockType::EvitGlu => {
                        let (dim, mid) = (self.attention_dim, c * self.expand_ratio);
                        let heads = (c / dim) as f64;
                        let attention = heads * 4.0 * ((dim + 1) * dim) as f64 * hw;
                        conv(c, 3 * c, 1, side)
                            + attention
                            + conv(c, c, 1, side)
                            + conv(c, 2 * mid, 1, side)
                            + 2.0 * 9.0 * (2 * mid) as f64 * hw
                            + conv(mid, c, 1, side)
                    }
                };
            }
            if s + 1 < w.len() && d[s] > 0 {
                flops += conv(c, w[s + 1] / 4, 3, side);
                side /= 2;
            }
        }
        let lc = self.latent_channels;
        flops + conv(w[w.len() - 1], lc, 3, side) + conv(lc / self.groups, lc, 1, side)
    }

    /// Latent side: 21 for f16 at 336 px.
    pub fn latent_side(&self) -> usize {
        self.image_size / self.downsample_factor()
    }

    /// Length of the flattened quantised features `q` (14112 for f16c32 at 336 px).
    pub fn q_len(&self) -> usize {
        self.latent_channels * self.latent_side().pow(2)
    }

    pub fn codes_per_group(&self) -> usize {
        self.codebook_size / self.groups
    }

    pub fn group_dim(&self) -> usize {
        self.latent_channels / self.groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_config_matches_the_paper() {
        let c = MgvqConfig::f16c32_g8();
        c.validate().unwrap();
        assert_eq!(c.downsample_factor(), 16);
        assert_eq!(c.latent_side(), 21);
        assert_eq!(c.q_len(), 14112);
        assert_eq!(c.codes_per_group(), 2048);
        assert_eq!(c.group_dim(), 4);
        // Stage 1: 4 ResBlocks × 2 convs of 3×3×256×256 at 168²; stage 2: 8 × 2 of
        // 3×3×512×512 at 84²: 33.3 GFLOP each, 24 of them, and the rest (EViT stages,
        // downsampling, stem, head) about 81 GFLOP.
        let per: f64 = 2.0 * 9.0 * 256.0 * 256.0 * 168.0 * 168.0;
        assert!((per - 2.0 * 9.0 * 512.0 * 512.0 * 84.0 * 84.0).abs() < 1.0);
        let f = c.encoder_flops();
        assert!(f > 24.0 * per && f < 24.0 * per + 100e9, "{f:e}");
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = MgvqConfig::f16c32_g8();
        c.groups = 5;
        assert!(c.validate().unwrap_err().to_string().contains("multiples of groups"));
        let mut c = MgvqConfig::f16c32_g8();
        c.image_size = 330;
        assert!(c.validate().unwrap_err().to_string().contains("downsampling factor 16"));
        let e = MgvqConfig::from_json(&serde_json::json!({"width_list": [1]})).unwrap_err();
        assert!(e.to_string().contains("invalid MGVQ config"), "{e}");
    }
}
