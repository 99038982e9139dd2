//! The decoder's key/value cache ([`KvCache`]): per layer, tensors (with a tail the latest
//! decoding steps append to), or, for f32 CPU inference, [`HostKv`].
//!
//! [`HostKv`]: a decoder layer's key/value cache kept on the host for f32 CPU inference (the decoder tuned
//! by `Llama::with_row_split`), in f32 or f16, and a decoding step's attention over it
//! ([`HostKv::attend`]).
//!
//! Why on the host: a decoding step's attention reads the whole cache once for the scores and
//! once for the values, and at long contexts that traffic is what grows, toward the size of
//! the weights a step reads (sizes in docs/performance.md#memory). Held as burn tensors, the
//! cache can only be read by burn's operations, so it could be neither stored in f16 and read
//! as f32 on the fly (candle's f16 product converts whole panels first) nor scored without a
//! matmul dispatch per head and range; and a step appended to it by concatenation. Here each
//! key/value head's positions lie back to back in a `Vec` that grows in place, a step reads
//! them in blocks (converted from f16 into a small f32 buffer when stored so), and the products
//! with the few query rows are multiply-adds eight lanes at a time. The keys are stored in
//! blocks of eight positions transposed (for each of the head's values, the eight positions'
//! side by side), so a block's eight scores build up in one vector register with no horizontal
//! sums; the values stay position after position, which is already the order their weighted
//! sum wants.
//!
//! On x86-64 CPUs with AVX2 and FMA (detected at run time: the binary is built for any x86-64)
//! both products run as 256-bit fused multiply-adds (`Isa`); elsewhere as `wide`'s
//! eight lanes, which a build for plain x86-64 runs as two 128-bit halves and separate
//! multiplies and adds. Written by hand because no crate offers attention over a growing
//! f16/f32 store on the CPU, nor dispatches on the running CPU for code of this shape.

use half::f16;
use half::slice::HalfFloatSliceExt;
use wide::f32x8;

use burn::tensor::{backend::Backend, Tensor};

use super::host;

/// Keys and values a decoding step appends go to a per-layer tail, folded into the rest of the
/// cache once it holds this many positions: appending to the whole cache would copy all of it
/// at every step (the tensors are immutable), so a step would grow with the context.
pub(super) const TAIL_ROWS: usize = 256;

/// One layer's cached keys and values.
pub(super) type Kv<B> = (Tensor<B, 4>, Tensor<B, 4>);

/// `first` then `then` along the positions (a copy of both).
pub(super) fn joined<B: Backend>(first: Kv<B>, then: Kv<B>) -> Kv<B> {
    (Tensor::cat(vec![first.0, then.0], 2), Tensor::cat(vec![first.1, then.1], 2))
}

/// Per-layer keys and values (before the GQA head repeat), `[b, kv_heads, seq, hd]`: the
/// positions in `layers`, then those in the layer's tail (the latest decoding steps, see
/// [`TAIL_ROWS`]; [`KvCache::seal`] folds them in); or, once f32 CPU inference decodes, all of
/// them on the host, in `hosts` (see [`HostKv`]; `seal` brings them back).
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

    /// One layer's places (see [`Slots`]).
    pub fn slots(&mut self, layer: usize) -> Slots<'_, B> {
        Slots { cache: &mut self.layers[layer], tail: &mut self.tails[layer], host: &mut self.hosts[layer] }
    }

    /// Every layer's places, in order.
    pub fn all_slots(&mut self) -> impl Iterator<Item = Slots<'_, B>> {
        let Self { layers, tails, hosts } = self;
        layers.iter_mut().zip(tails.iter_mut()).zip(hosts.iter_mut()).map(|((cache, tail), host)| Slots {
            cache,
            tail,
            host,
        })
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
pub(super) fn host_tensors<B: Backend>(h: &HostKv, device: &B::Device) -> Kv<B> {
    let (k, v) = h.to_f32();
    let dims = [1, h.kv_heads(), h.len(), h.head_dim()];
    (host::tensor(k, dims, device), host::tensor(v, dims, device))
}

/// One layer's places in a [`KvCache`].
pub struct Slots<'a, B: Backend> {
    pub(super) cache: &'a mut Option<Kv<B>>,
    pub(super) tail: &'a mut Option<Kv<B>>,
    pub(super) host: &'a mut Option<HostKv>,
}

