//! LLaMA decoder (`LlamaForCausalLM`): RMSNorm, rotate-half RoPE at explicit positions,
//! grouped-query attention with an arbitrary additive `(query, key)` mask, SwiGLU MLP and a
//! per-layer KV cache for decoding. Pure model code: no tokenizer, sampling or I/O.

use anyhow::Result;
use burn::module::Module;
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};
use rayon::prelude::*;

pub use htc_shared::config::LlamaConfig as Config;

use htc_shared::config::LoraConfig;
use htc_shared::loader::Loader;
use htc_shared::params::ParamNames;

use super::host;
use super::kv_host::{HostKv, KvDtype};
use super::lora::{join_projections, split_last, split_linear, Lora, Proj};

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
    fn at<B: Backend>(&self, positions: &[usize], shape: [usize; 4], device: &B::Device) -> RopeAt<B> {
        let (cos, sin) = self.host_tables(positions);
        let t = |v: &Vec<f32>| Tensor::from_data(TensorData::new(v.clone(), shape), device);
        RopeAt { cos: t(&cos), sin: t(&sin), host: (cos, sin) }
    }
}

/// RoPE tables for one pass (see [`Rope::at`]).
struct RopeAt<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    host: (Vec<f32>, Vec<f32>),
}

impl<B: Backend> RopeAt<B> {
    fn rows(&self) -> host::RopeRows<'_> {
        host::RopeRows { cos: &self.host.0, sin: &self.host.1 }
    }
}

/// The residual stream through the layers: a tensor, or its values on the host when the fused
/// kernels run the norms (see [`host`]).
enum Stream<B: Backend> {
    Tensor(Tensor<B, 3>),
    Host { x: Vec<f32>, dims: [usize; 3], device: B::Device },
}

impl<B: Backend> Stream<B> {
    fn new(x: Tensor<B, 3>, on_host: bool) -> Self {
        if !on_host {
            return Self::Tensor(x);
        }
        let (dims, device) = (x.dims(), x.device());
        Self::Host { x: host::values(x), dims, device }
    }

    /// Adds `delta` to the stream (when given) and returns the stream normed by `norm`.
    fn add_norm(&mut self, delta: Option<Tensor<B, 3>>, norm: &RmsNorm<B>) -> Tensor<B, 3> {
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

/// `x * cos + rotate_half(x) * sin` for `x: [b, heads, t, hd]`.
/// `cos`/`sin` broadcast over `x`: `[1, 1, t, hd]`, or `[b, 1, t, hd]` for per-row positions.
fn apply_rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, t, hd] = x.dims();
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..hd / 2]);
    let x2 = x.clone().slice([0..b, 0..h, 0..t, hd / 2..hd]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// Attention scores per block of query rows in a prefill on a CPU backend (1 MB of f32): a
/// block's scores stay in cache from the product with the keys to the one with the values.
const PREFILL_BLOCK_SCORES: usize = 1 << 18;

/// Query rows per key/value head up to which attention scores are computed as `K qᵀ`.
const DECODE_ROWS: usize = 16;

/// Keys and values a decoding step appends go to a per-layer tail, folded into the rest of the
/// cache once it holds this many positions: appending to the whole cache would copy all of it
/// at every step (the tensors are immutable), so a step would grow with the context.
const TAIL_ROWS: usize = 256;

/// One layer's cached keys and values.
type Kv<B> = (Tensor<B, 4>, Tensor<B, 4>);

/// Cached positions from which a decoding step's attention is split over threads (measured:
/// SmolLM2 gains 1% at 128 positions, 7% at 512, 31% at 2,000; a model with a few cached
/// positions loses to the dispatch).
const ATTENTION_SPLIT_MIN: usize = 256;

/// `first` then `then` along the positions (a copy of both).
fn joined<B: Backend>(first: Kv<B>, then: Kv<B>) -> Kv<B> {
    (Tensor::cat(vec![first.0, then.0], 2), Tensor::cat(vec![first.1, then.1], 2))
}

/// Per-layer keys and values (before the GQA head repeat), `[b, kv_heads, seq, hd]`: the
/// positions in `layers`, then those in the layer's tail (the latest decoding steps, see
/// [`TAIL_ROWS`]; [`KvCache::seal`] folds them in); or, once f32 CPU inference decodes, all of
/// them on the host, in `hosts` (see [`super::kv_host`]; `seal` brings them back).
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    tails: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    hosts: Vec<Option<HostKv>>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![None; num_layers], tails: vec![None; num_layers], hosts: vec![None; num_layers] }
    }

    /// Number of cached key positions.
    pub fn seq_len(&self) -> usize {
        let len = |l: Option<&Option<(Tensor<B, 4>, Tensor<B, 4>)>>| {
            l.and_then(|l| l.as_ref()).map(|(k, _)| k.dims()[2]).unwrap_or(0)
        };
        let host = self.hosts.first().and_then(|h| h.as_ref()).map_or(0, HostKv::len);
        len(self.layers.first()) + len(self.tails.first()) + host
    }

    /// Whether the first layer's positions are held on the host (f32 CPU inference decoding).
    pub fn on_host(&self) -> bool {
        self.hosts.first().is_some_and(|h| h.is_some())
    }

    /// Folds every layer's tail into `layers`, and brings positions held on the host back as
    /// tensors, so that `layers` holds all cached positions.
    pub fn seal(&mut self) {
        for (l, h) in self.layers.iter_mut().zip(self.hosts.iter_mut()) {
            if let Some(host) = h.take() {
                // Only CPU backends hold caches on the host: their one device.
                *l = Some(host_tensors(&host, &Default::default()));
            }
        }
        for (l, t) in self.layers.iter_mut().zip(self.tails.iter_mut()) {
            if let Some(tail) = t.take() {
                *l = Some(match l.take() {
                    Some(kv) => joined(kv, tail),
                    None => tail,
                });
            }
        }
    }
}

