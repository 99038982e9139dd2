//! `htc train`: fine-tunes an HTC checkpoint on LLaVA conversation data (see `train::run`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::backend::Autodiff;

use htc_shared::config::LoraConfig;

use crate::backend::{self, Backend};
use crate::train::objective::Trainable;
use crate::train::optim::{AdamW, WarmupCosine};
use crate::train::run::{run as run_training, RunConfig, SceneLoss};
use crate::train::step::Optimizer;

#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Records that cannot be used (missing or unreadable image, no `<image>` \
placeholder, no gpt turn, turns out of order, text longer than the context after the image \
prefix) are skipped and counted, never truncated; --strict stops at the first one instead.")]
pub struct TrainArgs {
    /// HTC checkpoint directory (llava-hf layout with an `htc` section, e.g. from `htc init`).
    #[arg(long)]
    pub model: PathBuf,
    /// LLaVA conversation JSON (a list of {"id", "image", "conversations"}).
    #[arg(long)]
    pub data: PathBuf,
    /// Folder the records' `image` paths are relative to.
    #[arg(long)]
    pub images: PathBuf,
    /// Train in this mode instead of the checkpoint's (none, voco, htc, discrete, avgpool);
    /// the checkpoints record it. A curriculum: `none` first (the LLM learns to read the
    /// patches), then `htc` (it learns to read them through <voco>).
    #[arg(long, value_enum)]
    pub mode: Option<super::Mode>,
    /// Validation data (same format); its loss is logged every --eval-every steps.
    #[arg(long, requires = "val_images")]
    pub val_data: Option<PathBuf>,
    /// Folder the validation records' images are relative to.
    #[arg(long, requires = "val_data")]
    pub val_images: Option<PathBuf>,
    /// Run directory: checkpoints, metrics.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its newest checkpoint, exactly.
    #[arg(long)]
    pub resume: bool,
    /// What learns: any of voco,projector,discrete,llm,vision (CLIP and MGVQ frozen by default).
    #[arg(long, default_value = "voco,projector,discrete,llm")]
    pub train: String,
    /// Train the LLM through LoRA adapters of this rank instead of its full weights
    /// (checkpoints keep the adapters unmerged; `htc merge-lora` folds them in).
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA scale numerator: adapters add (alpha / rank) B A x.
    #[arg(long, default_value_t = 16, requires = "lora_rank")]
    pub lora_alpha: usize,
    /// Projections that get adapters: any of q,k,v,o,gate,up,down.
    #[arg(long, default_value = "q,k,v,o,gate,up,down", requires = "lora_rank")]
    pub lora_targets: String,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Steps of linear warmup from 0.
    #[arg(long, default_value_t = 1500)]
    pub warmup_steps: usize,
    /// Learning-rate schedule (warmup, then cosine to 0 at the last step).
    #[arg(long, default_value = "cosine")]
    pub schedule: String,
    /// Decoupled weight decay (none on biases, norms and embeddings).
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// AdamW's beta1,beta2.
    #[arg(long, default_value = "0.9,0.999")]
    pub adam_betas: String,
    /// AdamW's epsilon.
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f64,
    /// Clip gradients to this global L2 norm (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Examples per optimizer step.
    #[arg(long, default_value_t = 256)]
    pub global_batch: usize,
    /// Examples per forward pass; gradients accumulate over global/micro passes.
    #[arg(long, default_value_t = 8)]
    pub micro_batch: usize,
    /// Micro-batches differentiated at once, one thread each (0: one per CPU core). Only
    /// speed changes: the step is the same for any count.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Passes over the data (unless --max-steps is given).
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Stop after this many steps (overrides --epochs).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Seed of the data order and of fresh LoRA adapters.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a checkpoint every N steps (and at the last one).
    #[arg(long, default_value_t = 500)]
    pub save_every: usize,
    /// Keep the newest K checkpoints.
    #[arg(long, default_value_t = 2)]
    pub keep: usize,
    /// Log the validation loss every N steps (with --val-data).
    #[arg(long, default_value_t = 200)]
    pub eval_every: usize,
    /// Add a probe's loss on the `<voco>` token, weighted by this: linear heads (training-only,
    /// not saved) that name what every grid cell of the ShapesVQA scene holds, so that the one
    /// token learns to carry the whole scene (needs --scenes).
    #[arg(long, requires = "scenes")]
    pub scene_loss: Option<f64>,
    /// The scene labels for --scene-loss: the `<split>.scenes.json` `htc data shapes` wrote
    /// beside the data (image paths relative to --images).
    #[arg(long, requires = "scene_loss")]
    pub scenes: Option<PathBuf>,
    /// The LLM layer whose input at `<voco>` the --scene-loss probe reads (0 is the first; an
    /// early layer leaves the text the layers after it to decode what `<voco>` carries).
    #[arg(long, default_value_t = 1)]
    pub scene_layer: usize,
    /// Train the compression alone, on the --scene-loss probe: each record's text is cut to its
    /// first token and no answer is scored, so a row costs the image prefix and `<voco>` only
    /// (a stage that teaches `<voco>` to carry the scene before the text learns to read it).
    #[arg(long, requires = "scene_loss")]
    pub probe_only: bool,
    /// Add the KL term of the paper's Eq. 10 on `<voco>`, weighted by this β: `½ z²` per
    /// dimension of the `<voco>` state after the LLM's last layer (a unit-variance Gaussian
    /// posterior around z against N(0, I); see docs/training.md). 0: none.
    #[arg(long, default_value_t = 0.0)]
    pub kl_weight: f64,
    /// Stop at the first unusable record instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Score the questions' tokens too, not only the answers (language modelling on the whole
    /// conversation): many more targets per example, each asking the text to read the image
    /// ("Is the red ___" needs the red object's shape). For an LLM trained from nothing.
    #[arg(long)]
    pub train_on_inputs: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn betas(s: &str) -> Result<(f64, f64)> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let parse = |p: &str| p.parse::<f64>().ok().filter(|b| (0.0..1.0).contains(b));
    match parts[..] {
        [a, b] => match (parse(a), parse(b)) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => bail!("--adam-betas must be two numbers in [0, 1), got `{s}`"),
        },
        _ => bail!("--adam-betas must be two numbers separated by a comma, got `{s}`"),
    }
}

