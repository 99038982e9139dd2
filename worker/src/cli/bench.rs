//! `htc bench`: figures for the compiled backend, printed as a table. Run the same command
//! built with each backend feature to compare them (`bench/bench-backends.sh`).

use std::time::Instant;

use anyhow::Result;
use burn::tensor::{Distribution, Tensor};

use crate::backend::{self, Backend};
use crate::formats::Loader;
use crate::kernels::linear::SPLIT_MAX_ROWS;
use crate::models::llama::{KvCache, Llama, Step};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub dtype: crate::backend::DtypeArg,
    /// Timed repetitions per measurement (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Which figures: `backend` (matmuls, decoder), `htc` (compress / answer / cached answer),
    /// `all` (both), `train` (training steps of one shape), `llm` (a checkpoint's prefill and
    /// decoding), `e2e` (one image and question end to end, stage by stage, per mode) or
    /// `memory` (the peak memory of one HTC answer in the current `--dtype`).
    #[arg(long, default_value = "all")]
    pub suite: String,
    /// `--suite train`: the model shape (tiny, mid; see `bench_train.rs`); `--suite e2e` and
    /// `memory`: tiny or 7b (LLaVA-1.5-7B's shape: CLIP ViT-L/14-336, a 7B LLaMA, the paper's MGVQ).
    #[arg(long, default_value = "tiny")]
    pub shape: String,
    /// `--suite e2e`: LLM layers (default: the shape's; fewer for a quick look).
    #[arg(long)]
    pub layers: Option<usize>,
    /// `--suite e2e`: CLIP layers (default: the shape's).
    #[arg(long)]
    pub vision_layers: Option<usize>,
    /// `--suite e2e`: tokens decoded after the question (decode speed).
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// `--suite e2e`: tokens in the question.
    #[arg(long, default_value_t = 32)]
    pub question_tokens: usize,
    /// `--suite e2e`: also write one JSON line per mode (and the peak memory) to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// `--suite train`: timed optimizer steps (after two warm-up steps).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// `--suite train`: split the batch into this many micro-batches, differentiated on as
    /// many threads at once (`htc train --threads`); 1 runs the batch whole.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// `--suite llm`: the language model to time (a GGUF file or a checkpoint directory).
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
}

fn time<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

pub fn run(args: BenchArgs) -> Result<()> {
    outln!("backend: {}", backend::name());
    match args.suite.as_str() {
        "backend" => backend_suite(&args),
        "htc" => htc_suite(&args),
        "all" => backend_suite(&args).and_then(|_| htc_suite(&args)),
        "train" => super::bench_train::run(&args.shape, args.steps.max(1), args.threads.max(1)),
        "llm" => llm_suite(&args),
        "e2e" | "memory" => {
            let e = super::bench_e2e::E2eArgs {
                shape: &args.shape,
                llm_layers: args.layers,
                vision_layers: args.vision_layers,
                reps: args.reps,
                new_tokens: args.new_tokens,
                question_tokens: args.question_tokens,
                json: args.json.as_deref(),
            };
            if args.suite == "e2e" {
                super::bench_e2e::run(e)
            } else {
                super::bench_e2e::memory(e)
            }
        }
        other => anyhow::bail!("unknown --suite `{other}` (backend, htc, all, train, llm, e2e, memory)"),
    }
}