/// Positions read (and, from f16, converted) at a time: a block of keys or values of a
/// 64-wide head is 16 KB in f32, in the first-level cache while the query rows use it.
const BLOCK: usize = 64;
/// Positions per transposed block of keys (one vector register of scores).
const KEY_LANES: usize = 8;

/// Which instructions the products run on ([`HostKv::attend`] takes the best the CPU has;
/// `htc bench --suite backend` times each). Obtained only from [`Isa::detect`] and
/// [`Isa::available`], so it never names instructions the running CPU lacks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Isa(Kind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// x86-64 with AVX2 and FMA: 256-bit fused multiply-adds.
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// `wide`'s eight lanes, as the build's target features allow.
    Portable,
}

impl Isa {
    /// The best this CPU runs (the detection is cached by the standard library).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Self(Kind::Avx2Fma);
        }
        Self(Kind::Portable)
    }

    /// Every kind this CPU can run, the best first.
    pub fn available() -> Vec<Self> {
        let best = Self::detect();
        if best.0 == Kind::Portable {
            vec![best]
        } else {
            vec![best, Self(Kind::Portable)]
        }
    }
}

impl std::fmt::Debug for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// How a host cache stores its keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvDtype {
    /// As computed: the attention equals burn's over tensors to the rounding of a sum.
    #[default]
    F32,
    /// Rounded to half precision when stored (half the memory and the memory traffic; the
    /// attention's arithmetic stays f32), as llama.cpp keeps its cache by default.
    F16,
}

impl KvDtype {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }
}

/// One key/value head's positions, `hd` values each, back to back.
#[derive(Clone, Debug)]
enum Store {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Store {
    fn new(dtype: KvDtype, capacity: usize) -> Self {
        match dtype {
            KvDtype::F32 => Self::F32(Vec::with_capacity(capacity)),
            KvDtype::F16 => Self::F16(Vec::with_capacity(capacity)),
        }
    }

    fn push(&mut self, rows: &[f32]) {
        match self {
            Self::F32(v) => v.extend_from_slice(rows),
            Self::F16(v) => {
                let at = v.len();
                v.resize(at + rows.len(), f16::ZERO);
                v[at..].convert_from_f32_slice(rows);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F16(v) => v.len(),
        }
    }

    /// Adds `n` zeros.
    fn grow(&mut self, n: usize) {
        match self {
            Self::F32(v) => v.resize(v.len() + n, 0.0),
            Self::F16(v) => v.resize(v.len() + n, f16::ZERO),
        }
    }

    /// Writes `x` at `at`, `at + stride`, `at + 2 stride`, ...
    fn scatter(&mut self, at: usize, stride: usize, x: &[f32]) {
        match self {
            Self::F32(v) => x.iter().enumerate().for_each(|(i, &x)| v[at + i * stride] = x),
            Self::F16(v) => x.iter().enumerate().for_each(|(i, &x)| v[at + i * stride] = f16::from_f32(x)),
        }
    }

    /// Values `from..to` as f32: a view of the store, or converted into `buf`.
    fn f32s<'a>(&'a self, from: usize, to: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
        match self {
            Self::F32(v) => &v[from..to],
            Self::F16(v) => {
                buf.resize(to - from, 0.0);
                v[from..to].convert_to_f32_slice(buf);
                buf
            }
        }
    }

    fn all_f32(&self) -> Vec<f32> {
        let mut buf = Vec::new();
        self.f32s(0, self.len(), &mut buf).to_vec()
    }
}

/// One layer's cached keys and values on the host: per key/value head, `len` positions of
/// `head_dim` values. Keys in blocks of [`KEY_LANES`] positions, each `[head_dim, KEY_LANES]`
/// (the last block padded with zeros); values `[len, head_dim]`.
#[derive(Clone, Debug)]
pub struct HostKv {
    head_dim: usize,
    len: usize,
    keys: Vec<Store>,
    values: Vec<Store>,
}

impl HostKv {
    /// The cache holding `keys` and `values`, `[kv_heads, len, head_dim]` row-major each.
    pub fn new(dtype: KvDtype, kv_heads: usize, head_dim: usize, keys: &[f32], values: &[f32]) -> Self {
        assert_eq!(keys.len(), values.len(), "as many keys as values");
        let len = keys.len() / (kv_heads * head_dim).max(1);
        // Room for a few blocks of decoding before the first reallocation.
        let capacity = (len.next_multiple_of(KEY_LANES) + 4 * BLOCK) * head_dim;
        let mut c = Self {
            head_dim,
            len: 0,
            keys: (0..kv_heads).map(|_| Store::new(dtype, capacity)).collect(),
            values: (0..kv_heads).map(|_| Store::new(dtype, capacity)).collect(),
        };
        c.append(keys, values);
        c
    }