impl TrainArgs {
    pub fn config(&self) -> Result<RunConfig> {
        if self.schedule != "cosine" {
            bail!("--schedule `{}` is not supported (cosine: warmup, then cosine to 0)", self.schedule);
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr must be a positive number, got {}", self.lr);
        }
        let (beta1, beta2) = betas(&self.adam_betas)?;
        Ok(RunConfig {
            model: self.model.clone(),
            data: self.data.clone(),
            images: self.images.clone(),
            val: self.val_data.clone().zip(self.val_images.clone()),
            out: self.out.clone(),
            trainable: Trainable::parse(&self.train)?,
            mode: self.mode.map(Into::into),
            lora: match self.lora_rank {
                Some(rank) => {
                    let l = LoraConfig {
                        rank,
                        alpha: self.lora_alpha,
                        targets: self.lora_targets.split(',').map(|t| t.trim().to_string()).collect(),
                    };
                    l.validate()?;
                    Some(l)
                }
                None => None,
            },
            optimizer: Optimizer {
                adamw: AdamW { beta1, beta2, eps: self.adam_eps, weight_decay: self.weight_decay },
                schedule: WarmupCosine { base: self.lr, warmup: self.warmup_steps, total: 0 },
                max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            },
            scene_loss: self.scene_loss.zip(self.scenes.clone()).map(|(weight, scenes)| SceneLoss {
                scenes,
                weight,
                layer: self.scene_layer,
                probe_only: self.probe_only,
            }),
            kl_weight: self.kl_weight,
            global_batch: self.global_batch,
            micro_batch: self.micro_batch,
            threads: if self.threads == 0 {
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
            } else {
                self.threads
            },
            max_steps: self.max_steps,
            epochs: self.epochs,
            seed: self.seed,
            save_every: self.save_every,
            keep: self.keep,
            eval_every: self.eval_every,
            strict: self.strict,
            train_on_inputs: self.train_on_inputs,
            resume: self.resume,
            progress: !self.quiet,
        })
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    let cfg = a.config()?;
    let s = run_training::<Autodiff<Backend>>(&cfg, &backend::device())?;
    outln!(
        "trained {} steps on {} examples ({} skipped); final loss {:.4}; checkpoint {}",
        s.steps,
        s.examples,
        s.skipped,
        s.final_loss,
        s.checkpoint.display()
    );
    Ok(())
}