/// Compress, answer without the cache (one full forward of prefix + question) and answer
/// from the compressed cache, for a tiny HTC model and a 7B-width one with few layers.
fn htc_suite(args: &BenchArgs) -> Result<()> {
    use crate::models::htc::{Htc, ImageTensors};
    use crate::models::llava::{self, Layout, Llava};
    use htc_shared::config::HtcConfig;

    let device = backend::device();
    let question: Vec<u32> = (0..32).map(|i| 10 + i).collect();
    let shapes = [
        (
            "tiny (CLIP 64w/2L @336, LLM 128w/2L, MGVQ f16 widths/8, 1 block per stage)",
            64usize,
            2usize,
            128usize,
            256usize,
            2usize,
            8usize,
            512usize,
        ),
        (
            "7B-width (CLIP 1024w/2L @336, LLM 4096w/2L, MGVQ f16 widths, 1 block per stage)",
            1024,
            2,
            4096,
            11008,
            2,
            1,
            8192,
        ),
    ];
    for (name, vw, vl, d, inter, layers, mgvq_div, hidden) in shapes {
        let vision = super::bench_e2e::clip336(vw, vl);
        let text = htc_shared::config::LlamaConfig::from_json(&serde_json::json!({
            "vocab_size": 32000, "hidden_size": d, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": d / 128, "num_key_value_heads": d / 128, "rms_norm_eps": 1e-5
        }))?;
        let lc = llava::Config {
            layout: Layout::LlavaHf,
            text,
            vision,
            image_token_id: 31999,
            select_layer: -2,
            projector_mlp: true,
        };
        let mut mc = htc_shared::mgvq::Config::f16c32_g8();
        mc.width_list = mc.width_list.iter().map(|w| (w / mgvq_div).max(32)).collect();
        mc.depth_list = vec![0, 1, 1, 1, 1];
        let hc = HtcConfig::paper(mc.clone(), hidden);
        let src = crate::formats::random::random_htc(&lc, &hc, 0);
        let vb = Loader::<Backend>::new(&src, &device);
        // Tuned for the backend as the server and `htc ask` tune it.
        let model = Htc::load(&vb, Llava::load(&vb, &lc)?, &hc)?
            .with_row_split(backend::row_split())
            .with_kv_dtype(crate::runtime::kv_dtype());
        drop(src);
        let img = ImageTensors {
            clip: Tensor::random([1, 3, 336, 336], Distribution::Normal(0.0, 1.0), &device),
            mgvq: Some(Tensor::random([1, 3, 336, 336], Distribution::Uniform(-1.0, 1.0), &device)),
            codes: None,
        };
        let reps = args.reps.min(3);
        outln!("HTC {name}");
        let compress = time(reps, || {
            let _ = model.compress(&img).expect("compress");
        });
        let c = model.compress(&img)?;
        let full = time(reps, || {
            let _ = model.full_text_logits(&img, &question).expect("full").into_data();
        });
        let cached = time(reps, || {
            let _ = model.answer_logits(&c, &question).expect("answer").into_data();
        });
        outln!("  compress (CLIP + MGVQ + 582-token prefix): {:.1} ms", compress * 1e3);
        outln!("  answer 32 tokens, full sequence (no cache): {:.1} ms", full * 1e3);
        outln!(
            "  answer 32 tokens from the compressed image: {:.1} ms  ({:.1}x faster than the full sequence)",
            cached * 1e3,
            full / cached
        );
    }
    Ok(())
}

fn backend_suite(args: &BenchArgs) -> Result<()> {
    let device = backend::device();
    for n in [256usize, 512, 1024] {
        let a = Tensor::<Backend, 2>::random([n, n], Distribution::Default, &device);
        let b = Tensor::<Backend, 2>::random([n, n], Distribution::Default, &device);
        let s = time(args.reps, || {
            let _ = a.clone().matmul(b.clone()).into_data();
        });
        outln!("matmul {n}x{n}: {:.3} ms  ({:.1} GFLOP/s)", s * 1e3, 2.0 * (n as f64).powi(3) / s / 1e9);
    }
    let cfg = htc_shared::config::LlamaConfig::from_json(&serde_json::json!({
        "vocab_size": 32000, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 4,
        "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-5
    }))?;
    let src = crate::formats::random::random_llama(&cfg, 0);
    let llm = Llama::<Backend>::load(
        &Loader::new(&src, &device).pp("model"),
        &Loader::new(&src, &device).pp("lm_head"),
        &cfg,
    )?;
    // Decoding steps as the engine runs them on CPU backends (the few-row products split over
    // every core) and as one matmul each: the same model, so the ratio is the split's gain.
    let cores = rayon::current_num_threads();
    for split in [1, cores] {
        let llm = llm.clone().with_row_split(split);
        outln!("-- products of at most {SPLIT_MAX_ROWS} rows split over {split} thread(s)");
        decoder_suite(&llm, args.reps)?;
    }
    let w = Tensor::<Backend, 2>::random([cfg.hidden_size, 32000], Distribution::Default, &device);
    let x = Tensor::<Backend, 2>::random([1, cfg.hidden_size], Distribution::Default, &device);
    let s = time(args.reps, || {
        let _ = x.clone().matmul(w.clone()).into_data();
    });
    outln!("2D matvec 1x576 * 576x32000: {:.2} ms", s * 1e3);
    let x8 = Tensor::<Backend, 2>::random([8, cfg.hidden_size], Distribution::Default, &device);
    let s = time(args.reps, || {
        let _ = x8.clone().matmul(w.clone()).into_data();
    });
    outln!("2D matmul 8x576 * 576x32000: {:.2} ms", s * 1e3);
    host_attention(args.reps)?;
    Ok(())
}