    /// Cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn kv_heads(&self) -> usize {
        self.keys.len()
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Appends `keys` and `values` of new positions, `[kv_heads, t, head_dim]` row-major each.
    pub fn append(&mut self, keys: &[f32], values: &[f32]) {
        let (kvh, hd) = (self.keys.len(), self.head_dim);
        assert_eq!(keys.len(), values.len(), "as many keys as values");
        assert_eq!(keys.len() % (kvh * hd).max(1), 0, "whole positions of every head");
        let t = keys.len() / (kvh * hd).max(1);
        for g in 0..kvh {
            let span = g * t * hd..(g + 1) * t * hd;
            for (i, k) in keys[span.clone()].chunks_exact(hd.max(1)).enumerate() {
                let p = self.len + i;
                if p.is_multiple_of(KEY_LANES) {
                    self.keys[g].grow(KEY_LANES * hd);
                }
                self.keys[g].scatter(p / KEY_LANES * KEY_LANES * hd + p % KEY_LANES, KEY_LANES, k);
            }
            self.values[g].push(&values[span]);
        }
        self.len += t;
    }

    /// Keys and values as f32, `[kv_heads, len, head_dim]` row-major each.
    pub fn to_f32(&self) -> (Vec<f32>, Vec<f32>) {
        let (hd, s) = (self.head_dim, self.len);
        let mut keys = Vec::with_capacity(self.keys.len() * s * hd);
        for store in &self.keys {
            let kt = store.all_f32();
            for p in 0..s {
                let base = p / KEY_LANES * KEY_LANES * hd + p % KEY_LANES;
                keys.extend((0..hd).map(|d| kt[base + d * KEY_LANES]));
            }
        }
        (keys, self.values.iter().flat_map(Store::all_f32).collect())
    }

    /// The attention of `rows` query rows per key/value head over every cached position:
    /// `q` holds, per key/value head `g`, its rows `g rows .. (g + 1) rows`, `head_dim` values
    /// each (queries `[heads, tq, hd]` whose `rep` heads per key/value head are consecutive:
    /// `rows = rep tq`). Row `r` of a head is scored `q·k scale` plus `mask` row `r % mask_rows`
    /// (`mask`: `mask_rows` rows of `len` additive values), normalised by the host softmax, and
    /// multiplied by the values. The positions are cut into `threads` ranges on the team
    /// (`super::team`; whole blocks of keys but the last). Without `want_probs` each thread
    /// scores its range, normalises it by its own maximum and adds its share of the output,
    /// and the shares are joined by their maxima and sums; with it, each thread scores its
    /// range, the rows are normalised whole, then each thread adds its range's share.
    /// Returns the output, per query row `head_dim` values, and, when `want_probs`, the
    /// probabilities, per query row `len` values.
    pub fn attend(
        &self, q: &[f32], rows: usize, mask: Option<(&[f32], usize)>, scale: f32, threads: usize,
        want_probs: bool,
    ) -> (Vec<f32>, Option<Vec<f32>>) {
        self.attend_on(Isa::detect(), q, rows, mask, scale, threads, want_probs)
    }

    /// [`HostKv::attend`] on the instructions `isa` (one of [`Isa::available`]).
    #[allow(clippy::too_many_arguments)]
    pub fn attend_on(
        &self, isa: Isa, q: &[f32], rows: usize, mask: Option<(&[f32], usize)>, scale: f32, threads: usize,
        want_probs: bool,
    ) -> (Vec<f32>, Option<Vec<f32>>) {
        let (kvh, hd, s) = (self.keys.len(), self.head_dim, self.len);
        assert_eq!(q.len(), kvh * rows * hd, "query rows of every key/value head");
        let threads = threads.clamp(1, s.max(1));
        let cut = |i: usize| if i == threads { s } else { i * s / threads / KEY_LANES * KEY_LANES };
        let ranges: Vec<(usize, usize)> = (0..threads).map(|i| (cut(i), cut(i + 1))).collect();
        if !want_probs {
            return (self.attend_joined(isa, q, rows, mask, scale, &ranges), None);
        }
        let parts = super::team::map(threads, |i| self.scores(isa, q, rows, ranges[i]));
        // The rows whole: each thread's columns in place, then the softmax per row.
        let mut probs = vec![0.0f32; kvh * rows * s];
        for ((a, e), part) in ranges.iter().zip(&parts) {
            let w = e - a;
            for (row, src) in probs.chunks_exact_mut(s.max(1)).zip(part.chunks_exact(w.max(1))) {
                row[*a..*e].copy_from_slice(&src[..w]);
            }
        }
        for (r, row) in probs.chunks_exact_mut(s.max(1)).enumerate() {
            let m = mask.map(|(m, mask_rows)| {
                let mr = (r % rows) % mask_rows;
                &m[mr * s..(mr + 1) * s]
            });
            super::host::softmax_row(row, scale, m);
        }
        let parts =
            super::team::map(threads, |i| self.weighted_values(isa, (&probs, s, 0), None, rows, ranges[i]));
        let mut out = vec![0.0f32; kvh * rows * hd];
        for part in parts {
            out.iter_mut().zip(part).for_each(|(o, p)| *o += p);
        }
        (out, Some(probs))
    }

