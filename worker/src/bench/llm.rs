//! `htc bench --suite llm`: prefill and decode throughput of a real checkpoint's language
//! model, as the engine runs it (decoding steps split over every core on CPU backends) and
//! with one matmul per product. Decoding feeds fixed ids (no sampling) and computes the logits
//! of every step. `bench/bench-llm.sh` runs it beside llama.cpp on the same ids.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use super::{bench_ids, time, Out};
use crate::backend::{self, Backend};
use crate::models::llama::{KvCache, Llama, Step};

/// Every figure of the suite for the language model at `path` (a GGUF file or a checkpoint
/// directory), `reps` timed repetitions of each prefill.
pub fn run(out: Out, path: &Path, reps: usize) -> Result<()> {
    use crate::formats::checkpoint::Snapshot;
    let device = backend::device();
    let snap = Snapshot::<Backend>::open(path, &device)?;
    let base = snap.model.llm().clone();
    let c = base.config().clone();
    writeln!(
        out,
        "model: {} ({} layers, width {}, vocab {}), {}, key/value cache {} when decoding on the host, {} threads",
        path.display(),
        c.num_hidden_layers,
        c.hidden_size,
        c.vocab_size,
        backend::dtype().name(),
        crate::runtime::kv_dtype().name(),
        rayon::current_num_threads()
    )?;
    // A decoding step reads every weight once but the embedding table, of which it reads a row
    // (the output head has its own copy, tied or not).
    let params = burn::module::Module::num_params(&base).saturating_sub(c.vocab_size * c.hidden_size);
    let bytes = params * if backend::dtype() == backend::Dtype::F32 { 4 } else { 2 };
    let threads = backend::row_split();
    let s = read_once(bytes, threads, reps);
    writeln!(
        out,
        "llm weights read once, {bytes} bytes (a decoding step's reads from memory, as a plain sum) [{threads} threads]: {:.2} ms, {:.1} GB/s",
        s * 1e3,
        bytes as f64 / s / 1e9
    )?;
    let mut splits = vec![backend::row_split()];
    if splits[0] != 1 {
        splits.push(1);
    }
    // On the pool, as the engine runs its steps (see `backend::on_pool`).
    backend::on_pool(|| runs(out, &base, &splits, reps))
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

/// The timed runs of [`run`], for each row split.
fn runs(out: Out, base: &Llama<Backend>, splits: &[usize], reps: usize) -> Result<()> {
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
            writeln!(out, "llm prefill {n} tokens [{tag}]: {:.1} ms, {:.1} tok/s", s * 1e3, n as f64 / s)?;
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
            writeln!(
                out,
                "llm decode at context {ctx} [{tag}]: {:.2} ms/token, {:.1} tok/s",
                s * 1e3,
                1.0 / s
            )?;
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
            writeln!(
                out,
                "llm batched decode, 4 sequences at contexts 128-512 [{tag}]: {:.2} ms/step, {:.1} tok/s in all",
                s * 1e3,
                4.0 / s
            )?;
        }
    }
    Ok(())
}
