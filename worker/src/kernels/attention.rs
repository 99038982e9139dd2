//! Grouped-query attention between a decoder layer's projections, with an additive mask, over
//! the [`KvCache`](super::kv_cache::KvCache): a decoding step appends to the cache's tail; on a CPU backend a decoding
//! step's attention runs split over threads (on the host cache in f32, by key/value heads in
//! half precision) and a prefill in blocks of query rows on rayon's pool; elsewhere one
//! grouped product. Which of these runs depends only on the shapes and [`Heads::threads`].

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use rayon::prelude::*;

use super::host;
use super::kv_cache::{host_tensors, joined, HostKv, KvDtype, Slots, TAIL_ROWS};

/// Attention scores per block of query rows in a prefill on a CPU backend (1 MB of f32): a
/// block's scores stay in cache from the product with the keys to the one with the values.
const PREFILL_BLOCK_SCORES: usize = 1 << 18;

/// Query rows per key/value head up to which attention scores are computed as `K qᵀ`.
const DECODE_ROWS: usize = 16;

/// Cached positions from which a decoding step's attention is split over threads: below this
/// many the threads' dispatch costs more than the split attention saves, and the gain grows
/// with the cache (see docs/performance.md#llm-on-the-cpu).
const ATTENTION_SPLIT_MIN: usize = 256;

/// The shape of a layer's attention and how it runs: `heads` query heads over `kv_heads`
/// key/value heads; `threads`, the threads a CPU backend splits a step's work over (1: not
/// split, as on the GPU backends; more than 1 also moves a decoding step's cache to the host,
/// in `kv_dtype`, for f32 inference).
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub threads: usize,
    pub kv_dtype: KvDtype,
}

/// The attention of a decoder layer between the projections: stores `k`, `v` in the
/// cache and returns the heads' outputs `[b, t, heads * hd]` (before `o_proj`) and the
/// probabilities, as blocks of rows (dimension 2) to concatenate, in order, if wanted.
/// `split`: how the work may be cut (see [`Split`]); the blocks of a causal prefill end at
/// their last row's position, so their probabilities may be narrower than `past + t` (the
/// keys after it have probability 0).
#[allow(clippy::too_many_arguments)]
pub fn attend<B: Backend>(
    shape: &Heads, q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: Option<&Tensor<B, 4>>,
    slots: Slots<'_, B>, self_only: usize, split: Split,
) -> (Tensor<B, 3>, Vec<Tensor<B, 4>>) {
    let [b, _, t, hd] = q.dims();
    let n = self_only;
    let Slots { cache, tail, host: on_host } = slots;
    // Decoding in f32 CPU inference: the cache moves to the host (once) and the step's
    // attention runs there ([`attend_on_host`]). Anything else reads it as tensors.
    let one_mask = mask.is_none_or(|m| m.dims()[0] == 1 && m.dims()[1] == 1);
    let decoding = t <= DECODE_ROWS && (on_host.is_some() || cache.is_some());
    if shape.threads > 1 && b == 1 && n == 0 && one_mask && decoding && host::applies(&q) {
        return attend_on_host(shape, q, k, v, mask, Slots { cache, tail, host: on_host }, split);
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
    let (h, kvh) = (shape.heads, shape.kv_heads);
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
    let threads = shape.threads.min(kvh);
    let one_mask_row = mask.as_ref().is_none_or(|m| m.dims()[1] == 1);
    let keys = ks.iter().map(|k| k.dims()[2]).sum::<usize>();
    let long = keys >= ATTENTION_SPLIT_MIN;
    let (scored, probs) = if split.heads
        && threads > 1
        && b == 1
        && rep * tq <= DECODE_ROWS
        && one_mask_row
        && long
    {
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
            grouped_attention(qg, Keys::Rows(&heads(&ks, a, e)), &heads(&vs, a, e), mask.clone(), rep, true)
        });
        let (scored, probs): (Vec<_>, Vec<_>) = groups.into_iter().unzip();
        (Tensor::cat(scored, 1), vec![Tensor::cat(probs, 1)])
    } else if shape.threads > 1 && b == 1 && tq > DECODE_ROWS {
        // A prefill on a CPU backend: blocks of query rows, each block's scores small
        // enough to stay in cache through the mask, softmax and product with the values,
        // the blocks on rayon's pool (the elementwise kernels run on one core each, and
        // the whole score matrix of a long prompt passes through memory several times).
        let threads = shape.threads;
        let rows = (PREFILL_BLOCK_SCORES / (h * keys)).max(DECODE_ROWS).min(tq.div_ceil(threads));
        let blocks: Vec<(usize, usize)> = (0..tq).step_by(rows).map(|a| (a, (a + rows).min(tq))).collect();
        // The keys transposed once for all blocks (each block's product would copy them).
        let kts: Vec<Tensor<B, 4>> =
            ks.iter().map(|k| super::ops::rows_owned(k.clone().swap_dims(2, 3))).collect();
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
        Tensor::cat(
            vec![repeat_kv(shape.heads / shape.kv_heads, v.slice([0..b, 0..kvh, 0..n, 0..hd])), scored],
            2,
        )
    } else {
        scored
    };
    (out.swap_dims(1, 2).reshape([b, t, shape.heads * hd]), probs)
}