    /// [`HostKv::attend_on`]'s output without the probabilities, in one pass over the team:
    /// each thread scores its range of positions, normalises it by its own maximum
    /// ([`super::host::exp_row`]) and adds its share of the values; the shares are then joined
    /// by their maxima and sums (the log-sum-exp of the whole row), so no row is normalised
    /// whole on the calling thread between two dispatches.
    fn attend_joined(
        &self, isa: Isa, q: &[f32], rows: usize, mask: Option<(&[f32], usize)>, scale: f32,
        ranges: &[(usize, usize)],
    ) -> Vec<f32> {
        let (kvh, hd, s) = (self.keys.len(), self.head_dim, self.len);
        let shares = super::team::map(ranges.len(), |i| {
            let (a, e) = ranges[i];
            let w = e - a;
            let mut scores = self.scores(isa, q, rows, (a, e));
            // A range can be empty (fewer positions than threads × a block of keys).
            let stats: Vec<(f32, f32)> = (0..kvh * rows)
                .map(|r| {
                    if w == 0 {
                        return (f32::NEG_INFINITY, 0.0);
                    }
                    let m = mask.map(|(m, mask_rows)| {
                        let mr = (r % rows) % mask_rows;
                        &m[mr * s + a..mr * s + e]
                    });
                    super::host::exp_row(&mut scores[r * w..(r + 1) * w], scale, m)
                })
                .collect();
            let out = self.weighted_values(isa, (&scores, w, a), Some(&stats), rows, (a, e));
            (out, stats)
        });
        let mut out = vec![0.0f32; kvh * rows * hd];
        for (r, o) in out.chunks_exact_mut(hd.max(1)).enumerate().take(kvh * rows) {
            let max = shares.iter().map(|(_, st)| st[r].0).fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for (share, st) in &shares {
                let (m, z) = st[r];
                if m == f32::NEG_INFINITY {
                    continue;
                }
                let f = (m - max).exp();
                sum += f * z;
                o.iter_mut().zip(&share[r * hd..(r + 1) * hd]).for_each(|(o, p)| *o += f * p);
            }
            // Nothing to normalise over an empty cache: the output stays zero, as normalised
            // whole.
            if sum > 0.0 {
                o.iter_mut().for_each(|o| *o /= sum);
            }
        }
        out
    }

    /// `q·k` of every query row and the positions `a..e` (`a` a multiple of [`KEY_LANES`]): per
    /// row, `e - a` scores.
    fn scores(&self, isa: Isa, q: &[f32], rows: usize, (a, e): (usize, usize)) -> Vec<f32> {
        let hd = self.head_dim;
        let w = e - a;
        let mut out = vec![0.0f32; self.keys.len() * rows * w];
        let (mut buf, mut padded) = (Vec::new(), vec![0.0f32; BLOCK]);
        for (g, keys) in self.keys.iter().enumerate() {
            for start in (a..e).step_by(BLOCK) {
                let stop = (start + BLOCK).min(e);
                let whole = (stop - start).next_multiple_of(KEY_LANES);
                let kt = keys.f32s(start * hd, (start + whole) * hd, &mut buf);
                for r in g * rows..(g + 1) * rows {
                    dots_t(isa, &q[r * hd..(r + 1) * hd], kt, &mut padded[..whole]);
                    out[r * w + start - a..r * w + stop - a].copy_from_slice(&padded[..stop - start]);
                }
            }
        }
        out
    }

