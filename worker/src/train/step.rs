//! One optimizer step over a global batch split into micro-batches: the loss of each is its
//! answer-token NLL divided by the answer-token count of the whole global batch, so gradient
//! accumulation gives the same update as one big batch (the scene probe's loss, when there is
//! one, is likewise divided by the global batch's row count); then global-norm clipping and
//! AdamW.

use anyhow::{bail, Result};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ElementConversion;

use htc_shared::params::ParamNames;

use super::objective::{losses, Batch, SceneProbe};
use super::optim::{self, AdamW, Moments, WarmupCosine};
use crate::models::htc::Htc;

/// How parameters move.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Optimizer {
    pub adamw: AdamW,
    pub schedule: WarmupCosine,
    /// Clip gradients to this global L2 norm (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Mean answer-token cross-entropy over the global batch, before the update.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    /// Answer tokens and all real text tokens in the global batch.
    pub targets: usize,
    pub tokens: usize,
    /// With a scene probe: its mean loss per image and the share of cell properties it named
    /// right, before the update.
    pub scene: Option<(f64, f64)>,
}

/// The model and, during a run with `--scene-loss`, the training-only probe that learns with
/// it.
#[derive(Module, Debug)]
pub struct Probed<B: Backend> {
    pub model: Htc<B>,
    pub probe: Option<SceneProbe<B>>,
}

/// Takes one step on `micro` (the micro-batches of one global batch).
pub fn train_step<B: AutodiffBackend>(
    model: Htc<B>, micro: &[Batch<B>], names: &ParamNames, moments: &mut Moments<B::InnerBackend>,
    opt: &Optimizer,
) -> Result<(Htc<B>, StepReport)> {
    let (m, r) = train_step_probed(
        Probed { model, probe: None },
        micro,
        names,
        moments,
        opt,
        ProbeWeight { weight: 0.0, layer: 0 },
    )?;
    Ok((m.model, r))
}

/// How the scene probe joins the loss: its weight and the LLM layer whose input it reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeWeight {
    pub weight: f64,
    pub layer: usize,
}

/// [`train_step`] with the scene probe's loss, weighted, added to the answer-token loss (when
/// `m` has a probe).
pub fn train_step_probed<B: AutodiffBackend>(
    m: Probed<B>, micro: &[Batch<B>], names: &ParamNames, moments: &mut Moments<B::InnerBackend>,
    opt: &Optimizer, probe: ProbeWeight,
) -> Result<(Probed<B>, StepReport)> {
    let targets: usize = micro.iter().map(Batch::targets).sum();
    if targets == 0 && m.probe.is_none() {
        bail!("the global batch has no answer tokens");
    }
    let rows: usize = micro.iter().map(|b| b.ids.len()).sum();
    let mut acc = GradientsAccumulator::<Probed<B>>::new();
    let (mut loss, mut scene_loss, mut scene_right) = (0f64, 0f64, 0usize);
    for b in micro {
        let parts = losses(&m.model, m.probe.as_ref().map(|p| (p, probe.layer)), b)?;
        let mut l = parts.nll_sum.div_scalar(targets.max(1) as f64);
        loss += l.clone().into_scalar().elem::<f64>();
        if let Some((s, right)) = parts.scene {
            let s = s.div_scalar(rows as f64);
            scene_loss += s.clone().into_scalar().elem::<f64>();
            scene_right += right;
            l = l + s.mul_scalar(probe.weight);
        }
        let grads = GradientsParams::from_grads(l.backward(), &m);
        acc.accumulate(&m, grads);
    }
    let grads = acc.grads();
    let grad_norm = optim::global_norm(&m, &grads);
    if !grad_norm.is_finite() {
        bail!("the gradient norm is {grad_norm} at step {}: training diverged", moments.steps);
    }
    let lr = opt.schedule.lr(moments.steps);
    let scale = optim::clip_factor(grad_norm, opt.max_grad_norm);
    let scene = m
        .probe
        .as_ref()
        .map(|_| (scene_loss, scene_right as f64 / (rows * SceneProbe::<B>::TARGETS_PER_IMAGE) as f64));
    let m = optim::step(m, grads, names, moments, opt.adamw, lr, scale)?;
    let tokens = micro.iter().map(Batch::tokens).sum();
    Ok((m, StepReport { loss, grad_norm, lr, targets, tokens, scene }))
}