/// A host cache's keys and values as tensors `[1, kv_heads, len, hd]`.
fn host_tensors<B: Backend>(h: &HostKv, device: &B::Device) -> Kv<B> {
    let (k, v) = h.to_f32();
    let dims = [1, h.kv_heads(), h.len(), h.head_dim()];
    (host::tensor(k, dims, device), host::tensor(v, dims, device))
}

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    q_proj: Proj<B>,
    k_proj: Proj<B>,
    v_proj: Proj<B>,
    o_proj: Proj<B>,
    /// `q_proj`, `k_proj` and `v_proj` as one product (inference, see [`Llama::with_row_split`];
    /// their weights are views of its weight); `None`: three products.
    #[module(skip)]
    qkv: Option<Linear<B>>,
    /// How f32 CPU inference stores the cache it decodes on (see [`super::kv_host`]).
    #[module(skip)]
    kv_dtype: KvDtype,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl<B: Backend> Attention<B> {
    fn load(vb: &Loader<B>, c: &Config) -> Result<Self> {
        let (d, hd) = (c.hidden_size, c.head_dim);
        let bias = c.attention_bias;
        Ok(Self {
            q_proj: Proj::load(vb, "q_proj", d, c.num_attention_heads * hd, bias)?,
            k_proj: Proj::load(vb, "k_proj", d, c.num_key_value_heads * hd, bias)?,
            v_proj: Proj::load(vb, "v_proj", d, c.num_key_value_heads * hd, bias)?,
            o_proj: Proj::load(vb, "o_proj", c.num_attention_heads * hd, d, bias)?,
            qkv: None,
            kv_dtype: KvDtype::F32,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: hd,
        })
    }

    fn repeat_kv(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let rep = self.heads / self.kv_heads;
        if rep == 1 {
            return x;
        }
        let [b, kvh, s, hd] = x.dims();
        x.unsqueeze_dim::<5>(2).expand([b, kvh, rep, s, hd]).reshape([b, kvh * rep, s, hd])
    }

    /// `x: [b, t, d]`; `mask: [t, past + t]` additive; returns the output and the attention
    /// probabilities `[b, heads, t - self_only, past + t]` of the rows that were scored, as
    /// blocks of rows (see [`Self::attend`]).
    /// The first `self_only` rows (the caller guarantees an empty cache) attend to themselves
    /// alone: their output is their own value. `causal`: `mask` is the causal one (see
    /// [`Split`]).
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self, x: Tensor<B, 3>, rope: &RopeAt<B>, mask: Option<&Tensor<B, 4>>, cache: Slots<'_, B>,
        self_only: usize, causal: bool, probs: bool,
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 4>>) {
        let (q, k, v) = self.qkv(x, rope);
        let split = Split { heads: true, causal, probs };
        let (out, probs) = self.attend(q, k, v, mask, cache, self_only, split);
        (self.o_proj.forward(out), probs)
    }

    /// Queries `[b, heads, t, hd]`, keys and values `[b, kv_heads, t, hd]` of `x: [b, t, d]`,
    /// RoPE applied.
    fn qkv(&self, x: Tensor<B, 3>, rope: &RopeAt<B>) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let [b, t, _] = x.dims();
        let (hd, h, kvh) = (self.head_dim, self.heads, self.kv_heads);
        let (q, k, v) = match &self.qkv {
            // One product; its heads laid out as q's, then k's, then v's.
            Some(qkv) => {
                let y = split_linear(qkv, x, self.o_proj.split);
                // CPU inference in f32: the heads cut out and rotated in one pass.
                if host::applies(&y) {
                    return host::qkv_rope(y, h, kvh, hd, &rope.rows());
                }
                let y = y.reshape([b, t, h + 2 * kvh, hd]).swap_dims(1, 2);
                (y.clone().narrow(1, 0, h), y.clone().narrow(1, h, kvh), y.narrow(1, h + kvh, kvh))
            }
            None => {
                let heads = |y: Tensor<B, 3>, n: usize| y.reshape([b, t, n, hd]).swap_dims(1, 2);
                (
                    heads(self.q_proj.forward(x.clone()), h),
                    heads(self.k_proj.forward(x.clone()), kvh),
                    heads(self.v_proj.forward(x), kvh),
                )
            }
        };
        // Of several positions the heads are strided views (positions lie a row of all heads
        // apart): copied once before RoPE's five elementwise passes.
        let (q, k) = (super::rows_owned(q), super::rows_owned(k));
        (apply_rope(q, &rope.cos, &rope.sin), apply_rope(k, &rope.cos, &rope.sin), v)
    }

    /// The attention of [`Self::forward`] between the projections: stores `k`, `v` in the
    /// cache and returns the heads' outputs `[b, t, heads * hd]` (before `o_proj`) and the
    /// probabilities, as blocks of rows (dimension 2) to concatenate, in order, if wanted.
    /// `split`: how the work may be cut (see [`Split`]); the blocks of a causal prefill end at
    /// their last row's position, so their probabilities may be narrower than `past + t` (the
    /// keys after it have probability 0).
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self, q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: Option<&Tensor<B, 4>>,
        slots: Slots<'_, B>, self_only: usize, split: Split,
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 4>>) {
        let [b, _, t, hd] = q.dims();
        let n = self_only;
        let Slots { cache, tail, host: on_host } = slots;
        // Decoding in f32 CPU inference: the cache moves to the host (once) and the step's
        // attention runs there ([`Self::attend_on_host`]). Anything else reads it as tensors.
        let one_mask = mask.is_none_or(|m| m.dims()[0] == 1 && m.dims()[1] == 1);
        let decoding = t <= DECODE_ROWS && (on_host.is_some() || cache.is_some());
        if self.o_proj.split > 1 && b == 1 && n == 0 && one_mask && decoding && host::applies(&q) {
            return self.attend_on_host(q, k, v, mask, Slots { cache, tail, host: on_host }, split);
        }
        if let Some(h) = on_host.take() {
            *cache = Some(host_tensors(&h, &q.device()));
        }
        // The keys and values attended to, in order: the cache, its tail, the new positions.
        // A decoding step appends to the tail only (a small copy); a longer input, or a tail
        // of TAIL_ROWS, folds everything into one tensor.
        let (ks, vs) = match cache.clone() {
            Some((pk, pv)) if t <= DECODE_ROWS => {
                let (tk, tv) = match tail.take() {
                    Some(old) => joined(old, (k, v)),
                    None => (k, v),
                };
                if tk.dims()[2] >= TAIL_ROWS {
                    let (fk, fv) = joined((pk, pv), (tk, tv));
                    *cache = Some((fk.clone(), fv.clone()));
                    (vec![fk], vec![fv])
                } else {
                    *tail = Some((tk.clone(), tv.clone()));
                    (vec![pk, tk], vec![pv, tv])
                }
            }
            _ => {
                let (mut ks, mut vs) = (Vec::new(), Vec::new());
                for (pk, pv) in [cache.take(), tail.take()].into_iter().flatten() {
                    ks.push(pk);
                    vs.push(pv);
                }
                // Alone, the new values are a transposed view (`cat` of one tensor returns it as
                // it is): materialise it here once, or every later decoding step's matmul would
                // copy the whole view again. The keys left RoPE as a fresh tensor already.
                let v = if vs.is_empty() { v.mul_scalar(1.0) } else { v };
                ks.push(k);
                vs.push(v);
                let (fk, fv) = (Tensor::cat(ks, 2), Tensor::cat(vs, 2));
                *cache = Some((fk.clone(), fv.clone()));
                (vec![fk], vec![fv])
            }
        };
        let (h, kvh) = (self.heads, self.kv_heads);
        let rep = h / kvh;
        let tq = t - n;
        let q = if n > 0 { q.slice([0..b, 0..h, n..t, 0..hd]) } else { q };
        let mask = mask.map(|m| {
            let [mb, mh, mt, ms] = m.dims();
            if n > 0 {
                m.clone().slice([0..mb, 0..mh, n..mt, 0..ms])
            } else {
                m.clone()
            }
        });
        // Decoding on a CPU backend in half precision (f32 runs on the host, see above): the
        // key/value heads are split over the threads the decoder splits its products over,
        // each group reading its own slice of the cache (the matmul kernels run these few-row
        // products on one core), and their softmax on the host, eight lanes at a time.
        // Below ATTENTION_SPLIT_MIN cached positions the threads' dispatch costs more than the
        // attention itself.
        let threads = self.o_proj.split.min(kvh);
        let one_mask_row = mask.as_ref().is_none_or(|m| m.dims()[1] == 1);
        let keys = ks.iter().map(|k| k.dims()[2]).sum::<usize>();
        let long = keys >= ATTENTION_SPLIT_MIN;
        let (scored, probs) =
            if split.heads && threads > 1 && b == 1 && rep * tq <= DECODE_ROWS && one_mask_row && long {
                let bounds: Vec<(usize, usize)> =
                    (0..threads).map(|i| (i * kvh / threads, (i + 1) * kvh / threads)).collect();
                let heads = |parts: &[Tensor<B, 4>], a: usize, e: usize| -> Vec<Tensor<B, 4>> {
                    parts
                        .iter()
                        .map(|x| {
                            let [xb, _, w, d] = x.dims();
                            x.clone().slice([0..xb, a..e, 0..w, 0..d])
                        })
                        .collect()
                };
                // On the team the step's products run on (see `super::team`).
                let groups: Vec<(Tensor<B, 4>, Tensor<B, 4>)> = super::team::map(threads, |i| {
                    let (a, e) = bounds[i];
                    let qg = q.clone().slice([0..b, a * rep..e * rep, 0..tq, 0..hd]);
                    grouped_attention(
                        qg,
                        Keys::Rows(&heads(&ks, a, e)),
                        &heads(&vs, a, e),
                        mask.clone(),
                        rep,
                        true,
                    )
                });
                let (scored, probs): (Vec<_>, Vec<_>) = groups.into_iter().unzip();
                (Tensor::cat(scored, 1), vec![Tensor::cat(probs, 1)])
            } else if self.o_proj.split > 1 && b == 1 && tq > DECODE_ROWS {
                // A prefill on a CPU backend: blocks of query rows, each block's scores small
                // enough to stay in cache through the mask, softmax and product with the values,
                // the blocks on rayon's pool (the elementwise kernels run on one core each, and
                // the whole score matrix of a long prompt passes through memory several times).
                let threads = self.o_proj.split;
                let rows = (PREFILL_BLOCK_SCORES / (h * keys)).max(DECODE_ROWS).min(tq.div_ceil(threads));
                let blocks: Vec<(usize, usize)> =
                    (0..tq).step_by(rows).map(|a| (a, (a + rows).min(tq))).collect();
                // The keys transposed once for all blocks (each block's product would copy them).
                let kts: Vec<Tensor<B, 4>> =
                    ks.iter().map(|k| super::rows_owned(k.clone().swap_dims(2, 3))).collect();
                // Under the causal mask a block's rows see the keys up to its last row's
                // position only: the block attends to those (their keys and values copied, a
                // fraction of the scores it no longer computes) under a causal mask of its own.
                let past = keys - t;
                let done: Vec<(Tensor<B, 4>, Tensor<B, 4>)> = blocks
                    .par_iter()
                    .map(|&(a, e)| {
                        let qb = q.clone().slice([0..b, 0..h, a..e, 0..hd]);
                        let seen = past + n + e;
                        if split.causal && kts.len() == 1 && seen < keys {
                            let kt = kts[0].clone().slice([0..b, 0..kvh, 0..hd, 0..seen]);
                            let v = vs[0].clone().slice([0..b, 0..kvh, 0..seen, 0..hd]);
                            let mb = causal_mask::<B>(e - a, past + n + a, &q.device()).unsqueeze::<4>();
                            return grouped_attention(qb, Keys::Transposed(&[kt]), &[v], Some(mb), rep, true);
                        }
                        let mb = mask.as_ref().map(|m| {
                            let [mb, mh, _, ms] = m.dims();
                            m.clone().slice([0..mb, 0..mh, a..e, 0..ms])
                        });
                        grouped_attention(qb, Keys::Transposed(&kts), &vs, mb, rep, true)
                    })
                    .collect();
                let (scored, probs): (Vec<_>, Vec<_>) = done.into_iter().unzip();
                (Tensor::cat(scored, 2), probs)
            } else {
                let (o, p) = grouped_attention(q, Keys::Rows(&ks), &vs, mask, rep, false);
                (o, vec![p])
            };
        let v = vs.into_iter().next().expect("one part");
        let out = if n > 0 {
            Tensor::cat(vec![self.repeat_kv(v.slice([0..b, 0..kvh, 0..n, 0..hd])), scored], 2)
        } else {
            scored
        };
        (out.swap_dims(1, 2).reshape([b, t, self.heads * hd]), probs)
    }

    /// [`Self::attend`] for a decoding step of one sequence in f32 CPU inference: the cache on
    /// the host, moved there from its tensors at the first such step (a copy, once; in
    /// `kv_dtype`), the step's keys and values appended, and the attention computed there
    /// ([`HostKv::attend`]), over the decoder's threads from [`ATTENTION_SPLIT_MIN`] cached
    /// positions on (`split.heads`). The probabilities only when `split.probs`.
    fn attend_on_host(
        &self, q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: Option<&Tensor<B, 4>>,
        slots: Slots<'_, B>, split: Split,
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 4>>) {
        let device = q.device();
        let [_, h, t, hd] = q.dims();
        let kvh = self.kv_heads;
        let (k, v) = (host::values(k), host::values(v));
        let Slots { cache, tail, host: slot } = slots;
        let kv = match slot {
            Some(kv) => {
                kv.append(&k, &v);
                kv
            }
            None => {
                let (pk, pv) = match (cache.take(), tail.take()) {
                    (Some(c), Some(tl)) => joined(c, tl),
                    (Some(c), None) => c,
                    (None, Some(tl)) => tl,
                    (None, None) => unreachable!("attend calls this with a cache"),
                };
                let mut kv = HostKv::new(self.kv_dtype, kvh, hd, &host::values(pk), &host::values(pv));
                kv.append(&k, &v);
                slot.insert(kv)
            }
        };
        let s = kv.len();
        let threads = if split.heads && s >= ATTENTION_SPLIT_MIN { self.o_proj.split } else { 1 };
        // Queries `[1, h, t, hd]`: the `rep` heads of a key/value head are consecutive, so its
        // `rep t` rows are too.
        let q = host::values(q);
        let mask = mask.map(|m| host::values(m.clone()));
        let scale = (hd as f64).powf(-0.5) as f32;
        let rows = h / kvh * t;
        let (out, probs) = kv.attend(&q, rows, mask.as_deref().map(|m| (m, t)), scale, threads, split.probs);
        let out = host::tensor::<B, 4>(out, [1, h, t, hd], &device).swap_dims(1, 2).reshape([1, t, h * hd]);
        let probs = probs.map(|p| host::tensor::<B, 4>(p, [1, h, t, s], &device)).into_iter().collect();
        (out, probs)
    }
}

