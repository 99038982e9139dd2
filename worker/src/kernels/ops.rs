//! Tensor operations the models share, in burn's operations with the precision rules of the
//! reference (softmax and layer norm statistics in f32 for half-precision inputs), and the
//! residual stream that runs its norms on the host kernels where they apply.

use burn::nn::RmsNorm;
use burn::tensor::{backend::Backend, DType, Tensor};

use super::host;

/// Softmax along `dim`, computed in f32 when `x` is in half precision (as transformers does
/// for attention), and returned in `x`'s dtype.
pub fn softmax_f32<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    let dtype = x.dtype();
    burn::tensor::activation::softmax(x.cast(DType::F32), dim).cast(dtype)
}

/// `x * sigmoid(a * x)` (SiLU for `a = 1`, CLIP's quick GELU for `a = 1.702`), as
/// `x / (1 + exp(-a x))` outside autodiff: burn's sigmoid computes `exp(-ln(1 + exp(-x)))`, three
/// transcendental passes and six tensors, where this takes one `exp` and four tensors (SmolLM2
/// prefill spent about a tenth of its time there). In f32 only: half-precision inputs keep burn's
/// form (sigmoid in f32, the product in the input's dtype), whose answers the half-precision
/// tests pin; and under autodiff burn's form is kept too, as this one's gradient is NaN where
/// `exp(-a x)` overflows (a x < -88).
pub fn x_sigmoid<B: Backend, const D: usize>(x: Tensor<B, D>, a: f64) -> Tensor<B, D> {
    if B::ad_enabled(&x.device()) || x.dtype() != DType::F32 {
        let s = if a == 1.0 { x.clone() } else { x.clone().mul_scalar(a) };
        return x * burn::tensor::activation::sigmoid(s);
    }
    x.clone() / x.mul_scalar(-a).exp().add_scalar(1.0)
}

/// `x` with its rows (everything but the last dimension) copied into a buffer of their own
/// when it is a strided view of more than one row, unchanged otherwise. The elementwise
/// kernels of the CPU backend take a strided operand one index at a time, so a view read by
/// several elementwise passes is cheaper copied once (a reshape of a strided view copies it).
pub fn rows_owned<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let dims = x.dims();
    let last = dims[D - 1];
    let rows = x.shape().num_elements() / last.max(1);
    if rows <= 1 {
        return x;
    }
    x.reshape([rows, last]).reshape(dims)
}

/// `ln(x)` with the mean and variance computed in f32 when `x` is in half precision (as
/// PyTorch's layer norm kernels accumulate), the affine map in `x`'s dtype.
pub fn layer_norm_f32<B: Backend, const D: usize>(
    ln: &burn::nn::LayerNorm<B>, x: Tensor<B, D>, eps: f64,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    if dtype == DType::F32 {
        return ln.forward(x);
    }
    let x = x.cast(DType::F32);
    let centred = x.clone() - x.mean_dim(D - 1);
    let var = centred.clone().powi_scalar(2).mean_dim(D - 1);
    let y = (centred / (var + eps).sqrt()).cast(dtype) * ln.gamma.val().unsqueeze();
    match &ln.beta {
        Some(b) => y + b.val().unsqueeze(),
        None => y,
    }
}

/// The residual stream through a decoder's layers: a tensor, or its values on the host when
/// the fused kernels run the norms (see [`host`]).
pub enum Residual<B: Backend> {
    Tensor(Tensor<B, 3>),
    Host { x: Vec<f32>, dims: [usize; 3], device: B::Device },
}

impl<B: Backend> Residual<B> {
    pub fn new(x: Tensor<B, 3>, on_host: bool) -> Self {
        if !on_host {
            return Self::Tensor(x);
        }
        let (dims, device) = (x.dims(), x.device());
        Self::Host { x: host::values(x), dims, device }
    }

    /// The stream itself when it is a tensor (always under autodiff, where the fused host
    /// kernels do not run); `None` when its values live on the host.
    pub fn tensor(&self) -> Option<Tensor<B, 3>> {
        match self {
            Self::Tensor(x) => Some(x.clone()),
            Self::Host { .. } => None,
        }
    }

    /// Adds `delta` to the stream (when given) and returns the stream normed by `norm`.
    pub fn add_norm(&mut self, delta: Option<Tensor<B, 3>>, norm: &RmsNorm<B>) -> Tensor<B, 3> {
        match self {
            Self::Tensor(x) => {
                if let Some(d) = delta {
                    *x = x.clone() + d;
                }
                norm.forward(x.clone())
            }
            Self::Host { x, dims, device } => {
                let delta = delta.map(host::values);
                let y = host::add_rms_norm(x, delta.as_deref(), &host::Norm::of(norm));
                host::tensor(y, *dims, device)
            }
        }
    }
}
