//! `htc pretrain-vision`: supervised pretraining of a from-scratch vision tower on ShapesVQA
//! scene labels (see `train::vision`).

use std::path::PathBuf;

use anyhow::Result;
use burn::backend::Autodiff;

use crate::backend::{self, Backend};
use crate::train::vision::{pretrain, VisionRun};

#[derive(clap::Args, Debug, Clone)]
pub struct PretrainVisionArgs {
    /// HTC model directory (e.g. from `htc init --config`).
    #[arg(long)]
    pub model: PathBuf,
    /// `<split>.scenes.json` from `htc data shapes`.
    #[arg(long)]
    pub scenes: PathBuf,
    /// Folder the scenes' image paths are relative to.
    #[arg(long)]
    pub images: PathBuf,
    /// Held-out scenes (same folder): per-head cell accuracy is reported on them.
    #[arg(long)]
    pub val_scenes: Option<PathBuf>,
    /// Output model directory (the input model with the pretrained vision tower).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// Images per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 20)]
    pub warmup_steps: usize,
    /// Weight of the scene heads that name every cell's contents from the mean patch feature
    /// (what a `<voco>` token reads before its attention has learnt anything); 0 (the
    /// default) turns them off. In the demo recipe they did not speed up the HTC stages.
    #[arg(long, default_value_t = 0.0)]
    pub pooled_weight: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: PretrainVisionArgs) -> Result<()> {
    if a.out == a.model {
        anyhow::bail!("--out must differ from --model (the input model is read while the output is written)");
    }
    let r = VisionRun {
        model: a.model,
        scenes: a.scenes,
        images: a.images,
        val_scenes: a.val_scenes,
        out: a.out.clone(),
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        warmup: a.warmup_steps,
        pooled_weight: a.pooled_weight,
        seed: a.seed,
        progress: !a.quiet,
    };
    let s = pretrain::<Autodiff<Backend>>(&r, &backend::device())?;
    let show = |v: &[(&str, f64)]| {
        let acc: Vec<String> = v.iter().map(|(h, a)| format!("{h} {:.1}%", a * 100.0)).collect();
        if acc.is_empty() {
            "not measured".to_string()
        } else {
            acc.join(", ")
        }
    };
    outln!(
        "pretrained the vision tower {} steps in {:.0} s: final loss {:.4}; held-out cell accuracy per patch: {}; \
         from the mean patch feature: {}; wrote {}",
        s.steps,
        s.seconds,
        s.final_loss,
        show(&s.val_accuracy),
        show(&s.val_pooled_accuracy),
        a.out.display()
    );
    Ok(())
}