/// How [`Attention::attend`] may cut its work: `heads`, a decoding step's attention over
/// threads (by cached positions on the host cache, by key/value heads on tensors; not for the
/// rows of a batched step, which already run side by side); `causal`, the
/// mask is the causal one, so a prefill's blocks of rows may leave out the keys after their
/// last row.
#[derive(Clone, Copy)]
struct Split {
    heads: bool,
    causal: bool,
    /// The probabilities are wanted back (on the host path they are otherwise not built).
    probs: bool,
}

/// One layer's places in a [`KvCache`].
struct Slots<'a, B: Backend> {
    cache: &'a mut Option<Kv<B>>,
    tail: &'a mut Option<Kv<B>>,
    host: &'a mut Option<HostKv>,
}

/// Keys as [`grouped_attention`] takes them: runs of positions `[b, kvh, w_i, hd]`, or those
/// runs transposed into tensors of their own, `[b, kvh, hd, w_i]` (for products of many query
/// rows, which the matmul kernels want contiguous: blocks of one prefill share one copy).
#[derive(Clone, Copy)]
enum Keys<'a, B: Backend> {
    Rows(&'a [Tensor<B, 4>]),
    Transposed(&'a [Tensor<B, 4>]),
}

/// Attention of queries `q: [b, kvh * rep, tq, hd]` over keys and values given as runs of
/// positions (`[b, kvh, w_i, hd]` each, in order), under an additive `mask` `[.., tq, Σ w_i]`:
/// the output `[b, kvh * rep, tq, hd]` and the probabilities `[b, kvh * rep, tq, Σ w_i]`.
/// Grouped-query attention without repeating the keys and values per query head (a copy of
/// the whole cache at every decoding step): the `rep` query heads that share a key/value head
/// are stacked as rows of one matmul (head i reads key/value head i / rep, as transformers'
/// `repeat_kv` lays them out).
/// `host`: the scores are on the CPU, where in f32 the scale, the mask and the softmax run as
/// one pass per row ([`host::host_softmax`]).
fn grouped_attention<B: Backend>(
    q: Tensor<B, 4>, keys: Keys<'_, B>, vs: &[Tensor<B, 4>], mask: Option<Tensor<B, 4>>, rep: usize,
    host: bool,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let [b, h, tq, hd] = q.dims();
    let kvh = h / rep;
    let widths: Vec<usize> = vs.iter().map(|v| v.dims()[2]).collect();
    let s = widths.iter().sum::<usize>();
    let (q, scale) = grouped_queries(q, rep);
    let (ks, transposed) = match keys {
        Keys::Rows(ks) => (ks, false),
        Keys::Transposed(ks) => (ks, true),
    };
    let scores = run_scores(&q, ks, transposed).reshape([b, h, tq, s]);
    let probs = normalised(scores, scale, mask, host);
    grouped_values(probs, vs, &widths, [b, h, kvh, rep, tq, hd])
}

/// The queries `[b, kvh * rep, tq, hd]` as `[b, kvh, rep * tq, hd]`, the `rep` query heads that
/// share a key/value head stacked as rows, and the attention scale still to apply to the
/// scores. A scale that is a power of two (head width 64: 1/8) multiplies the queries (tq × hd)
/// instead of the scores (tq × s), one pass over the scores fewer, with the same result to
/// the bit (1 is left to apply); any other is applied to the scores, as transformers does.
fn grouped_queries<B: Backend>(q: Tensor<B, 4>, rep: usize) -> (Tensor<B, 4>, f64) {
    let [b, h, tq, hd] = q.dims();
    let scale = (hd as f64).powf(-0.5);
    let q = q.reshape([b, h / rep, rep * tq, hd]);
    if scale.log2().fract() == 0.0 {
        (q * scale, 1.0)
    } else {
        (q, scale)
    }
}

/// The scores `[b, kvh, rows, Σ w_i]` of grouped queries `q: [b, kvh, rows, hd]` against runs
/// of keys (`[b, kvh, w_i, hd]`, or `[b, kvh, hd, w_i]` when `transposed`), in order.
/// For a few query rows (decoding), `K qᵀ` then transposed: the matmul kernels want contiguous
/// operands, and `q Kᵀ` would copy the whole transposed key cache at every step (what made a
/// step grow with the context) where this copies `q` and the scores.
fn run_scores<B: Backend>(q: &Tensor<B, 4>, ks: &[Tensor<B, 4>], transposed: bool) -> Tensor<B, 4> {
    let rows = q.dims()[2];
    let part = |k: &Tensor<B, 4>| {
        if transposed {
            q.clone().matmul(k.clone())
        } else if rows <= DECODE_ROWS {
            k.clone().matmul(q.clone().swap_dims(2, 3)).swap_dims(2, 3)
        } else {
            q.clone().matmul(k.clone().swap_dims(2, 3))
        }
    };
    match ks.len() {
        1 => part(&ks[0]),
        _ => Tensor::cat(ks.iter().map(part).collect(), 3),
    }
}

/// `softmax(scores * scale + mask)` over the keys of `scores: [b, h, tq, s]`. `host`: the scores
/// are on the CPU, where in f32 the scale, the mask and the softmax run as one pass per row
/// ([`host::host_softmax`]).
fn normalised<B: Backend>(
    mut scores: Tensor<B, 4>, scale: f64, mask: Option<Tensor<B, 4>>, host: bool,
) -> Tensor<B, 4> {
    if host && scores.dtype() == DType::F32 {
        return host::host_softmax(scores, scale as f32, mask);
    }
    let [b, h, tq, s] = scores.dims();
    if scale != 1.0 {
        scores = scores * scale;
    }
    if let Some(m) = mask {
        // One sequence: added as `[h, tq, s] + [1 or h, tq, s]`, a broadcast over the leading
        // dimension, which the CPU backend's kernel runs as a contiguous loop (a broadcast over
        // the heads in the middle of four dimensions goes index by index).
        let [mb, mh, _, _] = m.dims();
        scores = if b == 1 && mb == 1 {
            (scores.reshape([h, tq, s]) + m.reshape([mh, tq, s])).reshape([b, h, tq, s])
        } else {
            scores + m
        };
    }
    super::softmax_f32(scores, 3)
}

/// The attention output `[b, h, tq, hd]` of `probs: [b, h, tq, Σ widths]` over the runs of
/// values `vs`, and `probs`.
fn grouped_values<B: Backend>(
    probs: Tensor<B, 4>, vs: &[Tensor<B, 4>], widths: &[usize], [b, h, kvh, rep, tq, hd]: [usize; 6],
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let s = widths.iter().sum::<usize>();
    let grouped = probs.clone().reshape([b, kvh, rep * tq, s]);
    (run_values(&grouped, vs).reshape([b, h, tq, hd]), probs)
}

/// `Σ_i p_i v_i` of grouped probabilities `p: [b, kvh, rows, Σ w_i]` (`p_i` its columns of run
/// `i`) and runs of values `v_i: [b, kvh, w_i, hd]`: `[b, kvh, rows, hd]`.
fn run_values<B: Backend>(p: &Tensor<B, 4>, vs: &[Tensor<B, 4>]) -> Tensor<B, 4> {
    let [b, kvh, rows, _] = p.dims();
    let mut start = 0;
    let mut scored: Option<Tensor<B, 4>> = None;
    for v in vs {
        let w = v.dims()[2];
        let pi = if vs.len() == 1 {
            p.clone()
        } else {
            p.clone().slice([0..b, 0..kvh, 0..rows, start..start + w])
        };
        let part = pi.matmul(v.clone());
        scored = Some(match scored {
            Some(x) => x + part,
            None => part,
        });
        start += w;
    }
    scored.expect("at least the new positions")
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    gate_proj: Proj<B>,
    up_proj: Proj<B>,
    down_proj: Proj<B>,
    /// `gate_proj` and `up_proj` as one product (inference, see [`Llama::with_row_split`]);
    /// `None`: two products.
    #[module(skip)]
    gate_up: Option<Linear<B>>,
}

impl<B: Backend> Mlp<B> {
    fn load(vb: &Loader<B>, c: &Config) -> Result<Self> {
        let (d, i, bias) = (c.hidden_size, c.intermediate_size, c.mlp_bias);
        Ok(Self {
            gate_proj: Proj::load(vb, "gate_proj", d, i, bias)?,
            up_proj: Proj::load(vb, "up_proj", d, i, bias)?,
            down_proj: Proj::load(vb, "down_proj", i, d, bias)?,
            gate_up: None,
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let (gate, up) = match &self.gate_up {
            Some(gate_up) => {
                let y = split_linear(gate_up, x, self.down_proj.split);
                // CPU inference in f32: the gate in one pass.
                if host::applies(&y) {
                    return self.down_proj.forward(host::swiglu(y));
                }
                let i = self.up_proj.dims()[1];
                let mut parts = split_last(y, &[i, i]).into_iter();
                // Of several rows each part is strided (its rows lie `2 i` apart): copied once
                // before the elementwise passes.
                let mut next = || super::rows_owned(parts.next().expect("two parts"));
                (next(), next())
            }
            None => (self.gate_proj.forward(x.clone()), self.up_proj.forward(x)),
        };
        self.down_proj.forward(super::x_sigmoid(gate, 1.0) * up)
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    self_attn: Attention<B>,
    mlp: Mlp<B>,
    input_layernorm: RmsNorm<B>,
    post_attention_layernorm: RmsNorm<B>,
}

impl<B: Backend> DecoderLayer<B> {
    fn load(vb: &Loader<B>, c: &Config) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::load(&vb.pp("self_attn"), c)?,
            mlp: Mlp::load(&vb.pp("mlp"), c)?,
            input_layernorm: vb.rms_norm("input_layernorm", c.hidden_size, c.rms_norm_eps)?,
            post_attention_layernorm: vb.rms_norm(
                "post_attention_layernorm",
                c.hidden_size,
                c.rms_norm_eps,
            )?,
        })
    }
}

/// Input to continue from: what is already cached, the new input embeddings `[1, t, d]`, the
/// RoPE position of the first of them, and their additive mask over `cached + new` keys
/// (`None`: causal).
pub struct Prompt<B: Backend> {
    pub cache: KvCache<B>,
    pub embeds: Tensor<B, 3>,
    pub first_position: usize,
    pub mask: Option<Tensor<B, 2>>,
}

/// Options for one forward pass.
pub struct Step<'a, B: Backend> {
    /// Absolute RoPE position of each input token.
    pub positions: &'a [usize],
    /// Additive mask `[t, cached + t]`; `None` means causal.
    pub mask: Option<Tensor<B, 2>>,
    /// Collect head-averaged attention probabilities of every layer.
    pub want_attention: bool,
    /// How many leading inputs attend only to themselves under `mask` (the star mask's BOS,
    /// anchors and patches): their attention output is their own value, so their score rows
    /// are skipped (and they get no attention rows, see `Output::attention_from`). Only honoured
    /// with an empty cache; 0 turns it off. Exact, not an approximation: softmax over one open
    /// key is 1.
    pub self_only: usize,
}