/// A decoding step's attention over a cache on the host (`kernels::kv_cache`) at SmolLM2's
/// shape and 2,000 cached positions, for every layer's cache (92 MB in f32, more than the
/// CPU's caches hold, as in a real step), on each instruction set this CPU runs.
fn host_attention(reps: usize) -> Result<()> {
    use crate::kernels::kv_cache::{HostKv, Isa, KvDtype};
    let (layers, kvh, rep, hd, s) = (30, 3, 3, 64, 2000);
    let caches: Vec<HostKv> = (0..layers)
        .map(|l| {
            let x: Vec<f32> = (0..kvh * s * hd).map(|i| ((i * 31 + l) % 97) as f32 / 97.0 - 0.5).collect();
            HostKv::new(KvDtype::F32, kvh, hd, &x, &x)
        })
        .collect();
    let q: Vec<f32> = (0..kvh * rep * hd).map(|i| (i % 7) as f32 / 7.0 - 0.5).collect();
    let threads = rayon::current_num_threads();
    let mut first = None;
    for isa in Isa::available() {
        let t = time(reps, || {
            for c in &caches {
                std::hint::black_box(c.attend_on(isa, &q, rep, None, 0.125, threads, false));
            }
        });
        let ratio = first.map_or(String::new(), |f: f64| format!(" ({:.2}x the first)", t / f));
        first.get_or_insert(t);
        outln!(
            "host attention over {s} cached positions, {layers} layers of SmolLM2's shape, {threads} threads, {isa:?}: {:.2} ms per token{ratio}",
            t * 1e3
        );
    }
    Ok(())
}

/// Prefill, decode-step and output-head timings of `llm` (a SmolLM2-width decoder).
fn decoder_suite(llm: &Llama<Backend>, reps: usize) -> Result<()> {
    // A prompt of `n` tokens run through `cache`; one decoded token at `pos`.
    let prefill = |n: usize, cache: &mut KvCache<Backend>| {
        let ids: Vec<u32> = (0..n).map(|i| (i * 7 % 32000) as u32).collect();
        let positions: Vec<usize> = (0..n).collect();
        let o = llm.forward(
            llm.embed(&ids),
            Step { positions: &positions, mask: None, want_attention: false, self_only: 0 },
            cache,
        );
        let _ = o.hidden.into_data();
    };
    let decode = |pos: usize, cache: &mut KvCache<Backend>| {
        let p = [pos];
        let o = llm.forward(
            llm.embed(&[5]),
            Step { positions: &p, mask: None, want_attention: false, self_only: 0 },
            cache,
        );
        o.hidden
    };
    let s = time(reps, || prefill(128, &mut llm.new_cache()));
    outln!("SmolLM2-width decoder, 4 layers, prefill 128 tokens: {:.2} ms", s * 1e3);
    let mut cache = llm.new_cache();
    prefill(128, &mut cache);
    let mut pos = 128;
    let s = time(reps, || {
        let _ = llm.logits(decode(pos, &mut cache)).into_data();
        pos += 1;
    });
    outln!("SmolLM2-width decoder, 4 layers, one cached decode step + logits: {:.2} ms", s * 1e3);
    // Decoding should cost about the same at any context length: time one step (decoder
    // alone) after prefills of growing length.
    for ctx in [16usize, 512, 2000] {
        let mut cache = llm.new_cache();
        prefill(ctx, &mut cache);
        let mut pos = ctx;
        let s = time(reps, || {
            let _ = decode(pos, &mut cache).into_data();
            pos += 1;
        });
        outln!("SmolLM2-width decoder, 4 layers, one decode step at context {ctx}: {:.2} ms", s * 1e3);
    }
    let s = time(reps, || {
        let _ = decode(0, &mut llm.new_cache()).into_data();
    });
    outln!("decoder alone, one token, empty cache: {:.2} ms", s * 1e3);
    let h =
        Tensor::<Backend, 3>::random([1, 1, llm.config().hidden_size], Distribution::Default, &llm.device());
    let s = time(reps, || {
        let _ = llm.logits(h.clone()).into_data();
    });
    outln!("lm_head alone (576 -> 32000, one token): {:.2} ms", s * 1e3);
    Ok(())
}

