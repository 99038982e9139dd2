//! The optimizer step, written out because burn 0.21's own does not do what a faithful
//! reproduction needs: AdamW exactly as `torch.optim.AdamW` (decoupled decay, bias correction),
//! two parameter groups (no decay on tensors with fewer than two dimensions and on embeddings),
//! clipping by the global norm over all parameters (`clip_grad_norm_`; burn clips each tensor
//! alone), moments keyed by checkpoint key (so a resumed run keeps them), and the HF
//! warmup-then-cosine schedule (burn's cosine restarts and has no warmup).

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

use htc_shared::params::ParamNames;

/// AdamW's settings (torch's defaults differ from the paper's: set them all).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// Whether a tensor stored under `key` with `ndims` dimensions takes no weight decay: biases
/// and norm weights (one dimension) and embeddings (`embed_tokens`, `<voco>`, CLIP's
/// position, class and patch embeddings).
pub fn no_decay(key: &str, ndims: usize) -> bool {
    ndims < 2 || key.contains("embed")
}

/// `lr(step)` equal to transformers' `get_cosine_schedule_with_warmup` (half a cycle): 0 at
/// step 0 when there is warmup, linear up to `base` at `warmup`, cosine down to 0 at `total`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosine {
    pub base: f64,
    pub warmup: usize,
    pub total: usize,
}

impl WarmupCosine {
    /// The multiplier of `base` at `step` (0-based: the step about to be taken).
    pub fn factor(&self, step: usize) -> f64 {
        if step < self.warmup {
            return step as f64 / self.warmup.max(1) as f64;
        }
        let progress = (step - self.warmup) as f64 / (self.total.saturating_sub(self.warmup)).max(1) as f64;
        (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
    }

    pub fn lr(&self, step: usize) -> f64 {
        self.base * self.factor(step)
    }
}

/// AdamW's moments `(m, v)` of each parameter, by checkpoint key, flattened, and the number
/// of steps taken.
#[derive(Debug, Clone)]
pub struct Moments<B: Backend> {
    pub steps: usize,
    pub by_key: HashMap<String, (Tensor<B, 1>, Tensor<B, 1>)>,
}

impl<B: Backend> Default for Moments<B> {
    fn default() -> Self {
        Self { steps: 0, by_key: HashMap::new() }
    }
}

struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s = g.powi_scalar(2).sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

/// The global L2 norm of all gradients of `model` (as `clip_grad_norm_` computes it).
pub fn global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M, grads: &GradientsParams) -> f64 {
    let mut v = SquaredNorm::<B> { grads, sum: None };
    model.visit(&mut v);
    v.sum.map(|s| s.into_scalar().elem::<f64>().sqrt()).unwrap_or(0.0)
}

/// `clip_grad_norm_`'s factor: `max / (norm + 1e-6)`, at most 1.
pub fn clip_factor(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max) => (max / (norm + 1e-6)).min(1.0),
        None => 1.0,
    }
}

struct Step<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    names: &'a ParamNames,
    moments: &'a mut Moments<B::InnerBackend>,
    cfg: AdamW,
    lr: f64,
    scale: f64,
    t: i32,
    missing: Vec<ParamId>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Step<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(g) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let Some(name) = self.names.get(&id) else {
            self.missing.push(id);
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let shape = tensor.dims();
        let c = self.cfg;
        let g = if self.scale == 1.0 { g } else { g.mul_scalar(self.scale) };
        let mut p = tensor.inner();
        if !no_decay(&name.key, D) && c.weight_decay != 0.0 {
            p = p.mul_scalar(1.0 - self.lr * c.weight_decay);
        }
        let (m, v) = match self.moments.by_key.remove(&name.key) {
            Some((m, v)) => (m.reshape(shape), v.reshape(shape)),
            None => (g.zeros_like(), g.zeros_like()),
        };
        // torch: exp_avg.lerp_(grad, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)
        let m = m.clone() + (g.clone() - m).mul_scalar(1.0 - c.beta1);
        let v = v.mul_scalar(c.beta2) + g.clone().mul(g).mul_scalar(1.0 - c.beta2);
        let bc1 = 1.0 - c.beta1.powi(self.t);
        let bc2_sqrt = (1.0 - c.beta2.powi(self.t)).sqrt();
        let denom = v.clone().sqrt().div_scalar(bc2_sqrt).add_scalar(c.eps);
        let p = p - (m.clone() / denom).mul_scalar(self.lr / bc1);
        let n: usize = shape.iter().product();
        self.moments.by_key.insert(name.key.clone(), (m.reshape([n]), v.reshape([n])));
        let mut t = Tensor::from_inner(p);
        if require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// One AdamW step at learning rate `lr` on the gradients in `grads`, multiplied by `scale`
/// (the clipping factor). Parameters without a gradient are left as they are.
pub fn step<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: M, mut grads: GradientsParams, names: &ParamNames, moments: &mut Moments<B::InnerBackend>,
    cfg: AdamW, lr: f64, scale: f64,
) -> anyhow::Result<M> {
    moments.steps += 1;
    let t = i32::try_from(moments.steps).map_err(|_| anyhow::anyhow!("too many steps"))?;
    let mut s = Step::<B> { grads: &mut grads, names, moments, cfg, lr, scale, t, missing: Vec::new() };
    let model = model.map(&mut s);
    if !s.missing.is_empty() {
        anyhow::bail!("{} trained parameters have no checkpoint name", s.missing.len());
    }
    Ok(model)
}
