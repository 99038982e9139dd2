//! `htc train-tokenizer`: trains the MGVQ image tokenizer as a VQ-VAE (see `train::tokenizer`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::backend::Autodiff;

use htc_shared::config::MgvqConfig;

use crate::backend::{self, Backend};
use crate::models::mgvq_decoder;
use crate::train::tokenizer::{image_files, train, TokenizerRun};

#[derive(clap::Args, Debug, Clone)]
pub struct TrainTokenizerArgs {
    /// Folder of training images (png, jpg, jpeg, webp directly inside it).
    #[arg(long)]
    pub images: PathBuf,
    /// Folder of held-out images: scored and drawn in recon.png (the first 8), never trained on.
    #[arg(long)]
    pub val_images: Option<PathBuf>,
    /// MGVQ config JSON (encoder widths, groups, codebook, image size).
    #[arg(long)]
    pub config: PathBuf,
    /// Decoder widths per level, latent resolution first (default: the encoder's in reverse).
    #[arg(long, value_delimiter = ',')]
    pub decoder_widths: Option<Vec<usize>>,
    /// Output directory: config.json, model.safetensors, metrics.jsonl, loss.png, recon.png.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1000)]
    pub steps: usize,
    /// Images per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Peak learning rate (AdamW, warmup then cosine to 0).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 50)]
    pub warmup_steps: usize,
    /// Commitment loss weight β.
    #[arg(long, default_value_t = 0.25)]
    pub beta: f64,
    /// Reconstruction weight of pixels that differ from a plain background (1: plain MSE).
    #[arg(long, default_value_t = 1.0)]
    pub foreground_weight: f32,
    /// Count code use over windows of this many steps; codes unused in a window restart.
    #[arg(long, default_value_t = 50)]
    pub restart_every: usize,
    /// Held-out images to score (taken from --val-images).
    #[arg(long, default_value_t = 64)]
    pub val_count: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: TrainTokenizerArgs) -> Result<()> {
    let raw = std::fs::read(&a.config).with_context(|| format!("cannot read {}", a.config.display()))?;
    let config = MgvqConfig::from_json(
        &serde_json::from_slice::<serde_json::Value>(&raw)
            .with_context(|| format!("{} is not valid JSON", a.config.display()))?,
    )
    .with_context(|| a.config.display().to_string())?;
    if !(a.foreground_weight.is_finite() && a.foreground_weight > 0.0) {
        bail!("--foreground-weight must be a positive number, got {}", a.foreground_weight);
    }
    let images = image_files(&a.images)?;
    if images.is_empty() {
        bail!("no images (png, jpg, jpeg, webp) in {}", a.images.display());
    }
    let val_images = match &a.val_images {
        Some(d) => image_files(d)?.into_iter().take(a.val_count).collect(),
        None => Vec::new(),
    };
    let decoder = match &a.decoder_widths {
        Some(w) => mgvq_decoder::Config::with_widths(&config, w)?,
        None => mgvq_decoder::Config::mirror(&config),
    };
    let r = TokenizerRun {
        decoder,
        config,
        images,
        val_images,
        out: a.out.clone(),
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        warmup: a.warmup_steps,
        beta: a.beta,
        foreground_weight: a.foreground_weight,
        restart_every: a.restart_every,
        seed: a.seed,
        progress: !a.quiet,
    };
    let s = train::<Autodiff<Backend>>(&r, &backend::device())?;
    outln!(
        "trained the tokenizer {} steps in {:.0} s: held-out reconstruction MSE {:.5}, code perplexity {:.1} \
         per group, {} of {} codes unused on held-out images, {} restarts; wrote {}",
        s.steps,
        s.seconds,
        s.recon_mse,
        s.perplexity,
        s.unused_codes,
        r.config.codebook_size,
        s.restarted,
        a.out.display()
    );
    Ok(())
}
