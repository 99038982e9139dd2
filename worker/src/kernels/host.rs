//! Fused kernels for the elementwise work between the products in f32 CPU inference (the
//! decoder tuned by `Llama::with_row_split`, the vision tower by
//! `ClipVision::with_host_kernels`): the attention's scale, mask and softmax
//! ([`host_softmax`]); for the decoder, RMS norm with the residual addition before it, RoPE
//! with the heads cut out of the joined query/key/value product, and the SwiGLU gate; for the
//! vision tower, layer norm and quick GELU. Each reads its input once and writes its output
//! once, rows on rayon's pool, where burn's operations on the CPU backend make one pass and
//! one buffer per operation on one core (RMS norm five, RoPE six per tensor after a copy out of
//! the joined product, SwiGLU seven), while the other core waits for the next product. Written
//! by hand because burn has no fused kernels for these and burn-candle keeps its candle
//! tensors, and so candle's own fused kernels, out of reach. The operations per element are
//! those of the burn code they replace, in the same order, except where noted: a row's sums
//! are added up eight lanes at a time, and `exp` is wide's polynomial (within a few units in
//! the last place of libm's).

use burn::nn::{LayerNorm, RmsNorm};
use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use rayon::prelude::*;
use wide::f32x8;

/// Rows from which a kernel runs on rayon's pool (below, one decoding step's few rows cost
/// less than the pool's dispatch).
const PAR_ROWS: usize = 8;

/// Whether the fused kernels can stand in for burn's operations on `x`: f32 and no autodiff
/// (the caller knows the backend is the CPU one).
pub fn applies<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    x.dtype() == DType::F32 && !B::ad_enabled(&x.device())
}

/// The tensor's values, row-major (a copy; a strided view is gathered).
pub fn values<B: Backend, const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
    x.into_data().into_vec().expect("an f32 tensor")
}

/// A tensor of `dims` holding `v`.
pub fn tensor<B: Backend, const D: usize>(v: Vec<f32>, dims: [usize; D], device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v, dims), device)
}

/// `f(row index, row)` for each row of `width` values of `out`, on rayon's pool from
/// [`PAR_ROWS`] rows on.
fn each_row(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if out.len() / width.max(1) >= PAR_ROWS {
        out.par_chunks_mut(width).enumerate().for_each(|(r, row)| f(r, row));
    } else {
        out.chunks_mut(width).enumerate().for_each(|(r, row)| f(r, row));
    }
}

/// The norm's weight and epsilon, on the host.
pub struct Norm {
    gamma: Vec<f32>,
    eps: f32,
}

impl Norm {
    pub fn of<B: Backend>(norm: &RmsNorm<B>) -> Self {
        Self { gamma: values(norm.gamma.val()), eps: norm.epsilon as f32 }
    }
}

/// `stream += delta` (when given), then `stream / sqrt(mean(stream²) + eps) * gamma` per row
/// of `gamma.len()` values: burn's `RmsNorm` on the updated stream.
pub fn add_rms_norm(stream: &mut [f32], delta: Option<&[f32]>, norm: &Norm) -> Vec<f32> {
    let d = norm.gamma.len();
    if let Some(delta) = delta {
        assert_eq!(delta.len(), stream.len(), "residual and delta differ in size");
        let add = |(s, x): (&mut [f32], &[f32])| s.iter_mut().zip(x).for_each(|(s, x)| *s += x);
        if stream.len() / d >= PAR_ROWS {
            stream.par_chunks_mut(d).zip(delta.par_chunks(d)).for_each(add);
        } else {
            stream.chunks_mut(d).zip(delta.chunks(d)).for_each(add);
        }
    }
    let mut out = stream.to_vec();
    each_row(&mut out, d, |_, row| {
        let rms = (lane_sum(row, |v| v * v) / d as f32 + norm.eps).sqrt();
        for (v, g) in row.iter_mut().zip(&norm.gamma) {
            *v = *v / rms * g;
        }
    });
    out
}

