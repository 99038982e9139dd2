//! Backend selection by cargo feature: `cuda` > `wgpu` > `candle` > `flex` > `ndarray`; the
//! default feature is `candle` (worker/Cargo.toml).

#[cfg(feature = "cuda")]
pub type Backend = burn::backend::Cuda;
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type Backend = burn::backend::Wgpu;
// burn-candle is deprecated upstream after 0.21; it is the fastest CPU backend here
// (docs/performance.md#llm-on-the-cpu).
#[cfg(all(feature = "candle", not(any(feature = "cuda", feature = "wgpu"))))]
#[allow(deprecated)]
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
compile_error!("enable one backend feature: candle (default), ndarray, flex, wgpu or cuda");

/// The float precision the worker computes in (`--dtype`): weights, activations and the KV
/// cache are stored in it; norms and softmax accumulate in f32 whatever it is (burn's
/// `RmsNorm`, `kernels::ops::softmax_f32`, `kernels::ops::layer_norm_f32`), the MGVQ tokenizer stays f32,
/// and logits are read back as f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dtype {
    #[default]
    F32,
    F16,
    Bf16,
}

/// What `--dtype` asks for: a dtype, or `auto`, the checkpoint's own where the compiled
/// backend computes in it ([`resolve_dtype`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DtypeChoice {
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

/// `--dtype` for the inference commands (ask, serve, eval, tokenize, bench).
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct DtypeArg {
    /// Float precision of weights, activations and the KV cache; norms and softmax accumulate
    /// in f32 and the MGVQ tokenizer stays f32. `auto`: the checkpoint's own dtype
    /// (config.json) where the backend computes in it, else f32.
    #[arg(long = "dtype", value_enum, default_value = "auto", env = "HTC_DTYPE")]
    pub choice: DtypeChoice,
    /// Storage of the key/value cache a decoding step reads, in f32 CPU inference (the cache
    /// is held on the host there): f16 halves its memory and what a step reads at long
    /// contexts, the arithmetic stays f32. Elsewhere the cache is kept in `--dtype`.
    #[arg(long = "kv-cache", value_enum, default_value = "f32", env = "HTC_KV_CACHE")]
    pub kv_cache: KvCacheChoice,
}

/// What `--kv-cache` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KvCacheChoice {
    #[default]
    F32,
    F16,
}

static KV_CACHE: std::sync::OnceLock<KvCacheChoice> = std::sync::OnceLock::new();

/// The key/value cache storage [`set_kv_cache`] recorded (f32 until it is called); the models
/// take it through `runtime::kv_dtype` and `Llama::with_kv_dtype`.
pub fn kv_cache() -> KvCacheChoice {
    KV_CACHE.get().copied().unwrap_or_default()
}

/// Records `--kv-cache` for the models built from now on (the first call wins).
pub fn set_kv_cache(choice: KvCacheChoice) {
    let _ = KV_CACHE.set(choice);
}

/// The dtype a checkpoint stores its weights in, from its `config.json` (`dtype`, or the older
/// `torch_dtype`, at the top or in `text_config`); `None` for GGUF files (dequantised to f32
/// when loaded), checkpoints that do not say, and unknown names.
pub fn checkpoint_dtype(model: &std::path::Path) -> Option<Dtype> {
    let text = std::fs::read_to_string(model.join("config.json")).ok()?;
    let cfg: serde_json::Value = serde_json::from_str(&text).ok()?;
    let named = |v: &serde_json::Value| {
        ["dtype", "torch_dtype"].iter().find_map(|k| v.get(*k).and_then(|d| d.as_str()).map(str::to_string))
    };
    let name = named(&cfg).or_else(|| cfg.get("text_config").and_then(named))?;
    match name.as_str() {
        "float32" => Some(Dtype::F32),
        "float16" => Some(Dtype::F16),
        "bfloat16" => Some(Dtype::Bf16),
        _ => None,
    }
}

/// The dtype to compute in for `choice` and the model at `model` (if any), and a note when
/// `auto` could not keep the checkpoint's own: bf16 on the candle CPU backend, which has no
/// bf16 matrix product, becomes f32.
pub fn resolve_dtype(choice: DtypeChoice, model: Option<&std::path::Path>) -> (Dtype, Option<String>) {
    match choice {
        DtypeChoice::F32 => (Dtype::F32, None),
        DtypeChoice::F16 => (Dtype::F16, None),
        DtypeChoice::Bf16 => (Dtype::Bf16, None),
        DtypeChoice::Auto => match model.and_then(checkpoint_dtype) {
            Some(Dtype::Bf16) if !bf16_matmul() => (
                Dtype::F32,
                Some(format!(
                    "the checkpoint is bf16, which the {} backend cannot multiply: computing in f32 \
                     (--dtype f16 halves the memory)",
                    name()
                )),
            ),
            Some(d) => (d, None),
            None => (Dtype::F32, None),
        },
    }
}