/// The output of [`Llama::forward`].
pub struct Output<B: Backend> {
    /// Final hidden states after the last norm, `[b, t, d]`.
    pub hidden: Tensor<B, 3>,
    /// Per layer, head-averaged attention `[b, t - attention_from, cached + t]` of the inputs
    /// from `attention_from` on (empty unless asked).
    pub attention: Vec<Tensor<B, 3>>,
    /// The first input with an attention row (`Step::self_only` rows have none).
    pub attention_from: usize,
    /// Per layer, its normalised input `[b, t, d]`: what that layer's keys and values are
    /// computed from (training probes read them; holding them costs no copy).
    pub layer_inputs: Vec<Tensor<B, 3>>,
}

#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    embed_tokens: Embedding<B>,
    layers: Vec<DecoderLayer<B>>,
    norm: RmsNorm<B>,
    /// The output head; tied checkpoints get a copy of the embedding matrix, transposed.
    lm_head: Linear<B>,
    #[module(skip)]
    rope: Rope,
    #[module(skip)]
    config: Config,
    /// Threads the output head's few-row products are split over (1: not split).
    #[module(skip)]
    split: usize,
}

impl<B: Backend> Llama<B> {
    /// A randomly initialised decoder (burn's initialisers), with parameter ids derived from checkpoint keys.
    pub fn init(c: &Config, device: &B::Device) -> Result<Self> {
        let vb = Loader::init(device);
        Self::load(&vb, &vb, c)
    }

