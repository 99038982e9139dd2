//! The decoder that makes MGVQ a VQ-VAE for training the tokenizer (`htc train-tokenizer`)
//! and showing what its codes keep (`htc tokenize --recon`). HTC itself never decodes: only
//! the encoder and quantiser are part of the model.
//!
//! It mirrors the encoder: `conv_in` from the quantised features `q` to the widest width,
//! then per level a ResBlock (the encoder's block, RMSNorm2d included) and an upsampling step
//! `pixel_shuffle(conv(x))` (the inverse of the encoder's residual pixel-unshuffle), and
//! `conv_out` to RGB in [-1, 1] at the last level. Keys: `decoder.*`.

use anyhow::{ensure, Result};
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::silu;
use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use htc_shared::config::MgvqConfig;
use htc_shared::loader::Loader;
use htc_shared::mgvq::ResBlock;

/// Widths per level, from the latent resolution up to the image (one more than the number
/// of 2× upsamplings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub width_list: Vec<usize>,
    pub latent_channels: usize,
    pub norm_eps: f64,
}

impl Config {
    /// The encoder's widths in reverse, one level per 2× of its downsampling factor.
    pub fn mirror(m: &MgvqConfig) -> Self {
        let ups = m.downsample_factor().trailing_zeros() as usize;
        let w = &m.width_list;
        let width_list = (0..=ups).map(|i| w[w.len().saturating_sub(1 + i)]).collect();
        Self { width_list, latent_channels: m.latent_channels, norm_eps: m.norm_eps }
    }

    /// Widths per level given as a list (e.g. `64,64,32,16,16`); the list's length must be
    /// one more than the encoder's number of 2× downsamplings.
    pub fn with_widths(m: &MgvqConfig, widths: &[usize]) -> Result<Self> {
        let levels = m.downsample_factor().trailing_zeros() as usize + 1;
        ensure!(
            widths.len() == levels,
            "the decoder needs {levels} widths (one per level of the encoder's {}x downsampling), got {}",
            m.downsample_factor(),
            widths.len()
        );
        let c =
            Self { width_list: widths.to_vec(), latent_channels: m.latent_channels, norm_eps: m.norm_eps };
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(!self.width_list.is_empty(), "the decoder needs at least one level");
        ensure!(self.width_list.iter().all(|&w| w > 0), "decoder widths must be positive");
        Ok(())
    }
}

/// PyTorch's `pixel_shuffle(x, 2)`: the inverse of `pixel_unshuffle`.
pub fn pixel_shuffle<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, c4, h, w] = x.dims();
    let c = c4 / 4;
    x.reshape([b, c, 2, 2, h, w]).permute([0, 1, 4, 2, 5, 3]).reshape([b, c, h * 2, w * 2])
}

#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    conv_in: Conv2d<B>,
    /// One ResBlock per level except the last (full resolution, where it would cost most).
    blocks: Vec<ResBlock<B>>,
    /// `width[i] → 4 · width[i + 1]`, then a pixel shuffle.
    ups: Vec<Conv2d<B>>,
    conv_out: Conv2d<B>,
}

impl<B: Backend> Decoder<B> {
    /// Loads (or initialises, see [`Loader::init`]) the decoder under `vb` (e.g. `decoder`).
    pub fn load(vb: &Loader<B>, c: &Config) -> Result<Self> {
        c.validate()?;
        let w = &c.width_list;
        let conv_in = vb.conv2d_padded("conv_in", c.latent_channels, w[0], 3, 1, 1, 1, true)?;
        let mut blocks = Vec::new();
        let mut ups = Vec::new();
        for i in 0..w.len() - 1 {
            blocks.push(ResBlock::load(&vb.pp(format!("blocks.{i}")), w[i], c.norm_eps)?);
            ups.push(vb.conv2d_padded(&format!("ups.{i}"), w[i], 4 * w[i + 1], 3, 1, 1, 1, true)?);
        }
        let conv_out = vb.conv2d_padded("conv_out", w[w.len() - 1], 3, 3, 1, 1, 1, true)?;
        Ok(Self { conv_in, blocks, ups, conv_out })
    }

    /// Quantised features `[b, C, h, w]` → pixels `[b, 3, h·2^L, w·2^L]`, about [-1, 1].
    pub fn forward(&self, q: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.conv_in.forward(q);
        for (block, up) in self.blocks.iter().zip(&self.ups) {
            x = pixel_shuffle(up.forward(silu(block.forward(x))));
        }
        self.conv_out.forward(silu(x))
    }
}