/// Whether the compiled backend computes in bf16: cuda and flex do; candle's CPU matrix
/// product has no bf16, WGSL (wgpu) has no bf16 type, ndarray no half types.
fn bf16_matmul() -> bool {
    matches!(name(), "cuda" | "flex")
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
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
    if dtype == Dtype::Bf16 && name() == "candle" {
        anyhow::bail!(
            "--dtype bf16: the candle CPU backend has no bf16 matrix product; use --dtype f16 on the CPU \
             (or bf16 with `--features cuda`)"
        );
    }
    let int = <burn::tensor::ops::IntElem<Backend> as Element>::dtype();
    burn::tensor::set_default_dtypes::<Backend>(&device(), float, int).map_err(|e| {
        anyhow::anyhow!(
            "--dtype {}: the {} backend cannot compute in it ({e}); f16 runs on candle, flex, wgpu and cuda, \
             bf16 on cuda and flex",
            dtype.name(),
            name()
        )
    })?;
    let _ = DTYPE.set(dtype);
    Ok(())
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

/// Runs `f` on a thread of rayon's pool, the pool the CPU kernels and the decoder's split
/// products run on: the calling thread then computes a share of each parallel product instead
/// of sleeping until the pool's threads are done and being woken again, twice per product
/// (see docs/performance.md#llm-on-the-cpu). For model work only: a thread blocked in `f` is
/// one thread fewer for the pool.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// mimalloc's `mi_option_purge_delay`: its place in the `mi_option_e` enum of `mimalloc.h`
/// (the same in mimalloc v2 and v3; the bindings name no constant for it, so
/// `tests/allocator.rs` checks that this index is the one `MIMALLOC_PURGE_DELAY` sets).
pub const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps the memory mimalloc frees committed for reuse, where by default it hands it back to
/// the kernel after a purge delay of a few milliseconds. Every layer of a prefill allocates and frees
/// the same large buffers (the attention scores of 2,000 tokens are 144 MB), further apart
/// than that delay, and would get them back as fresh pages the kernel has to zero
/// (`clear_page_erms`); keeping them makes prefill and decoding faster (figures in
/// docs/performance.md#llm-on-the-cpu). The price: the process keeps its peak heap (see
/// docs/performance.md#memory). mimalloc's own `MIMALLOC_PURGE_DELAY` (milliseconds)
/// overrides this when set. Call it first thing in `main`, before any thread starts
/// (mimalloc's option setter is not thread safe).
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain store into mimalloc's option table, made before other threads exist.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_with(config: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("htc-dtype-{}-{}", std::process::id(), config.len()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), config).unwrap();
        dir
    }

    #[test]
    fn auto_keeps_the_checkpoints_dtype_where_the_backend_computes_in_it() {
        let f16 = model_with(r#"{"dtype": "float16"}"#);
        let bf16 = model_with(r#"{"model_type": "llava", "text_config": {"torch_dtype": "bfloat16"}}"#);
        let f32 = model_with(r#"{"torch_dtype": "float32", "x": 1}"#);
        let silent = model_with(r#"{"model_type": "llama", "vocab_size": 3}"#);
        assert_eq!(checkpoint_dtype(&f16), Some(Dtype::F16));
        assert_eq!(checkpoint_dtype(&bf16), Some(Dtype::Bf16));
        assert_eq!(checkpoint_dtype(&f32), Some(Dtype::F32));
        assert_eq!(checkpoint_dtype(&silent), None);
        assert_eq!(checkpoint_dtype(std::path::Path::new("model.gguf")), None);
        assert_eq!(resolve_dtype(DtypeChoice::Auto, Some(&f16)), (Dtype::F16, None));
        assert_eq!(resolve_dtype(DtypeChoice::Auto, Some(&silent)), (Dtype::F32, None));
        assert_eq!(resolve_dtype(DtypeChoice::Auto, None), (Dtype::F32, None));
        let (d, note) = resolve_dtype(DtypeChoice::Auto, Some(&bf16));
        if bf16_matmul() {
            assert_eq!((d, note), (Dtype::Bf16, None));
        } else {
            assert_eq!(d, Dtype::F32);
            assert!(note.unwrap().contains("the checkpoint is bf16"));
        }
        // An explicit choice wins over the checkpoint.
        assert_eq!(resolve_dtype(DtypeChoice::F32, Some(&f16)), (Dtype::F32, None));
        assert_eq!(resolve_dtype(DtypeChoice::F16, Some(&f32)), (Dtype::F16, None));
        for d in [f16, bf16, f32, silent] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
