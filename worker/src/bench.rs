//! `htc bench`: figures for the compiled backend, printed as a table. Run the same command
//! built with each backend feature to compare them (`scripts/bench-backends.sh`).

use std::time::Instant;

use anyhow::Result;
use burn::tensor::{Distribution, Tensor};

use crate::backend::{self, Backend};
use crate::models::llama::{Llama, Step};
use crate::weights::Loader;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Timed repetitions per measurement (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
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
    let device = backend::device();
    println!("backend: {}", backend::name());
    for n in [256usize, 512, 1024] {
        let a = Tensor::<Backend, 2>::random([n, n], Distribution::Default, &device);
        let b = Tensor::<Backend, 2>::random([n, n], Distribution::Default, &device);
        let s = time(args.reps, || {
            let _ = a.clone().matmul(b.clone()).into_data();
        });
        println!("matmul {n}x{n}: {:.3} ms  ({:.1} GFLOP/s)", s * 1e3, 2.0 * (n as f64).powi(3) / s / 1e9);
    }
    let cfg = htc_shared::config::LlamaConfig::from_json(&serde_json::json!({
        "vocab_size": 32000, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 4,
        "num_attention_heads": 9, "num_key_value_heads": 3, "rms_norm_eps": 1e-5
    }))?;
    let src = crate::demo::random_llama(&cfg, 0);
    let llm = Llama::<Backend>::load(&Loader::new(&src, &device).pp("model"), &Loader::new(&src, &device).pp("lm_head"), &cfg)?;
    let ids: Vec<u32> = (0..128).map(|i| (i * 7 % 32000) as u32).collect();
    let positions: Vec<usize> = (0..ids.len()).collect();
    let s = time(args.reps, || {
        let mut cache = llm.new_cache();
        let o = llm.forward(llm.embed(&ids), Step { positions: &positions, mask: None, want_attention: false }, &mut cache);
        let _ = o.hidden.into_data();
    });
    println!("SmolLM2-width decoder, 4 layers, prefill 128 tokens: {:.2} ms", s * 1e3);
    let mut cache = llm.new_cache();
    let _ = llm.forward(llm.embed(&ids), Step { positions: &positions, mask: None, want_attention: false }, &mut cache);
    let mut pos = ids.len();
    let s = time(args.reps, || {
        let p = [pos];
        let o = llm.forward(llm.embed(&[5]), Step { positions: &p, mask: None, want_attention: false }, &mut cache);
        let _ = llm.logits(o.hidden).into_data();
        pos += 1;
    });
    println!("SmolLM2-width decoder, 4 layers, one cached decode step + logits: {:.2} ms", s * 1e3);
    let h = Tensor::<Backend, 3>::random([1, 1, cfg.hidden_size], Distribution::Default, &device);
    let s = time(args.reps, || {
        let _ = llm.logits(h.clone()).into_data();
    });
    println!("lm_head alone (576 -> 32000, one token): {:.2} ms", s * 1e3);
    let w = Tensor::<Backend, 2>::random([cfg.hidden_size, 32000], Distribution::Default, &device);
    let x = Tensor::<Backend, 2>::random([1, cfg.hidden_size], Distribution::Default, &device);
    let s = time(args.reps, || {
        let _ = x.clone().matmul(w.clone()).into_data();
    });
    println!("2D matvec 1x576 * 576x32000: {:.2} ms", s * 1e3);
    let x8 = Tensor::<Backend, 2>::random([8, cfg.hidden_size], Distribution::Default, &device);
    let s = time(args.reps, || {
        let _ = x8.clone().matmul(w.clone()).into_data();
    });
    println!("2D matmul 8x576 * 576x32000: {:.2} ms", s * 1e3);
    let s = time(args.reps, || {
        let p = [pos];
        let o = llm.forward(llm.embed(&[5]), Step { positions: &p, mask: None, want_attention: false }, &mut llm.new_cache());
        let _ = o.hidden.into_data();
    });
    println!("decoder alone, one token, empty cache: {:.2} ms", s * 1e3);
    Ok(())
}
