//! Rotary position embedding (rotate-half, as transformers' LLaMA): the tables at explicit
//! positions and their application to query and key heads.

use burn::tensor::{backend::Backend, Tensor, TensorData};

use super::host;

/// Rotary position tables, computed as transformers does (f32 `inv_freq`, `cat(freqs, freqs)`).
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        Self { inv_freq }
    }

    /// `(cos, sin)`, each `[positions.len(), head_dim]`.
    pub fn tables<B: Backend>(
        &self, positions: &[usize], device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let (cos, sin) = self.host_tables(positions);
        let shape = [positions.len(), self.inv_freq.len() * 2];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }

    /// The tables of [`Self::tables`] as row-major values.
    pub fn host_tables(&self, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let hd = self.inv_freq.len() * 2;
        let mut cos = Vec::with_capacity(positions.len() * hd);
        let mut sin = Vec::with_capacity(positions.len() * hd);
        for &p in positions {
            for _ in 0..2 {
                for &f in &self.inv_freq {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        (cos, sin)
    }

    /// The tables for one pass over `positions`, as tensors shaped by `shape` (broadcast over
    /// the heads) and as values for the fused kernels.
    pub fn at<B: Backend>(&self, positions: &[usize], shape: [usize; 4], device: &B::Device) -> RopeAt<B> {
        let (cos, sin) = self.host_tables(positions);
        let t = |v: &Vec<f32>| Tensor::from_data(TensorData::new(v.clone(), shape), device);
        RopeAt { cos: t(&cos), sin: t(&sin), host: (cos, sin) }
    }
}

/// RoPE tables for one pass (see [`Rope::at`]).
pub struct RopeAt<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    host: (Vec<f32>, Vec<f32>),
}

impl<B: Backend> RopeAt<B> {
    /// The tables as values, for [`host::qkv_rope`].
    pub fn rows(&self) -> host::RopeRows<'_> {
        host::RopeRows { cos: &self.host.0, sin: &self.host.1 }
    }

    /// `x * cos + rotate_half(x) * sin` for `x: [b, heads, t, hd]`.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        apply_rope(x, &self.cos, &self.sin)
    }
}

/// [`RopeAt::apply`].
/// `cos`/`sin` broadcast over `x`: `[1, 1, t, hd]`, or `[b, 1, t, hd]` for per-row positions.
fn apply_rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, t, hd] = x.dims();
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..hd / 2]);
    let x2 = x.clone().slice([0..b, 0..h, 0..t, hd / 2..hd]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}
