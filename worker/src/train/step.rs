//! One optimizer step over a global batch split into micro-batches: the loss of each is its
//! answer-token NLL divided by the answer-token count of the whole global batch, so gradient
//! accumulation gives the same update as one big batch (the scene probe's loss, when there is
//! one, is likewise divided by the global batch's row count); then global-norm clipping and
//! AdamW.

use anyhow::{bail, Result};
use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ElementConversion;
use burn::tensor::Tensor;

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
    /// With a KL weight: the KL term's mean per image, before the update.
    pub kl: Option<f64>,
}

/// The model and, during a run with `--scene-loss`, the training-only probe that learns with
/// it.
#[derive(Module, Debug)]
pub struct Probed<B: Backend> {
    pub model: Htc<B>,
    pub probe: Option<SceneProbe<B>>,
}

/// Takes one step on `micro` (the micro-batches of one global batch), up to `threads` of them
/// at once.
pub fn train_step<B: AutodiffBackend>(
    model: Htc<B>, micro: &[Batch<B>], names: &ParamNames, moments: &mut Moments<B::InnerBackend>,
    opt: &Optimizer, threads: usize,
) -> Result<(Htc<B>, StepReport)> {
    let (m, r) = train_step_probed(
        Probed { model, probe: None },
        micro,
        names,
        moments,
        opt,
        ProbeWeight { weight: 0.0, layer: 0, kl: 0.0 },
        threads,
    )?;
    Ok((m.model, r))
}

/// How the scene probe joins the loss (its weight and the LLM layer whose input it reads), and
/// the weight β of the KL term on `<voco>` ([`super::objective::kl_sum`]; 0: none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeWeight {
    pub weight: f64,
    pub layer: usize,
    pub kl: f64,
}

/// Gives every float parameter a new autodiff leaf over the same value, keeping its id and
/// whether it requires a gradient.
///
/// Every micro-batch is differentiated through fresh leaves, on one thread or several, because
/// burn-autodiff 0.21 loses gradients when graphs are built while another thread runs a
/// backward pass: after each backward pass it visits every graph of the process, and in each
/// that holds no node a tensor still references, it frees the nodes whose parents lie outside
/// that graph. A graph built over parameters already differentiated once (their leaves were
/// consumed by that pass) holds no other node, so in the instant an operation has consumed its
/// input and not yet registered its output, that input's step can be freed, and the
/// parameters behind it get no gradient. A fresh leaf is registered in the graph it starts and
/// stays referenced by the model until the pass, which keeps the graph from looking unused. `worker/tests/train_parity.rs` (`concurrent_training_steps_lose_no_gradient`)
/// catches the loss.
struct FreshLeaves;

impl<B: AutodiffBackend> ModuleMapper<B> for FreshLeaves {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.map(|t| t.detach())
    }
}

/// What one micro-batch gives: its share of the loss, the probe's loss and right answers, and
/// its gradients.
struct MicroGrads {
    loss: f64,
    scene: Option<(f64, usize)>,
    kl: Option<f64>,
    grads: GradientsParams,
}

/// Differentiates one micro-batch's loss (its NLL over `targets`, plus the probe's loss over
/// `rows`, weighted) with respect to `m`'s parameters.
fn micro_grads<B: AutodiffBackend>(
    m: &Probed<B>, b: &Batch<B>, targets: usize, rows: usize, probe: ProbeWeight,
) -> Result<MicroGrads> {
    let parts = losses(&m.model, m.probe.as_ref().map(|p| (p, probe.layer)), probe.kl > 0.0, b)?;
    let mut l = parts.nll_sum.div_scalar(targets.max(1) as f64);
    let loss = l.clone().into_scalar().elem::<f64>();
    let mut scene = None;
    if let Some((s, right)) = parts.scene {
        let s = s.div_scalar(rows as f64);
        scene = Some((s.clone().into_scalar().elem::<f64>(), right));
        l = l + s.mul_scalar(probe.weight);
    }
    let mut kl = None;
    if let Some(k) = parts.kl {
        let k = k.div_scalar(rows as f64);
        kl = Some(k.clone().into_scalar().elem::<f64>());
        l = l + k.mul_scalar(probe.kl);
    }
    let grads = GradientsParams::from_grads(l.backward(), m);
    Ok(MicroGrads { loss, scene, kl, grads })
}

/// [`train_step`] with the scene probe's loss, weighted, added to the answer-token loss (when
/// `m` has a probe), and the micro-batches spread over up to `threads` threads.
pub fn train_step_probed<B: AutodiffBackend>(
    m: Probed<B>, micro: &[Batch<B>], names: &ParamNames, moments: &mut Moments<B::InnerBackend>,
    opt: &Optimizer, probe: ProbeWeight, threads: usize,
) -> Result<(Probed<B>, StepReport)> {
    let targets: usize = micro.iter().map(Batch::targets).sum();
    if targets == 0 && m.probe.is_none() {
        bail!("the global batch has no answer tokens");
    }
    let rows: usize = micro.iter().map(|b| b.ids.len()).sum();
    // Each micro-batch's gradients join the sum as soon as they exist, so no more than
    // `threads` of them are held at once.
    let mut acc = GradientsAccumulator::<Probed<B>>::new();
    let (mut loss, mut scene_loss, mut scene_right) = (0f64, 0f64, 0usize);
    let mut kl = (probe.kl > 0.0).then_some(0f64);
    let mut add = |o: MicroGrads| {
        loss += o.loss;
        if let (Some(total), Some(k)) = (kl.as_mut(), o.kl) {
            *total += k;
        }
        if let Some((l, right)) = o.scene {
            scene_loss += l;
            scene_right += right;
        }
        acc.accumulate(&m, o.grads);
    };
    // Each micro-batch gets fresh autodiff leaves over the same parameter values and ids (see
    // `FreshLeaves`), so the graphs stay apart and their gradients add up by parameter id.
    if threads <= 1 || micro.len() <= 1 {
        for b in micro {
            add(micro_grads(&m.clone().map(&mut FreshLeaves), b, targets, rows, probe)?);
        }
    } else {
        for wave in micro.chunks(threads) {
            let done: Vec<Result<MicroGrads>> = std::thread::scope(|s| {
                let handles: Vec<_> = wave
                    .iter()
                    .map(|b| {
                        let local = m.clone().map(&mut FreshLeaves);
                        s.spawn(move || micro_grads(&local, b, targets, rows, probe))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a training thread panicked"))))
                    .collect()
            });
            for d in done {
                add(d?);
            }
        }
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
    Ok((m, StepReport { loss, grad_norm, lr, targets, tokens, scene, kl }))
}