/// The prompt token ids every side of the LLM benchmark feeds (`bench/bench-llm.sh` gives
/// the same to llama.cpp): a fixed walk over the vocabulary, clear of the first 100 ids.
pub fn bench_ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| (100 + (i * 7919) % (vocab - 100)) as u32).collect()
}

/// Prefill and decode throughput of a real checkpoint's language model, as the engine runs it
/// (decoding steps split over every core on CPU backends) and with one matmul per product.
/// Decoding feeds fixed ids (no sampling) and computes the logits of every step.
fn llm_suite(args: &BenchArgs) -> Result<()> {
    use crate::formats::checkpoint::Snapshot;
    let path = args.model.as_ref().ok_or_else(|| anyhow::anyhow!("--suite llm needs --model PATH"))?;
    let device = backend::device();
    let snap = Snapshot::<Backend>::open(path, &device)?;
    let base = snap.model.llm().clone();
    let c = base.config().clone();
    outln!(
        "model: {} ({} layers, width {}, vocab {}), {}, key/value cache {} when decoding on the host, {} threads",
        path.display(),
        c.num_hidden_layers,
        c.hidden_size,
        c.vocab_size,
        backend::dtype().name(),
        crate::runtime::kv_dtype().name(),
        rayon::current_num_threads()
    );
    // A decoding step reads every weight once but the embedding table, of which it reads a row
    // (the output head has its own copy, tied or not).
    let params = burn::module::Module::num_params(&base).saturating_sub(c.vocab_size * c.hidden_size);
    let bytes = params * if backend::dtype() == backend::Dtype::F32 { 4 } else { 2 };
    let threads = backend::row_split();
    let s = read_once(bytes, threads, args.reps);
    outln!(
        "llm weights read once, {bytes} bytes (a decoding step's reads from memory, as a plain sum) [{threads} threads]: {:.2} ms, {:.1} GB/s",
        s * 1e3,
        bytes as f64 / s / 1e9
    );
    let mut splits = vec![backend::row_split()];
    if splits[0] != 1 {
        splits.push(1);
    }
    // On the pool, as the engine runs its steps (see `backend::on_pool`).
    backend::on_pool(|| llm_runs(&base, &splits, args.reps))?;
    Ok(())
}