/// RoPE tables on the host: per position, `cos` and `sin` of `head_dim` values (the layout of
/// `Rope::tables`).
pub struct RopeRows<'a> {
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

/// The queries `[b, heads, t, hd]`, keys and values `[b, kv_heads, t, hd]` of a joined
/// projection's output `y: [b, t, (heads + 2 kv_heads) hd]` (each position's query heads, then
/// its key heads, then its value heads), RoPE applied to queries and keys as `Rope`'s
/// `x cos + rotate_half(x) sin` does. Position `(i, j)` takes row `j` of the tables when they
/// hold `t` rows (one sequence's positions), else row `i t + j` (one per row of a batch).
pub fn qkv_rope<B: Backend>(
    y: Tensor<B, 3>, heads: usize, kv_heads: usize, hd: usize, rope: &RopeRows<'_>,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let [b, t, w] = y.dims();
    assert_eq!(w, (heads + 2 * kv_heads) * hd, "joined projection width");
    let device = y.device();
    let y = values(y);
    let table_rows = rope.cos.len() / hd;
    let half = hd / 2;
    // Output `[b, n, t, hd]` of the `n` heads from `first` on, rotated or not.
    let part = |first: usize, n: usize, rotate: bool| {
        let mut out = vec![0.0f32; b * n * t * hd];
        each_row(&mut out, hd, |r, o| {
            let (j, head, i) = (r % t, (r / t) % n, r / (t * n));
            let src = &y[(i * t + j) * w + (first + head) * hd..][..hd];
            if !rotate {
                o.copy_from_slice(src);
                return;
            }
            let tr = if table_rows == t { j } else { i * t + j };
            let (c, s) = (&rope.cos[tr * hd..][..hd], &rope.sin[tr * hd..][..hd]);
            for k in 0..half {
                o[k] = src[k] * c[k] + -src[k + half] * s[k];
                o[k + half] = src[k + half] * c[k + half] + src[k] * s[k + half];
            }
        });
        tensor::<B, 4>(out, [b, n, t, hd], &device)
    };
    (part(0, heads, true), part(heads, kv_heads, true), part(heads + kv_heads, kv_heads, false))
}

/// burn's `LayerNorm` over the last dimension of `x`: `(x - mean) / sqrt(var + eps) * gamma +
/// beta`, the mean and the (biased) variance per row, in f32.
pub fn layer_norm<B: Backend, const D: usize>(x: Tensor<B, D>, ln: &LayerNorm<B>, eps: f64) -> Tensor<B, D> {
    let (dims, device) = (x.dims(), x.device());
    let gamma = values(ln.gamma.val());
    let beta = ln.beta.as_ref().map(|b| values(b.val()));
    let d = gamma.len();
    let eps = eps as f32;
    let mut out = values(x);
    each_row(&mut out, d, |_, row| {
        let mean = lane_sum(row, |v| v) / d as f32;
        row.iter_mut().for_each(|v| *v -= mean);
        let var = lane_sum(row, |v| v * v) / d as f32;
        let denom = (var + eps).sqrt();
        for (i, v) in row.iter_mut().enumerate() {
            *v = *v / denom * gamma[i];
            if let Some(b) = &beta {
                *v += b[i];
            }
        }
    });
    tensor(out, dims, &device)
}

/// `Σ f(v)` over `row`, eight lanes at a time (the tail one by one).
fn lane_sum(row: &[f32], f: impl Fn(f32x8) -> f32x8) -> f32 {
    let full = row.len() / 8 * 8;
    let mut acc = f32x8::ZERO;
    for c in row[..full].chunks_exact(8) {
        acc += f(f32x8::new(c.try_into().expect("eight lanes")));
    }
    let tail: f32 = row[full..].iter().map(|&v| f(f32x8::splat(v)).to_array()[0]).sum();
    acc.reduce_add() + tail
}

