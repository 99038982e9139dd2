//! `htc bench --suite backend`: matmuls, a SmolLM2-width decoder's prefill and decoding steps
//! (with the few-row products split over every core and as one matmul each), and a decoding
//! step's attention over a cache on the host, for the compiled backend.

use anyhow::Result;
use burn::tensor::{Distribution, Tensor};

use super::{time, Out};
use crate::backend::{self, Backend};
use crate::formats::Loader;
use crate::kernels::linear::SPLIT_MAX_ROWS;
use crate::models::llama::{KvCache, Llama, Step};

/// Every figure of the suite, `reps` timed repetitions each.
pub fn run(out: Out, reps: usize) -> Result<()> {
    let device = backend::device();
    for n in [256usize, 512, 1024] {
        let a = Tensor::<Backend, 2>::random([n, n], Distribution::Default, &device);
        let b = Tensor::<Backend, 2>::random([n, n], Distribution::Default, &device);
        let s = time(reps, || {
            let _ = a.clone().matmul(b.clone()).into_data();
        });
        writeln!(
            out,
            "matmul {n}x{n}: {:.3} ms  ({:.1} GFLOP/s)",
            s * 1e3,
            2.0 * (n as f64).powi(3) / s / 1e9
        )?;
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
        writeln!(out, "-- products of at most {SPLIT_MAX_ROWS} rows split over {split} thread(s)")?;
        decoder(out, &llm, reps)?;
    }
    let w = Tensor::<Backend, 2>::random([cfg.hidden_size, 32000], Distribution::Default, &device);
    let x = Tensor::<Backend, 2>::random([1, cfg.hidden_size], Distribution::Default, &device);
    let s = time(reps, || {
        let _ = x.clone().matmul(w.clone()).into_data();
    });
    writeln!(out, "2D matvec 1x576 * 576x32000: {:.2} ms", s * 1e3)?;
    let x8 = Tensor::<Backend, 2>::random([8, cfg.hidden_size], Distribution::Default, &device);
    let s = time(reps, || {
        let _ = x8.clone().matmul(w.clone()).into_data();
    });
    writeln!(out, "2D matmul 8x576 * 576x32000: {:.2} ms", s * 1e3)?;
    host_attention(out, reps)
}

/// A decoding step's attention over a cache on the host (`kernels::kv_cache`) at SmolLM2's
/// shape and 2,000 cached positions, for every layer's cache (92 MB in f32, more than the
/// CPU's caches hold, as in a real step), on each instruction set this CPU runs.
fn host_attention(out: Out, reps: usize) -> Result<()> {
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
        writeln!(
            out,
            "host attention over {s} cached positions, {layers} layers of SmolLM2's shape, {threads} threads, {isa:?}: {:.2} ms per token{ratio}",
            t * 1e3
        )?;
    }
    Ok(())
}

/// Prefill, decode-step and output-head timings of `llm` (a SmolLM2-width decoder).
fn decoder(out: Out, llm: &Llama<Backend>, reps: usize) -> Result<()> {
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
    writeln!(out, "SmolLM2-width decoder, 4 layers, prefill 128 tokens: {:.2} ms", s * 1e3)?;
    let mut cache = llm.new_cache();
    prefill(128, &mut cache);
    let mut pos = 128;
    let s = time(reps, || {
        let _ = llm.logits(decode(pos, &mut cache)).into_data();
        pos += 1;
    });
    writeln!(out, "SmolLM2-width decoder, 4 layers, one cached decode step + logits: {:.2} ms", s * 1e3)?;
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
        writeln!(
            out,
            "SmolLM2-width decoder, 4 layers, one decode step at context {ctx}: {:.2} ms",
            s * 1e3
        )?;
    }
    let s = time(reps, || {
        let _ = decode(0, &mut llm.new_cache()).into_data();
    });
    writeln!(out, "decoder alone, one token, empty cache: {:.2} ms", s * 1e3)?;
    let h =
        Tensor::<Backend, 3>::random([1, 1, llm.config().hidden_size], Distribution::Default, &llm.device());
    let s = time(reps, || {
        let _ = llm.logits(h.clone()).into_data();
    });
    writeln!(out, "lm_head alone (576 -> 32000, one token): {:.2} ms", s * 1e3)?;
    Ok(())
}
