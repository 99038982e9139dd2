//! One optimizer step over a global batch split into micro-batches: the loss of each is its
//! answer-token NLL divided by the answer-token count of the whole global batch, so gradient
//! accumulation gives the same update as one big batch; then global-norm clipping and AdamW.

use anyhow::{bail, Result};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;

use htc_shared::params::ParamNames;

use super::objective::{nll_sum, Batch};
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
}

/// Takes one step on `micro` (the micro-batches of one global batch).
pub fn train_step<B: AutodiffBackend>(
    model: Htc<B>, micro: &[Batch<B>], names: &ParamNames, moments: &mut Moments<B::InnerBackend>,
    opt: &Optimizer,
) -> Result<(Htc<B>, StepReport)> {
    let targets: usize = micro.iter().map(Batch::targets).sum();
    if targets == 0 {
        bail!("the global batch has no answer tokens");
    }
    let mut acc = GradientsAccumulator::<Htc<B>>::new();
    let mut loss = 0f64;
    for b in micro {
        let l = nll_sum(&model, b)?.div_scalar(targets as f64);
        loss += l.clone().into_scalar().elem::<f64>();
        let grads = GradientsParams::from_grads(l.backward(), &model);
        acc.accumulate(&model, grads);
    }
    let grads = acc.grads();
    let grad_norm = optim::global_norm(&model, &grads);
    if !grad_norm.is_finite() {
        bail!("the gradient norm is {grad_norm} at step {}: training diverged", moments.steps);
    }
    let lr = opt.schedule.lr(moments.steps);
    let scale = optim::clip_factor(grad_norm, opt.max_grad_norm);
    let model = optim::step(model, grads, names, moments, opt.adamw, lr, scale)?;
    let tokens = micro.iter().map(Batch::tokens).sum();
    Ok((model, StepReport { loss, grad_norm, lr, targets, tokens }))
}