/// `x / (1 + exp(-a x))` ([`super::x_sigmoid`]'s form; CLIP's quick GELU for `a = 1.702`).
pub fn x_sigmoid<B: Backend, const D: usize>(x: Tensor<B, D>, a: f32) -> Tensor<B, D> {
    let (dims, device) = (x.dims(), x.device());
    let mut out = values(x);
    let width = dims[D - 1];
    each_row(&mut out, width, |_, row| {
        let full = row.len() / 8 * 8;
        let a8 = f32x8::splat(-a);
        for c in row[..full].chunks_exact_mut(8) {
            let v = f32x8::new((&*c).try_into().expect("eight lanes"));
            c.copy_from_slice(&(v / ((v * a8).exp() + 1.0)).to_array());
        }
        for v in row[full..].iter_mut() {
            *v = *v / ((*v * -a).exp() + 1.0);
        }
    });
    tensor(out, dims, &device)
}

/// `silu(gate) * up` of a joined gate/up product `y: [b, t, 2 i]` (each row's gate, then its
/// up), as `x / (1 + exp(-x)) * up` ([`super::x_sigmoid`]'s form): `[b, t, i]`.
pub fn swiglu<B: Backend>(y: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, t, w] = y.dims();
    let i = w / 2;
    let device = y.device();
    let y = values(y);
    let mut out = vec![0.0f32; b * t * i];
    each_row(&mut out, i, |r, o| {
        let (gate, up) = y[r * w..(r + 1) * w].split_at(i);
        let full = i / 8 * 8;
        for ((o, g), u) in o[..full].chunks_exact_mut(8).zip(gate.chunks_exact(8)).zip(up.chunks_exact(8)) {
            let g = f32x8::new(g.try_into().expect("eight lanes"));
            let u = f32x8::new(u.try_into().expect("eight lanes"));
            o.copy_from_slice(&(g / ((-g).exp() + 1.0) * u).to_array());
        }
        for k in full..i {
            o[k] = gate[k] / ((-gate[k]).exp() + 1.0) * up[k];
        }
    });
    tensor::<B, 3>(out, [b, t, i], &device)
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
    each_row(&mut x, s, |r, row| {
        let (q, hb) = (r % tq, r / tq);
        let (head, batch) = (hb % h, hb / h);
        let mask_row = mask.as_ref().map(|(m, mb, mh)| {
            let mr = ((if *mb == 1 { 0 } else { batch }) * mh + if *mh == 1 { 0 } else { head }) * tq + q;
            &m[mr * s..(mr + 1) * s]
        });
        softmax_row(row, scale, mask_row);
    });
    Tensor::from_data(TensorData::new(x, [b, h, tq, s]), &device)
}

/// `row <- softmax(row * scale + mask)`, in lanes of eight: wide's `f32x8` (the std library's
/// `exp` is a scalar libm call per element, a large share of a scalar softmax's time, and the
/// compiler keeps max and sum reductions scalar, since it may not reorder float additions; see
/// docs/performance.md#llm-on-the-cpu). The row's tail is padded with `-inf`, which the max
/// ignores and `exp` turns into 0.
pub(crate) fn softmax_row(row: &mut [f32], scale: f32, mask: Option<&[f32]>) {
    let (_, sum) = exp_row(row, scale, mask);
    let sum8 = f32x8::splat(sum);
    lanes(row, None, 0.0, |v, _| v / sum8);
}

/// The unnormalised half of [`softmax_row`]: `row <- exp(row * scale + mask - max)`, returning
/// `max` (of `row * scale + mask`; `-inf` when every value is) and the sum of the new `row`.
/// A row cut into pieces can be normalised by joining the pieces' `(max, sum)` pairs.
pub(crate) fn exp_row(row: &mut [f32], scale: f32, mask: Option<&[f32]>) -> (f32, f32) {
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
    let max = max8.to_array().into_iter().fold(f32::NEG_INFINITY, f32::max);
    let max8 = f32x8::splat(max);
    let mut sum8 = f32x8::ZERO;
    lanes(row, None, f32::NEG_INFINITY, |v, _| {
        let e = (v - max8).exp();
        sum8 += e;
        e
    });
    (max, sum8.reduce_add())
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