    /// `model` points at the `model.*` level; `lm_head` at the head's own prefix. A tied head
    /// (no head in the checkpoint) is read from the embeddings but kept under the head's key.
    /// Parameter ids come from checkpoint keys.
    pub fn load(model: &Loader<B>, lm_head: &Loader<B>, c: &Config) -> Result<Self> {
        let layers = (0..c.num_hidden_layers)
            .map(|i| DecoderLayer::load(&model.pp(format!("layers.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if c.tie_word_embeddings && !lm_head.contains("weight") {
            lm_head.tied_linear(&model.pp("embed_tokens"), c.vocab_size, c.hidden_size)?
        } else {
            lm_head.linear("", c.hidden_size, c.vocab_size, false)?
        };
        let m = Self {
            embed_tokens: model.embedding("embed_tokens", c.vocab_size, c.hidden_size)?,
            layers,
            norm: model.rms_norm("norm", c.hidden_size, c.rms_norm_eps)?,
            lm_head,
            rope: Rope::new(c.head_dim, c.rope_theta),
            config: c.clone(),
            split: 1,
        };
        Ok(m)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn device(&self) -> B::Device {
        self.embed_tokens.weight.device()
    }

    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.layers.len())
    }

    /// Checks that `ids` is a non-empty run of ids in the vocabulary; the one place ids are
    /// range-checked before embedding.
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.config.vocab_size;
        if ids.is_empty() {
            anyhow::bail!("empty prompt: give 1 or more token ids");
        }
        match ids.iter().find(|&&i| i as usize >= vocab) {
            Some(bad) => {
                anyhow::bail!("token id {bad} is out of range (token ids below {vocab}, the vocabulary size)")
            }
            None => Ok(()),
        }
    }

    /// Converts prompt ids that may be negative (image placeholders) to checked vocabulary ids.
    pub fn checked_ids(&self, ids: &[i64]) -> Result<Vec<u32>> {
        let vocab = self.config.vocab_size;
        let out = ids
            .iter()
            .map(|&i| {
                u32::try_from(i).map_err(|_| {
                    anyhow::anyhow!(
                        "token id {i} is out of range (token ids below {vocab}, the vocabulary size)"
                    )
                })
            })
            .collect::<Result<Vec<u32>>>()?;
        self.check_ids(&out)?;
        Ok(out)
    }

    /// Token embeddings `[1, t, d]`.
    pub fn embed(&self, ids: &[u32]) -> Tensor<B, 3> {
        let data = TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, ids.len()]);
        self.embed_tokens.forward(Tensor::<B, 2, Int>::from_data(data, &self.device()))
    }

    /// Token embeddings `[b, t, d]` of a `[b, t]` batch of ids (already range-checked).
    pub fn embed_batch(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.embed_tokens.forward(ids)
    }

    /// Runs the decoder over `embeds: [b, t, d]`, appending to `cache`.
    pub fn forward(&self, embeds: Tensor<B, 3>, step: Step<'_, B>, cache: &mut KvCache<B>) -> Output<B> {
        let device = embeds.device();
        let [_, t, _] = embeds.dims();
        let past = cache.seq_len();
        let hd = self.config.head_dim;
        let rope = self.rope.at::<B>(step.positions, [1, 1, step.positions.len(), hd], &device);
        let causal = step.mask.is_none();
        let mask = step
            .mask
            .or_else(|| (t > 1).then(|| causal_mask::<B>(t, past, &device)))
            .map(|m| m.unsqueeze::<4>());
        let self_only = if past == 0 { step.self_only.min(t) } else { 0 };
        let mut stream = Stream::new(embeds, self.fused(&device));
        let mut normed = stream.add_norm(None, self.input_norm(0));
        let mut attention = Vec::new();
        let mut layer_inputs = Vec::with_capacity(self.layers.len());
        let KvCache { layers: kvs, tails, hosts } = cache;
        for (li, (((layer, kv), tail), host)) in
            self.layers.iter().zip(kvs.iter_mut()).zip(tails.iter_mut()).zip(hosts.iter_mut()).enumerate()
        {
            layer_inputs.push(normed.clone());
            let slots = Slots { cache: kv, tail, host };
            let (h, probs) = layer.self_attn.forward(
                normed,
                &rope,
                mask.as_ref(),
                slots,
                self_only,
                causal,
                step.want_attention,
            );
            if step.want_attention {
                // Blocks of a causal prefill end at their last row: zeros for the keys after it.
                let means = probs
                    .into_iter()
                    .map(|p| {
                        let m = p.mean_dim(1).squeeze_dim::<3>(1);
                        let [mb, rows, w] = m.dims();
                        match past + t - w {
                            0 => m,
                            after => Tensor::cat(vec![m, Tensor::zeros([mb, rows, after], &device)], 2),
                        }
                    })
                    .collect();
                attention.push(Tensor::cat(means, 1));
            }
            let m = layer.mlp.forward(stream.add_norm(Some(h), &layer.post_attention_layernorm));
            normed = stream.add_norm(Some(m), self.input_norm(li + 1));
        }
        Output { hidden: normed, attention, attention_from: self_only, layer_inputs }
    }

    /// The norm before layer `i`'s attention; past the last layer, the final norm.
    fn input_norm(&self, i: usize) -> &RmsNorm<B> {
        self.layers.get(i).map_or(&self.norm, |l| &l.input_layernorm)
    }

    /// Whether the norms, RoPE and gate run as fused kernels on the host ([`host`]): CPU
    /// inference (products split over threads, see [`Self::with_row_split`]) in f32.
    fn fused(&self, device: &B::Device) -> bool {
        self.split > 1 && self.embed_tokens.weight.val().dtype() == DType::F32 && !B::ad_enabled(device)
    }

    /// One decoding step for `b` independent sequences at once (micro-batching). Row `i`
    /// feeds token `ids[i]` at RoPE position `positions[i]`; `caches[i]` holds its keys and
    /// values and grows by one. The projections and MLPs run on the `b` rows together (each
    /// weight read once per step); the attention runs per row on the row's own cache and
    /// tail, as a lone step does (no padding, no copy of the caches), on rayon's pool when the
    /// decoder splits its products over threads. Returns logits `[b, vocab]`.
    pub fn decode_batch(&self, ids: &[u32], positions: &[usize], caches: &mut [KvCache<B>]) -> Tensor<B, 2> {
        let b = ids.len();
        let device = self.device();
        let hd = self.config.head_dim;
        let rope = self.rope.at::<B>(positions, [b, 1, 1, hd], &device);
        let x = Tensor::cat(ids.iter().map(|&i| self.embed(&[i])).collect(), 0);
        let mut stream = Stream::new(x, self.fused(&device));
        let mut normed = stream.add_norm(None, self.input_norm(0));
        let row = |t: &Tensor<B, 4>, i: usize| {
            let [_, h, n, d] = t.dims();
            t.clone().slice([i..i + 1, 0..h, 0..n, 0..d])
        };
        for (li, layer) in self.layers.iter().enumerate() {
            let attn = &layer.self_attn;
            let (q, k, v) = attn.qkv(normed, &rope);
            let attend = |(i, c): (usize, &mut KvCache<B>)| {
                let KvCache { layers, tails, hosts } = c;
                let (q, k, v) = (row(&q, i), row(&k, i), row(&v, i));
                // Rows of a batch run side by side already: their heads are not split again.
                let split = Split { heads: b == 1, causal: true, probs: false };
                let slots = Slots { cache: &mut layers[li], tail: &mut tails[li], host: &mut hosts[li] };
                attn.attend(q, k, v, None, slots, 0, split).0
            };
            let outs: Vec<Tensor<B, 3>> = if self.split > 1 && b > 1 {
                caches.par_iter_mut().enumerate().map(attend).collect()
            } else {
                caches.iter_mut().enumerate().map(attend).collect()
            };
            let h = attn.o_proj.forward(Tensor::cat(outs, 0));
            let m = layer.mlp.forward(stream.add_norm(Some(h), &layer.post_attention_layernorm));
            normed = stream.add_norm(Some(m), self.input_norm(li + 1));
        }
        let logits = self.logits(normed); // [b, 1, vocab]
        let [_, _, vocab] = logits.dims();
        logits.reshape([b, vocab])
    }

    /// Attaches LoRA adapters to the projections `cfg` targets, next to each base weight's
    /// checkpoint key (found through `names`): read from `vb`, or fresh (B = 0) when `vb`
    /// initialises.
    pub fn with_lora(mut self, cfg: &LoraConfig, vb: &Loader<B>, names: &ParamNames) -> Result<Self> {
        cfg.validate()?;
        for layer in self.layers.iter_mut() {
            let (a, m) = (&mut layer.self_attn, &mut layer.mlp);
            for (t, p) in [
                ("q", &mut a.q_proj),
                ("k", &mut a.k_proj),
                ("v", &mut a.v_proj),
                ("o", &mut a.o_proj),
                ("gate", &mut m.gate_proj),
                ("up", &mut m.up_proj),
                ("down", &mut m.down_proj),
            ] {
                if !cfg.targets(t) {
                    continue;
                }
                let key = names
                    .get(&p.linear.weight.id)
                    .and_then(|n| n.key.strip_suffix(".weight"))
                    .ok_or_else(|| anyhow::anyhow!("the `{t}` projection has no checkpoint key"))?;
                let [d_in, d_out] = p.dims();
                p.lora = Some(Lora::load(&vb.pp(key), d_in, d_out, cfg.rank, cfg.scale())?);
            }
        }
        Ok(self)
    }

    /// Whether any projection carries a LoRA adapter.
    pub fn has_lora(&self) -> bool {
        self.layers.iter().any(|l| {
            let (a, m) = (&l.self_attn, &l.mlp);
            [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &m.gate_proj, &m.up_proj, &m.down_proj]
                .iter()
                .any(|p| p.lora.is_some())
        })
    }

    /// The decoder with `f` applied to each of the seven projections of every layer (and their
    /// joined products dropped).
    fn map_projections(mut self, f: impl Fn(Proj<B>) -> Proj<B>) -> Self {
        self.layers = self
            .layers
            .into_iter()
            .map(|mut l| {
                let (a, m) = (l.self_attn, l.mlp);
                l.self_attn = Attention {
                    q_proj: f(a.q_proj),
                    k_proj: f(a.k_proj),
                    v_proj: f(a.v_proj),
                    o_proj: f(a.o_proj),
                    qkv: None,
                    ..a
                };
                l.mlp = Mlp {
                    gate_proj: f(m.gate_proj),
                    up_proj: f(m.up_proj),
                    down_proj: f(m.down_proj),
                    gate_up: None,
                };
                l
            })
            .collect();
        self
    }

    /// The decoder with every base weight frozen (no gradients kept) and the LoRA adapters
    /// left as they are.
    pub fn freeze_base(self) -> Self {
        let mut m = self.map_projections(|p| Proj { linear: p.linear.no_grad(), ..p });
        m.embed_tokens = m.embed_tokens.no_grad();
        m.norm = m.norm.no_grad();
        m.lm_head = m.lm_head.no_grad();
        for l in m.layers.iter_mut() {
            l.input_layernorm = l.input_layernorm.clone().no_grad();
            l.post_attention_layernorm = l.post_attention_layernorm.clone().no_grad();
        }
        m
    }

    /// The decoder with its products of a few rows (decoding steps) split over `threads`
    /// threads (see [`super::lora::split_linear`]); 1 turns splitting off. For CPU inference:
    /// the CPU matmul kernels run a one-row product on one core. With more than one thread the
    /// products of one input also run as one: q, k and v, and gate and up (see
    /// [`super::lora::join_projections`]: fewer products, each one dispatch over the threads).
    pub fn with_row_split(mut self, threads: usize) -> Self {
        let threads = threads.max(1);
        self.split = threads;
        let mut m = self.map_projections(|p| Proj { split: threads, ..p });
        if threads > 1 {
            for l in m.layers.iter_mut() {
                let a = &mut l.self_attn;
                a.qkv = join_projections(&mut [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj]);
                let p = &mut l.mlp;
                p.gate_up = join_projections(&mut [&mut p.gate_proj, &mut p.up_proj]);
            }
        }
        m
    }

    /// The decoder storing the caches it decodes on in f32 CPU inference (see
    /// [`Self::with_row_split`]) in `dtype` (see [`super::kv_host`]); elsewhere the caches stay
    /// tensors in the model's dtype.
    pub fn with_kv_dtype(mut self, dtype: KvDtype) -> Self {
        for l in self.layers.iter_mut() {
            l.self_attn.kv_dtype = dtype;
        }
        self
    }

    /// The thread count of [`Self::with_row_split`] (1: not split, as on the GPU backends).
    pub fn row_split(&self) -> usize {
        self.split
    }

    /// The decoder with every LoRA adapter folded into its base weight.
    pub fn merged(self) -> Self {
        self.map_projections(Proj::merged)
    }

    /// Logits `[b, t, vocab]` from final hidden states.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        super::lora::split_linear(&self.lm_head, hidden, self.split)
    }
}

/// The additive causal mask `[t, past + t]` for queries at positions `past..past + t`. Closed
/// keys get `-inf` (every row keeps its own position open, so none is closed throughout):
/// `exp` of `f32::MIN`, transformers' value, gives the same 0 but through libm's slow underflow
/// path, about 3% of a SmolLM2 prefill.
pub fn causal_mask<B: Backend>(t: usize, past: usize, device: &B::Device) -> Tensor<B, 2> {
    let s = past + t;
    let data: Vec<f32> = (0..t)
        .flat_map(|i| (0..s).map(move |j| if j <= past + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_data(TensorData::new(data, [t, s]), device)
}