    /// `Σ_j p_j v_j` over the positions `a..e` for every query row: `p_j` of row `r` and
    /// position `j` at `weights[r stride + j - base]` (`(weights, stride, base)`). Per row,
    /// `head_dim` values; rows whose `stats` maximum is `-inf` (every position masked: their
    /// weights are not numbers) are left at zero.
    fn weighted_values(
        &self, isa: Isa, (weights, stride, base): (&[f32], usize, usize), stats: Option<&[(f32, f32)]>,
        rows: usize, (a, e): (usize, usize),
    ) -> Vec<f32> {
        let hd = self.head_dim;
        let mut out = vec![0.0f32; self.values.len() * rows * hd];
        let mut buf = Vec::new();
        for (g, values) in self.values.iter().enumerate() {
            for start in (a..e).step_by(BLOCK) {
                let stop = (start + BLOCK).min(e);
                let vs = values.f32s(start * hd, stop * hd, &mut buf);
                for r in g * rows..(g + 1) * rows {
                    if stats.is_some_and(|st| st[r].0 == f32::NEG_INFINITY) {
                        continue;
                    }
                    let p = &weights[r * stride + start - base..r * stride + stop - base];
                    add_weighted(isa, &mut out[r * hd..(r + 1) * hd], p, vs);
                }
            }
        }
        out
    }
}

/// `out[j] = q·k_j` for the positions of `kt`, blocks of [`KEY_LANES`] keys `[q.len(),
/// KEY_LANES]` each, `out.len() / KEY_LANES` of them. Each block's scores are two chains of
/// multiply-adds, over the head's even and odd values in order, added at the end, so a score
/// has the same bits whichever blocks are computed beside it; several blocks run side by side
/// to fill the pipeline.
fn dots_t(isa: Isa, q: &[f32], kt: &[f32], out: &mut [f32]) {
    assert_eq!(out.len() % KEY_LANES, 0, "whole blocks of scores");
    assert!(kt.len() >= out.len() * q.len(), "a block of keys per block of scores");
    match isa.0 {
        // SAFETY: an `Isa` names AVX2 and FMA only where `Isa::detect` found them on this CPU,
        // and the lengths the kernel reads and writes were checked above.
        #[cfg(target_arch = "x86_64")]
        Kind::Avx2Fma => unsafe { avx2::dots_t(q, kt, out) },
        Kind::Portable => dots_t_portable(q, kt, out),
    }
}

/// [`dots_t`] in `wide`'s lanes: two blocks side by side, two chains each (over the head's
/// even and odd values, as on AVX2; four blocks would not fit the sixteen registers of a build
/// for plain x86-64, where a lane of eight is two registers).
fn dots_t_portable(q: &[f32], kt: &[f32], out: &mut [f32]) {
    let span = KEY_LANES * q.len();
    let mut outs = out.chunks_exact_mut(2 * KEY_LANES);
    let mut blocks = kt.chunks_exact(2 * span);
    for (o, k) in (&mut outs).zip(&mut blocks) {
        let (k0, k1) = k.split_at(span);
        let mut acc = [[f32x8::ZERO; 2]; 2];
        for (d, (&qd, (r0, r1))) in
            q.iter().zip(k0.chunks_exact(KEY_LANES).zip(k1.chunks_exact(KEY_LANES))).enumerate()
        {
            let qd = f32x8::splat(qd);
            acc[0][d % 2] = lanes_at(r0, 0).mul_add(qd, acc[0][d % 2]);
            acc[1][d % 2] = lanes_at(r1, 0).mul_add(qd, acc[1][d % 2]);
        }
        for (o, a) in o.chunks_exact_mut(KEY_LANES).zip(acc) {
            o.copy_from_slice(&(a[0] + a[1]).to_array());
        }
    }
    for (o, k) in outs.into_remainder().chunks_exact_mut(KEY_LANES).zip(blocks.remainder().chunks_exact(span))
    {
        let mut a = [f32x8::ZERO; 2];
        for (d, (&qd, r)) in q.iter().zip(k.chunks_exact(KEY_LANES)).enumerate() {
            a[d % 2] = lanes_at(r, 0).mul_add(f32x8::splat(qd), a[d % 2]);
        }
        o.copy_from_slice(&(a[0] + a[1]).to_array());
    }
}

/// Lanes `8 c .. 8 c + 8` of `x`.
fn lanes_at(x: &[f32], c: usize) -> f32x8 {
    f32x8::new(x[8 * c..8 * c + 8].try_into().expect("eight lanes"))
}

/// `out += Σ_j p_j rows_j` for rows of `out.len()` values. Head widths of 16, 32, 64 and 128
/// keep `out` in registers across the rows.
fn add_weighted(isa: Isa, out: &mut [f32], p: &[f32], rows: &[f32]) {
    assert!(rows.len() >= p.len() * out.len(), "a row per weight");
    match (isa.0, out.len()) {
        // SAFETY: as in `dots_t`: the CPU has AVX2 and FMA, the lengths are checked above.
        #[cfg(target_arch = "x86_64")]
        (Kind::Avx2Fma, 16) => unsafe { avx2::add_weighted::<2>(out, p, rows) },
        #[cfg(target_arch = "x86_64")]
        (Kind::Avx2Fma, 32) => unsafe { avx2::add_weighted::<4>(out, p, rows) },
        #[cfg(target_arch = "x86_64")]
        (Kind::Avx2Fma, 64) => unsafe { avx2::add_weighted::<8>(out, p, rows) },
        #[cfg(target_arch = "x86_64")]
        (Kind::Avx2Fma, 128) => unsafe { avx2::add_weighted::<16>(out, p, rows) },
        (_, 16) => add_weighted_lanes::<2>(out, p, rows),
        (_, 32) => add_weighted_lanes::<4>(out, p, rows),
        (_, 64) => add_weighted_lanes::<8>(out, p, rows),
        (_, 128) => add_weighted_lanes::<16>(out, p, rows),
        (_, hd) => {
            for (&pj, v) in p.iter().zip(rows.chunks_exact(hd)) {
                for (o, x) in out.iter_mut().zip(v) {
                    *o += pj * x;
                }
            }
        }
    }
}

/// [`add_weighted`] for `8 N` values: `N` independent accumulators of eight lanes.
fn add_weighted_lanes<const N: usize>(out: &mut [f32], p: &[f32], rows: &[f32]) {
    let mut acc: [f32x8; N] = std::array::from_fn(|c| lanes_at(out, c));
    for (&pj, v) in p.iter().zip(rows.chunks_exact(8 * N)) {
        let pj = f32x8::splat(pj);
        for (c, a) in acc.iter_mut().enumerate() {
            *a = lanes_at(v, c).mul_add(pj, *a);
        }
    }
    for (c, a) in acc.iter().enumerate() {
        out[8 * c..8 * c + 8].copy_from_slice(&a.to_array());
    }
}

/// The products in AVX2 and FMA intrinsics, for CPUs that have them. The callers check the
/// CPU and the lengths; these read and write only within them.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        _mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };

