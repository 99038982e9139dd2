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

/// The float precision the worker computes in (`--dtype`): weights, activations and the KV
/// cache are stored in it; norms and softmax accumulate in f32 whatever it is (burn's
/// `RmsNorm`, [`crate::models::softmax_f32`]), and logits are read back as f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }

    /// Bytes per stored element.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }
}

static DTYPE: std::sync::OnceLock<Dtype> = std::sync::OnceLock::new();

/// The dtype [`set_dtype`] chose (f32 until it is called).
pub fn dtype() -> Dtype {
    DTYPE.get().copied().unwrap_or_default()
}

/// Makes `dtype` the float type of every tensor created on the worker's device from now on.
/// Call it once, before any tensor exists (the device's settings lock at its first tensor).
/// f32 is the backend's own default and needs no call.
pub fn set_dtype(dtype: Dtype) -> anyhow::Result<()> {
    use burn::tensor::{Element, FloatDType};
    let float = match dtype {
        Dtype::F32 => return Ok(()),
        Dtype::F16 => FloatDType::F16,
        Dtype::Bf16 => FloatDType::BF16,
    };
    // burn-candle lists bf16 among its dtypes, but candle's CPU matmul has no bf16 kernel:
    // the first product would fail deep inside a forward pass, so refuse it here.
    if dtype == Dtype::Bf16 && cfg!(feature = "candle") && !cfg!(any(feature = "cuda", feature = "wgpu")) {
        anyhow::bail!(
            "--dtype bf16: the candle CPU backend has no bf16 matrix product; use --dtype f16 on the CPU \
             (or bf16 with `--features cuda`)"
        );
    }
    let int = <burn::tensor::ops::IntElem<Backend> as Element>::dtype();
    let _ = DTYPE.set(dtype);
    burn::tensor::set_default_dtypes::<Backend>(&device(), float, int).map_err(|e| {
        anyhow::anyhow!(
            "--dtype {}: the {} backend cannot compute in it ({e}); build with `--features candle` (CPU),              `flex`, `wgpu` or `cuda`",
            dtype.name(),
            name()
        )
    })
}

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
