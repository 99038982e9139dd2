//! Linear layers over burn tensors: every leading dimension folded into one matmul
//! ([`flat_linear`]), and a few-row product split over threads ([`split_linear`]).

use burn::nn::Linear;
use burn::tensor::{backend::Backend, Tensor};
use rayon::prelude::*;

/// The most rows (batch × tokens) a product is split for: decoding steps, where the CPU matmul
/// kernel runs a matrix–vector product on one thread. Larger products are multi-threaded by
/// the kernel itself.
pub const SPLIT_MAX_ROWS: usize = 8;

/// `linear` over the last dimension of `x`, with every leading dimension folded into the
/// rows of one 2-D matmul. burn's `Linear` multiplies `[b, t, in]` by the weight broadcast
/// to `[1, in, out]`, and burn-candle concretises a broadcast operand: a copy of the whole
/// weight for each of the `b` sequences at every call (training batches, batched decoding).
pub fn flat_linear<B: Backend, const D: usize>(linear: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let dims = x.dims();
    if D <= 2 || dims[..D - 2].iter().product::<usize>() <= 1 {
        return linear.forward(x);
    }
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let y = linear.forward(x.reshape([rows, d_in]));
    let mut out = dims;
    out[D - 1] = y.dims()[1];
    y.reshape(out)
}

/// `linear.forward(x)`, with products of at most [`SPLIT_MAX_ROWS`] rows split over `parts`
/// threads when `parts > 1`: the reduction dimension is cut into `parts` contiguous row blocks
/// of the `[in, out]` weight (views, no copy), each block's product runs on its own thread, and
/// the partial products are summed in block order (deterministic for a given `parts`; the
/// rounding differs from one matmul's by the order of the additions). Written here because
/// the matmul kernels do not thread a one-row product and no crate does it for burn tensors.
pub fn split_linear<B: Backend, const D: usize>(
    linear: &Linear<B>, x: Tensor<B, D>, parts: usize,
) -> Tensor<B, D> {
    let dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    // Blocks narrower than this cost more in dispatch than they save.
    const MIN_BLOCK: usize = 16;
    let parts = parts.min(d_in / MIN_BLOCK);
    if parts < 2 || rows > SPLIT_MAX_ROWS || rows == 0 {
        return flat_linear(linear, x);
    }
    let w = linear.weight.val();
    let d_out = w.dims()[1];
    let x2 = x.reshape([rows, d_in]);
    let part = |i: usize| {
        let (a, b) = (i * d_in / parts, (i + 1) * d_in / parts);
        x2.clone().slice([0..rows, a..b]).matmul(w.clone().slice([a..b, 0..d_out]))
    };
    // One row (a lone decoding step) on the team, whose helpers spin between a step's products;
    // several rows on rayon's pool, since their products are big enough for the matmul kernel
    // to thread them on that pool itself, which a helper thread would wait for.
    let partials: Vec<Tensor<B, 2>> = if rows == 1 {
        super::team::map(parts, part)
    } else {
        (0..parts).into_par_iter().map(part).collect()
    };
    let mut y = partials.into_iter().reduce(|s, p| s + p).expect("parts >= 2");
    if let Some(bias) = &linear.bias {
        y = y + bias.val().unsqueeze::<2>();
    }
    let mut out = dims;
    out[D - 1] = d_out;
    y.reshape(out)
}
