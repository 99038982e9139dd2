//! Backend selection by cargo feature: `cuda` > `wgpu` > `candle` > `flex` > `ndarray` (the
//! default).

#[cfg(feature = "cuda")]
pub type Backend = burn::backend::Cuda;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type Backend = burn::backend::Wgpu;
#[cfg(all(feature = "candle", not(any(feature = "cuda", feature = "wgpu"))))]
#[allow(deprecated)] // burn-candle is deprecated upstream after 0.21; measured fastest here.
pub type Backend = burn::backend::Candle<f32>;
#[cfg(all(feature = "flex", not(any(feature = "cuda", feature = "wgpu", feature = "candle"))))]
pub type Backend = burn::backend::Flex;
#[cfg(all(
    feature = "ndarray",
    not(any(feature = "cuda", feature = "wgpu", feature = "candle", feature = "flex"))
))]
pub type Backend = burn::backend::NdArray<f32>;

#[cfg(not(any(
    feature = "cuda",
    feature = "wgpu",
    feature = "candle",
    feature = "flex",
    feature = "ndarray"
)))]
compile_error!("enable one backend feature: ndarray (default), candle, flex, wgpu or cuda");

/// The device the worker runs on.
pub fn device() -> burn::tensor::Device<Backend> {
    Default::default()
}

/// A short name of the compiled backend, for logs and benchmarks.
pub fn name() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda"
    } else if cfg!(feature = "wgpu") {
        "wgpu"
    } else if cfg!(feature = "candle") {
        "candle"
    } else if cfg!(feature = "flex") {
        "flex"
    } else {
        "ndarray"
    }
}

/// Threads a decoding step's few-row products are split over: every core on the CPU backends,
/// whose matmul kernels run a one-row product on one thread; 1 on the GPU backends.
pub fn row_split() -> usize {
    if cfg!(any(feature = "cuda", feature = "wgpu")) {
        1
    } else {
        rayon::current_num_threads()
    }
}

/// New images compressed together by default: batching pays on the GPU backends; on the CPU
/// ones (the matmuls of 576-token prefixes already fill the cores) a burst of 8 images took
/// 1.14–1.22× as long as one batch as one by one (`cargo bench --bench load`).
pub fn compress_batch() -> usize {
    if cfg!(any(feature = "cuda", feature = "wgpu")) {
        8
    } else {
        1
    }
}