/// [`attend`] for a decoding step of one sequence in f32 CPU inference: the cache on
/// the host, moved there from its tensors at the first such step (a copy, once; in
/// `kv_dtype`), the step's keys and values appended, and the attention computed there
/// ([`HostKv::attend`]), over the decoder's threads from [`ATTENTION_SPLIT_MIN`] cached
/// positions on (`split.heads`). The probabilities only when `split.probs`.
fn attend_on_host<B: Backend>(
    shape: &Heads, q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: Option<&Tensor<B, 4>>,
    slots: Slots<'_, B>, split: Split,
) -> (Tensor<B, 3>, Vec<Tensor<B, 4>>) {
    let device = q.device();
    let [_, h, t, hd] = q.dims();
    let kvh = shape.kv_heads;
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
            let mut kv = HostKv::new(shape.kv_dtype, kvh, hd, &host::values(pk), &host::values(pv));
            kv.append(&k, &v);
            slot.insert(kv)
        }
    };
    let s = kv.len();
    let threads = if split.heads && s >= ATTENTION_SPLIT_MIN { shape.threads } else { 1 };
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

/// `x: [b, kvh, s, hd]` with each key/value head repeated `rep` times (transformers' `repeat_kv`).
fn repeat_kv<B: Backend>(rep: usize, x: Tensor<B, 4>) -> Tensor<B, 4> {
    if rep == 1 {
        return x;
    }
    let [b, kvh, s, hd] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([b, kvh, rep, s, hd]).reshape([b, kvh * rep, s, hd])
}

/// How [`attend`] may cut its work: `heads`, a decoding step's attention over
/// threads (by cached positions on the host cache, by key/value heads on tensors; not for the
/// rows of a batched step, which already run side by side); `causal`, the
/// mask is the causal one, so a prefill's blocks of rows may leave out the keys after their
/// last row.
#[derive(Clone, Copy)]
pub struct Split {
    pub heads: bool,
    pub causal: bool,
    /// The probabilities are wanted back (on the host path they are otherwise not built).
    pub probs: bool,
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
    super::ops::softmax_f32(scores, 3)
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

/// The additive causal mask `[t, past + t]` for queries at positions `past..past + t`. Closed
/// keys get `-inf` (every row keeps its own position open, so none is closed throughout):
/// `exp` of `f32::MIN`, transformers' value, gives the same 0 but through libm's slow underflow
/// path, a cost paid for every closed key of a prefill (see
/// docs/performance.md#llm-on-the-cpu).
pub fn causal_mask<B: Backend>(t: usize, past: usize, device: &B::Device) -> Tensor<B, 2> {
    let s = past + t;
    let data: Vec<f32> = (0..t)
        .flat_map(|i| (0..s).map(move |j| if j <= past + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Tensor::from_data(TensorData::new(data, [t, s]), device)
}

/// One decoding step's attention for each row of a batch (`q: [b, heads, 1, hd]`, `k`, `v`:
/// `[b, kv_heads, 1, hd]`), each row on its own cache (`slots[i]`), as a lone step does (no
/// padding, no copy of the caches); the rows on rayon's pool when `shape.threads > 1`.
/// Returns the heads' outputs `[b, 1, heads * hd]`.
pub fn attend_rows<B: Backend>(
    shape: &Heads, q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, slots: Vec<Slots<'_, B>>,
) -> Tensor<B, 3> {
    let b = slots.len();
    let row = |t: &Tensor<B, 4>, i: usize| {
        let [_, h, n, d] = t.dims();
        t.clone().slice([i..i + 1, 0..h, 0..n, 0..d])
    };
    let one = |(i, slots): (usize, Slots<'_, B>)| {
        let (q, k, v) = (row(&q, i), row(&k, i), row(&v, i));
        // Rows of a batch run side by side already: their heads are not split again.
        let split = Split { heads: b == 1, causal: true, probs: false };
        attend(shape, q, k, v, None, slots, 0, split).0
    };
    let outs: Vec<Tensor<B, 3>> = if shape.threads > 1 && b > 1 {
        slots.into_par_iter().enumerate().map(one).collect()
    } else {
        slots.into_iter().enumerate().map(one).collect()
    };
    Tensor::cat(outs, 0)
}
