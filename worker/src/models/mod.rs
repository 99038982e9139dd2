//! Model definitions, one file each, generic over the burn backend: [`clip`], [`llama`],
//! [`llava`] and [`htc`] (the MGVQ encoder lives in `htc_shared::mgvq`, shared with the
//! browser; [`mgvq_decoder`] turns it into a VQ-VAE for training the tokenizer). Each model has a config (in `htc_shared::config`), a `load` that reads a checkpoint
//! through a [`htc_shared::loader::Loader`], and an `init` that builds it at random; both give
//! parameters ids derived from their checkpoint keys. Pure tensor code: no files, tokenizers,
//! sampling or network here; the only threads are those that share out one computation
//! (rayon's pool, and the [`team`] a CPU decoding step's split products run on).

pub mod clip;
pub mod host;
pub mod htc;
pub mod llama;
pub mod llava;
pub mod lora;
pub mod mgvq_decoder;
pub mod team;

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use wide::f32x8;

/// Softmax along `dim`, computed in f32 when `x` is in half precision (as transformers does
/// for attention), and returned in `x`'s dtype.
pub fn softmax_f32<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    let dtype = x.dtype();
    burn::tensor::activation::softmax(x.cast(DType::F32), dim).cast(dtype)
}

/// `softmax(scores * scale + mask)` over the last dimension of f32 `scores: [b, h, tq, s]`
/// on a CPU backend, with `mask: [1 or b, 1 or h, tq, s]` broadcast over the leading
/// dimensions. Written by hand (burn has no fused softmax, and burn-candle keeps its candle
/// tensors private, out of reach of candle's own fused kernel): the scores are read out once, each
/// row is scaled, masked, exponentiated and normalised while it sits in cache, and written back
/// once, where the backend's kernels make seven passes and five buffers (scale, mask, max,
/// subtract, exp, sum, divide). The same operations in the same order per element as those
/// kernels, eight lanes at a time ([`softmax_row`]); the result differs from theirs in the order
/// the row's sum is added up and in `exp`, wide's polynomial instead of libm's (within a few
/// units in the last place; exactly 0 below `exp(-87.3)`, where libm gives a denormal).
pub fn host_softmax<B: Backend>(
    scores: Tensor<B, 4>, scale: f32, mask: Option<Tensor<B, 4>>,
) -> Tensor<B, 4> {
    let [b, h, tq, s] = scores.dims();
    let device = scores.device();
    let mut x: Vec<f32> = scores.into_data().into_vec().expect("f32 scores");
    let mask = mask.map(|m| {
        let [mb, mh, mt, ms] = m.dims();
        assert!(
            (mb == 1 || mb == b) && (mh == 1 || mh == h) && mt == tq && ms == s,
            "mask {:?} does not broadcast over scores {:?}",
            [mb, mh, mt, ms],
            [b, h, tq, s]
        );
        let v: Vec<f32> = m.cast(DType::F32).into_data().into_vec().expect("f32 mask");
        (v, mb, mh)
    });
    for (r, row) in x.chunks_exact_mut(s).enumerate() {
        let (q, hb) = (r % tq, r / tq);
        let (head, batch) = (hb % h, hb / h);
        let mask_row = mask.as_ref().map(|(m, mb, mh)| {
            let mr = ((if *mb == 1 { 0 } else { batch }) * mh + if *mh == 1 { 0 } else { head }) * tq + q;
            &m[mr * s..(mr + 1) * s]
        });
        softmax_row(row, scale, mask_row);
    }
    Tensor::from_data(TensorData::new(x, [b, h, tq, s]), &device)
}

/// `row <- softmax(row * scale + mask)`, in lanes of eight: wide's `f32x8` (the std library's
/// `exp` is a scalar libm call, about a third of this function's time before, and its max and
/// sum reductions are left scalar by the compiler, which may not reorder float additions). The
/// row's tail is padded with `-inf`, which the max ignores and `exp` turns into 0.
fn softmax_row(row: &mut [f32], scale: f32, mask: Option<&[f32]>) {
    let scale8 = f32x8::splat(scale);
    let mut max8 = f32x8::splat(f32::NEG_INFINITY);
    lanes(row, mask, f32::NEG_INFINITY, |v, m| {
        let v = match m {
            Some(m) => v * scale8 + m,
            None => v * scale8,
        };
        max8 = max8.max(v);
        v
    });
    let max8 = f32x8::splat(max8.to_array().into_iter().fold(f32::NEG_INFINITY, f32::max));
    let mut sum8 = f32x8::ZERO;
    lanes(row, None, f32::NEG_INFINITY, |v, _| {
        let e = (v - max8).exp();
        sum8 += e;
        e
    });
    let sum8 = f32x8::splat(sum8.reduce_add());
    lanes(row, None, 0.0, |v, _| v / sum8);
}

/// `row[i] <- f(row[i], mask[i])` eight lanes at a time, the last lanes padded with `pad` (and
/// a mask of 0) and their results dropped.
fn lanes(row: &mut [f32], mask: Option<&[f32]>, pad: f32, mut f: impl FnMut(f32x8, Option<f32x8>) -> f32x8) {
    const L: usize = 8;
    let full = row.len() / L * L;
    for (i, c) in row[..full].chunks_exact_mut(L).enumerate() {
        let v = f32x8::new(<[f32; L]>::try_from(&*c).expect("eight lanes"));
        let m = mask.map(|m| f32x8::new(<[f32; L]>::try_from(&m[i * L..(i + 1) * L]).expect("eight lanes")));
        c.copy_from_slice(&f(v, m).to_array());
    }
    let rest = row.len() - full;
    if rest > 0 {
        let mut v = [pad; L];
        v[..rest].copy_from_slice(&row[full..]);
        let m = mask.map(|m| {
            let mut a = [0.0; L];
            a[..rest].copy_from_slice(&m[full..]);
            f32x8::new(a)
        });
        row[full..].copy_from_slice(&f(f32x8::new(v), m).to_array()[..rest]);
    }
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
