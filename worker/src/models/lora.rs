//! LoRA (Hu et al., 2021) on a linear projection: `W x + (α/r) B A x` with `W` frozen, `A`
//! Kaiming-uniform (as `nn.Linear` and PEFT initialise it) and `B` zero, so a fresh adapter
//! changes nothing. Stored PEFT-style next to the base weight: `….q_proj.lora_A.weight`
//! `[r, in]` and `….q_proj.lora_B.weight` `[out, r]`. [`Proj::merged`] folds the adapter into
//! `W` for serving.

use anyhow::Result;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{backend::Backend, Tensor};

use htc_shared::loader::Loader;

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
        self.lora_b.forward(self.lora_a.forward(x)).mul_scalar(self.scale)
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
}

impl<B: Backend> Proj<B> {
    pub fn load(vb: &Loader<B>, name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        Ok(Self { linear: vb.linear(name, d_in, d_out, bias)?, lora: None })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.lora {
            Some(l) => self.linear.forward(x.clone()) + l.forward(x),
            None => self.linear.forward(x),
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
                Self { linear, lora: None }
            }
        }
    }
}