    use super::KEY_LANES;

    /// `super::dots_t`: four blocks side by side, two chains each (eight independent chains
    /// keep both FMA units busy), then the rest one by one.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `out.len()` is a multiple of eight and `kt` holds
    /// `out.len() * q.len()` values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots_t(q: &[f32], kt: &[f32], out: &mut [f32]) {
        let span = KEY_LANES * q.len();
        let blocks = out.len() / KEY_LANES;
        let (k, o) = (kt.as_ptr(), out.as_mut_ptr());
        let mut b = 0;
        while b + 4 <= blocks {
            let mut acc = [[_mm256_setzero_ps(); 2]; 4];
            for (d, &qd) in q.iter().enumerate() {
                let qd = _mm256_set1_ps(qd);
                for (j, a) in acc.iter_mut().enumerate() {
                    a[d % 2] =
                        _mm256_fmadd_ps(_mm256_loadu_ps(k.add((b + j) * span + d * KEY_LANES)), qd, a[d % 2]);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(o.add((b + j) * KEY_LANES), _mm256_add_ps(a[0], a[1]));
            }
            b += 4;
        }
        while b < blocks {
            let mut a = [_mm256_setzero_ps(); 2];
            for (d, &qd) in q.iter().enumerate() {
                a[d % 2] = _mm256_fmadd_ps(
                    _mm256_loadu_ps(k.add(b * span + d * KEY_LANES)),
                    _mm256_set1_ps(qd),
                    a[d % 2],
                );
            }
            _mm256_storeu_ps(o.add(b * KEY_LANES), _mm256_add_ps(a[0], a[1]));
            b += 1;
        }
    }