/// Seconds to read `bytes` of f32s once from memory (a plain sum), cut into `threads` ranges on
/// the team a decoding step splits its products over: the cost of a step's reads of the
/// weights alone, which bounds how fast it can be (a step can come out a little faster, since
/// part of its weights may stay in the last-level cache between steps). The buffer is larger
/// than the caches, as the weights are.
fn read_once(bytes: usize, threads: usize, reps: usize) -> f64 {
    use wide::f32x8;
    let data = vec![1.0f32; bytes / 4];
    let parts = threads.max(1);
    time(reps, || {
        let sums = crate::kernels::team::map(parts, |i| {
            let chunk = &data[i * data.len() / parts..(i + 1) * data.len() / parts];
            // Four chains, so the adds do not wait on each other.
            let mut acc = [f32x8::ZERO; 4];
            let mut blocks = chunk.chunks_exact(32);
            for b in &mut blocks {
                for (k, a) in acc.iter_mut().enumerate() {
                    *a += f32x8::new(b[k * 8..k * 8 + 8].try_into().expect("eight lanes"));
                }
            }
            (acc[0] + acc[1] + acc[2] + acc[3]).reduce_add() + blocks.remainder().iter().sum::<f32>()
        });
        // The sums are kept, so the reads cannot be left out.
        std::hint::black_box(sums);
    })
}

/// The timed runs of [`llm_suite`], for each row split.
fn llm_runs(base: &Llama<Backend>, splits: &[usize], reps: usize) -> Result<()> {
    let c = base.config();
    for &split in splits {
        let llm = base.clone().with_row_split(split).with_kv_dtype(crate::runtime::kv_dtype());
        let tag = if split == 1 {
            "one matmul per product".to_string()
        } else {
            format!("decode split over {split} threads")
        };
        let prefill = |n: usize| {
            let ids = bench_ids(n, c.vocab_size);
            let positions: Vec<usize> = (0..n).collect();
            let mut cache = llm.new_cache();
            let o = llm.forward(
                llm.embed(&ids),
                Step { positions: &positions, mask: None, want_attention: false, self_only: 0 },
                &mut cache,
            );
            // The last position's logits, as a generation would need.
            let [_, t, d] = o.hidden.dims();
            let _ = llm.logits(o.hidden.slice([0..1, t - 1..t, 0..d])).into_data();
            cache
        };
        for n in [128usize, 512, 2000] {
            if n > c.max_position_embeddings {
                continue;
            }
            let s = time(reps, || {
                let _ = prefill(n);
            });
            outln!("llm prefill {n} tokens [{tag}]: {:.1} ms, {:.1} tok/s", s * 1e3, n as f64 / s);
        }
        for ctx in [128usize, 512, 2000] {
            if ctx + 64 > c.max_position_embeddings {
                continue;
            }
            let mut cache = prefill(ctx);
            let feed = bench_ids(64, c.vocab_size);
            let t = Instant::now();
            for (i, &id) in feed.iter().enumerate() {
                let p = [ctx + i];
                let o = llm.forward(
                    llm.embed(&[id]),
                    Step { positions: &p, mask: None, want_attention: false, self_only: 0 },
                    &mut cache,
                );
                let _ = llm.logits(o.hidden).into_data();
            }
            let s = t.elapsed().as_secs_f64() / feed.len() as f64;
            outln!("llm decode at context {ctx} [{tag}]: {:.2} ms/token, {:.1} tok/s", s * 1e3, 1.0 / s);
        }
        // The server's micro-batched decoding: 4 sequences with contexts of 128..512 tokens
        // advanced together, 32 steps, every row's logits read back.
        let lens = [128usize, 256, 384, 512];
        if lens[3] + 32 <= c.max_position_embeddings {
            let mut caches: Vec<KvCache<Backend>> = lens.iter().map(|&n| prefill(n)).collect();
            let feed = bench_ids(32, c.vocab_size);
            let t = Instant::now();
            for (i, &id) in feed.iter().enumerate() {
                let ids = [id; 4];
                let positions: Vec<usize> = lens.iter().map(|&n| n + i).collect();
                let _ = llm.decode_batch(&ids, &positions, &mut caches).into_data();
            }
            let s = t.elapsed().as_secs_f64() / feed.len() as f64;
            outln!(
                "llm batched decode, 4 sequences at contexts 128-512 [{tag}]: {:.2} ms/step, {:.1} tok/s in all",
                s * 1e3,
                4.0 / s
            );
        }
    }
    Ok(())
}
