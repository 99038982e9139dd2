//! LoRA (Hu et al., 2021) on a linear projection: `W x + (α/r) B A x` with `W` frozen, `A`
//! Kaiming-uniform (as `nn.Linear` and PEFT initialise it) and `B` zero, so a fresh adapter
//! changes nothing. Stored PEFT-style next to the base weight: `….q_proj.lora_A.weight`
//! `[r, in]` and `….q_proj.lora_B.weight` `[out, r]`. [`Proj::merged`] folds the adapter into
//! `W` for serving. Its few-row products (decoding steps) run split over threads
//! ([`crate::kernels::linear::split_linear`]).

use anyhow::Result;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{backend::Backend, Tensor};

use htc_shared::loader::Loader;

use crate::kernels::linear::{flat_linear, split_linear};

/// A LoRA adapter: `A: in → r`, `B: r → out`, scale `α / r`.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    pub lora_a: Linear<B>,
    pub lora_b: Linear<B>,
    #[module(skip)]
    pub scale: f64,
}

impl<B: Backend> Lora<B> {
    /// Reads `lora_A` / `lora_B` under `vb`, or makes a fresh adapter (B = 0) when `vb`
    /// initialises.
    pub fn load(vb: &Loader<B>, d_in: usize, d_out: usize, rank: usize, scale: f64) -> Result<Self> {
        let lora_a = vb.linear("lora_A", d_in, rank, false)?;
        let mut lora_b = vb.linear("lora_B", rank, d_out, false)?;
        if vb.is_init() {
            lora_b.weight = lora_b.weight.map(|w| {
                let z = w.zeros_like();
                if w.is_require_grad() {
                    z.require_grad()
                } else {
                    z
                }
            });
        }
        Ok(Self { lora_a, lora_b, scale })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        flat_linear(&self.lora_b, flat_linear(&self.lora_a, x)).mul_scalar(self.scale)
    }

    /// `(α/r) A B` in burn's `[in, out]` weight layout.
    pub fn delta(&self) -> Tensor<B, 2> {
        self.lora_a.weight.val().matmul(self.lora_b.weight.val()).mul_scalar(self.scale)
    }
}

/// A linear projection that may carry a LoRA adapter.
#[derive(Module, Debug)]
pub struct Proj<B: Backend> {
    pub linear: Linear<B>,
    pub lora: Option<Lora<B>>,
    /// Threads a few-row product is split over (see [`split_linear`]); 1 for one matmul.
    #[module(skip)]
    pub split: usize,
}

impl<B: Backend> Proj<B> {
    pub fn load(vb: &Loader<B>, name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        Ok(Self { linear: vb.linear(name, d_in, d_out, bias)?, lora: None, split: 1 })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.lora {
            Some(l) => flat_linear(&self.linear, x.clone()) + l.forward(x),
            None => split_linear(&self.linear, x, self.split),
        }
    }

    /// `[in, out]` of the projection.
    pub fn dims(&self) -> [usize; 2] {
        self.linear.weight.dims()
    }

    /// The projection with its adapter folded into the weight (same parameter id and key).
    pub fn merged(self) -> Self {
        match self.lora {
            None => self,
            Some(l) => {
                let delta = l.delta();
                let mut linear = self.linear;
                linear.weight = linear.weight.map(|w| w + delta);
                Self { linear, lora: None, split: self.split }
            }
        }
    }
}

/// The products of several projections of one input as one product: their `[in, out_i]`
/// weights side by side in one `[in, Σ out_i]` linear (biases likewise), for inference, where
/// one product reads the input once and is one dispatch over the threads instead of several.
/// Each projection's weight becomes a view of the joined one, so no second copy is held (the
/// projections stay usable, and keep their parameter ids). `None`, and nothing changed, when a
/// projection carries a LoRA adapter or only some have biases.
pub fn join_projections<B: Backend>(projs: &mut [&mut Proj<B>]) -> Option<Linear<B>> {
    if projs.iter().any(|p| p.lora.is_some()) {
        return None;
    }
    let biased = projs.iter().filter(|p| p.linear.bias.is_some()).count();
    if biased != 0 && biased != projs.len() {
        return None;
    }
    let weight = Tensor::cat(projs.iter().map(|p| p.linear.weight.val()).collect(), 1);
    let bias = (biased > 0).then(|| {
        Tensor::cat(projs.iter().filter_map(|p| p.linear.bias.as_ref().map(|b| b.val())).collect(), 0)
    });
    let [d_in, _] = weight.dims();
    let mut start = 0;
    for p in projs.iter_mut() {
        let [_, w] = p.dims();
        let view = weight.clone().slice([0..d_in, start..start + w]);
        p.linear.weight = p.linear.weight.clone().map(|_| view);
        if let (Some(b), Some(all)) = (p.linear.bias.take(), bias.as_ref()) {
            let view = all.clone().narrow(0, start, w);
            p.linear.bias = Some(b.map(|_| view));
        }
        start += w;
    }
    Some(Linear { weight: Param::from_tensor(weight), bias: bias.map(Param::from_tensor) })
}

/// `y`'s last dimension cut into consecutive parts of the given widths (views).
pub fn split_last<B: Backend, const D: usize>(y: Tensor<B, D>, widths: &[usize]) -> Vec<Tensor<B, D>> {
    let mut start = 0;
    widths
        .iter()
        .map(|&w| {
            let part = y.clone().narrow(D - 1, start, w);
            start += w;
            part
        })
        .collect()
}