    /// `super::add_weighted` for `8 N` values, `out` in `N` registers.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `out` holds `8 N` values and `rows` `p.len() × 8 N`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn add_weighted<const N: usize>(out: &mut [f32], p: &[f32], rows: &[f32]) {
        let (o, v) = (out.as_mut_ptr(), rows.as_ptr());
        let mut acc = [_mm256_setzero_ps(); N];
        for (c, a) in acc.iter_mut().enumerate() {
            *a = _mm256_loadu_ps(o.add(8 * c));
        }
        for (j, &pj) in p.iter().enumerate() {
            let pj = _mm256_set1_ps(pj);
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(v.add((j * N + c) * 8)), pj, *a);
            }
        }
        for (c, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(o.add(8 * c), *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic spread of values in about [-2, 2].
    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 4001) as f32 / 1000.0 - 2.0)
            .collect()
    }

    /// The attention of [`HostKv::attend`] in f64, from `[kvh, s, hd]` keys and values.
    fn reference(
        q: &[f32], keys: &[f32], vals: &[f32], [kvh, rows, s, hd]: [usize; 4], mask: Option<(&[f32], usize)>,
        scale: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let (mut out, mut probs) = (vec![0.0; kvh * rows * hd], vec![0.0; kvh * rows * s]);
        for g in 0..kvh {
            for r in 0..rows {
                let row = g * rows + r;
                let qr = &q[row * hd..(row + 1) * hd];
                let scores: Vec<f64> = (0..s)
                    .map(|j| {
                        let k = &keys[(g * s + j) * hd..(g * s + j + 1) * hd];
                        let dot: f64 = qr.iter().zip(k).map(|(a, b)| *a as f64 * *b as f64).sum();
                        dot * scale + mask.map_or(0.0, |(m, mr)| m[(r % mr) * s + j] as f64)
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|x| (x - max).exp()).sum();
                for j in 0..s {
                    let p = (scores[j] - max).exp() / sum;
                    probs[row * s + j] = p;
                    for d in 0..hd {
                        out[row * hd + d] += p * vals[(g * s + j) * hd + d] as f64;
                    }
                }
            }
        }
        (out, probs)
    }

    fn worst(got: &[f32], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        got.iter().zip(want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max)
    }

    /// The host attention against an f64 reference, on every instruction set this CPU runs:
    /// probabilities within 1e-6 (scores reach about 20, whose f32 rounding is the error: each
    /// is two chains of multiply-adds; measured 7.1e-7) and outputs within 4e-6 (each adds up
    /// those errors over 301 positions, times values up to 2; measured 2.5e-6 with the rows
    /// normalised whole, 3.1e-6 with ranges joined), both with the probabilities asked for
    /// (rows normalised whole) and without (ranges joined by their maxima and sums). 3
    /// key/value heads of 2 query heads × 2 rows each, head widths 20 (a width without a
    /// register kernel for the values) and 64 (the values' output in registers), 301 positions (blocks of 64, a partial one, and a partial block of keys), a
    /// two-row mask blocking the first 40 keys, or the first 200 (so that on 3 threads the
    /// first range is blocked whole) with the project's `BLOCKED` or with `-inf`, on 1, 2 and 3
    /// threads; the cache built in one piece or appended to position by position gives the
    /// same bits.
    #[test]
    fn attention_on_the_host_matches_a_reference() {
        for hd in [20, 64] {
            for (blocked, value) in
                [(40, htc_shared::mask::BLOCKED), (200, htc_shared::mask::BLOCKED), (200, f32::NEG_INFINITY)]
            {
                attention_on_the_host_matches_a_reference_at(hd, blocked, value);
            }
        }
    }

    fn attention_on_the_host_matches_a_reference_at(hd: usize, blocked: usize, value: f32) {
        let [kvh, rows, s] = [3, 4, 301];
        let (keys, vals) = (values(kvh * s * hd, 1), values(kvh * s * hd, 2));
        let q = values(kvh * rows * hd, 3);
        let mut mask = values(2 * s, 4);
        mask[..blocked].fill(value);
        let scale = 1.3 / (hd as f32).sqrt();
        let (want_out, want_probs) =
            reference(&q, &keys, &vals, [kvh, rows, s, hd], Some((&mask, 2)), scale as f64);
        let whole = HostKv::new(KvDtype::F32, kvh, hd, &keys, &vals);
        // Position by position: each append is `[kvh, 1, hd]`.
        let mut grown = HostKv::new(KvDtype::F32, kvh, hd, &[], &[]);
        for j in 0..s {
            let pick = |x: &[f32]| -> Vec<f32> {
                (0..kvh).flat_map(|g| x[(g * s + j) * hd..(g * s + j + 1) * hd].to_vec()).collect()
            };
            grown.append(&pick(&keys), &pick(&vals));
        }
        assert_eq!(grown.len(), s);
        assert_eq!(grown.to_f32(), (keys.clone(), vals.clone()), "appending keeps every value in place");
        for (isa, threads) in Isa::available().into_iter().flat_map(|i| [(i, 1), (i, 2), (i, 3)]) {
            let what = format!("{isa:?}, {threads} threads, first {blocked} keys blocked with {value}");
            let (out, probs) = whole.attend_on(isa, &q, rows, Some((&mask, 2)), scale, threads, true);
            let probs = probs.expect("asked for");
            assert!(worst(&out, &want_out) < 4e-6, "output, {what}: {}", worst(&out, &want_out));
            assert!(
                worst(&probs, &want_probs) < 1e-6,
                "probabilities, {what}: {}",
                worst(&probs, &want_probs)
            );
            assert!(probs[..blocked].iter().all(|&p| p == 0.0), "a blocked key gets nothing");
            let (joined, none) = whole.attend_on(isa, &q, rows, Some((&mask, 2)), scale, threads, false);
            assert!(none.is_none(), "no probabilities unless asked");
            assert!(worst(&joined, &want_out) < 4e-6, "joined output, {what}: {}", worst(&joined, &want_out));
            for (want, want_probs) in [(&out, true), (&joined, false)] {
                let (again, _) = grown.attend_on(isa, &q, rows, Some((&mask, 2)), scale, threads, want_probs);
                assert_eq!(&again, want, "a grown cache attends as one built whole ({what})");
            }
        }
    }

    /// Fewer positions than the threads' blocks of keys leave some threads an empty range, and
    /// an empty cache leaves every range empty: both ways of normalising agree with each other
    /// (and, with positions, with the reference) instead of failing.
    #[test]
    fn short_and_empty_caches_attend_on_several_threads() {
        let [kvh, rows, hd] = [2, 3, 8];
        let q = values(kvh * rows * hd, 9);
        for s in [0, 1, 10] {
            let (keys, vals) = (values(kvh * s * hd, 10), values(kvh * s * hd, 11));
            let cache = HostKv::new(KvDtype::F32, kvh, hd, &keys, &vals);
            let (want, _) = reference(&q, &keys, &vals, [kvh, rows, s, hd], None, 0.5);
            for isa in Isa::available() {
                for threads in [1, 2, 3] {
                    let (whole, _) = cache.attend_on(isa, &q, rows, None, 0.5, threads, true);
                    let (joined, _) = cache.attend_on(isa, &q, rows, None, 0.5, threads, false);
                    let what = format!("{s} positions, {isa:?}, {threads} threads");
                    assert!(worst(&whole, &want) < 4e-6, "whole, {what}: {}", worst(&whole, &want));
                    assert!(worst(&joined, &want) < 4e-6, "joined, {what}: {}", worst(&joined, &want));
                    if s == 0 {
                        assert!(joined.iter().chain(&whole).all(|&o| o == 0.0), "{what}: {joined:?}");
                    }
                }
            }
        }
    }

    /// In f16 the cache holds the keys and values rounded to half precision (relative error
    /// at most 2⁻¹¹) and attends as f32 over those: against the reference over the rounded
    /// values within the f32 tolerance, and against the exact values within 2e-3.
    #[test]
    fn an_f16_cache_attends_over_its_rounded_values() {
        let [kvh, rows, s, hd] = [2, 3, 130, 16];
        let (keys, vals) = (values(kvh * s * hd, 5), values(kvh * s * hd, 6));
        let q = values(kvh * rows * hd, 7);
        let half = HostKv::new(KvDtype::F16, kvh, hd, &keys, &vals);
        let (hk, hv) = half.to_f32();
        for (x, h) in keys.iter().zip(&hk) {
            assert!((x - h).abs() <= x.abs() * 2f32.powi(-11) + 1e-7, "{x} stored as {h}");
        }
        let (rounded, _) = reference(&q, &hk, &hv, [kvh, rows, s, hd], None, 0.25);
        let (exact, _) = reference(&q, &keys, &vals, [kvh, rows, s, hd], None, 0.25);
        for isa in Isa::available() {
            let (out, _) = half.attend_on(isa, &q, rows, None, 0.25, 2, false);
            assert!(
                worst(&out, &rounded) < 2e-6,
                "over the rounded values, {isa:?}: {}",
                worst(&out, &rounded)
            );
            assert!(worst(&out, &exact) < 2e-3, "against the exact values, {isa:?}: {}", worst(&out, &exact));
        }
    }
}
