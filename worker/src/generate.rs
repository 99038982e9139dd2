//! Decoding: prefill over input embeddings, then token-by-token generation with greedy or
//! temperature/top-p sampling, streaming every token through a callback.

use std::ops::ControlFlow;

use anyhow::Result;
use burn::tensor::{backend::Backend, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::models::llama::{KvCache, Llama, Step};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { max_new_tokens: 128, temperature: 0.0, top_p: 1.0, seed: 0 }
    }
}

impl Sampling {
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self { max_new_tokens, ..Default::default() }
    }
}

/// The result of [`generate`].
pub struct Generation {
    pub ids: Vec<u32>,
    /// f32 `[prefill_len, vocab]`, when asked for.
    pub prefill_logits: Option<(usize, usize, Vec<f32>)>,
    /// Whether generation stopped at an end-of-sequence token.
    pub stopped_at_eos: bool,
}

/// Index of the first maximum (as `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Temperature + nucleus sampling.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut StdRng) -> u32 {
    if s.temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f32)> =
        logits.iter().enumerate().map(|(i, &l)| (i as u32, ((l - max) / s.temperature).exp())).collect();
    let z: f32 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= z);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut keep = probs.len();
    if s.top_p < 1.0 {
        let mut cum = 0.0;
        for (i, p) in probs.iter().enumerate() {
            cum += p.1;
            if cum >= s.top_p {
                keep = i + 1;
                break;
            }
        }
    }
    let kept = &probs[..keep];
    let total: f32 = kept.iter().map(|p| p.1).sum();
    let mut r = rng.random::<f32>() * total;
    for p in kept {
        r -= p.1;
        if r <= 0.0 {
            return p.0;
        }
    }
    kept[keep - 1].0
}

fn last_row<B: Backend>(logits: Tensor<B, 3>) -> Result<Vec<f32>> {
    let [_, t, v] = logits.dims();
    let row = logits.slice([0..1, t - 1..t, 0..v]);
    row.into_data().to_vec::<f32>().map_err(|e| anyhow::anyhow!("cannot read logits: {e:?}"))
}

/// Runs the prompt `embeds: [1, t, d]` at positions `0..t` (causal), then generates. The
/// callback sees every new id and may stop generation with `ControlFlow::Break`.
pub fn generate<B: Backend>(
    llm: &Llama<B>,
    embeds: Tensor<B, 3>,
    stop_ids: &[u32],
    s: &Sampling,
    want_prefill_logits: bool,
    on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation> {
    let prompt = Prompt { cache: llm.new_cache(), embeds, first_position: 0, mask: None };
    generate_from(llm, prompt, stop_ids, s, want_prefill_logits, on_token)
}

/// A prompt to continue: what is already cached, the new input embeddings, the RoPE position
/// of the first of them, and their additive mask over `cached + new` keys (`None`: causal).
pub struct Prompt<B: Backend> {
    pub cache: KvCache<B>,
    pub embeds: Tensor<B, 3>,
    pub first_position: usize,
    pub mask: Option<Tensor<B, 2>>,
}

/// Like [`generate`], continuing from a cache (a compressed image, for instance). Every
/// generated token sees all cached keys plus the prompt and earlier generated tokens.
pub fn generate_from<B: Backend>(
    llm: &Llama<B>,
    prompt: Prompt<B>,
    stop_ids: &[u32],
    s: &Sampling,
    want_prefill_logits: bool,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation> {
    let Prompt { mut cache, embeds, first_position, mask } = prompt;
    let [_, t, _] = embeds.dims();
    let positions: Vec<usize> = (first_position..first_position + t).collect();
    let out = llm.forward(embeds, Step { positions: &positions, mask, want_attention: false }, &mut cache);
    let mut rng = StdRng::seed_from_u64(s.seed);
    let (mut next_logits, prefill_logits) = if want_prefill_logits {
        let all = llm.logits(out.hidden);
        let [_, _, v] = all.dims();
        let data = all
            .clone()
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("cannot read logits: {e:?}"))?;
        (last_row(all)?, Some((t, v, data)))
    } else {
        let [_, _, d] = out.hidden.dims();
        (last_row(llm.logits(out.hidden.slice([0..1, t - 1..t, 0..d])))?, None)
    };
    let mut ids = Vec::new();
    let mut stopped_at_eos = false;
    for i in 0..s.max_new_tokens {
        let id = sample(&next_logits, s, &mut rng);
        if stop_ids.contains(&id) {
            stopped_at_eos = true;
            break;
        }
        ids.push(id);
        if on_token(id).is_break() || i + 1 == s.max_new_tokens {
            break;
        }
        let pos = [first_position + t + i];
        let o = llm.forward(
            llm.embed(&[id]),
            Step { positions: &pos, mask: None, want_attention: false },
            &mut cache,
        );
        next_logits = last_row(llm.logits(o.hidden))?;
    }
    Ok(Generation { ids, prefill_logits, stopped_at_eos })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_first_max_and_top_p_truncates() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        let s = Sampling { max_new_tokens: 1, temperature: 1.0, top_p: 0.5, seed: 7 };
        let mut rng = StdRng::seed_from_u64(1);
        // One token holds 90% of the mass: top-p 0.5 must always pick it.
        let logits = [10.0, 7.8, 0.0, 0.0];
        for _ in 0..100 {
            assert_eq!(sample(&logits, &s, &mut rng), 0);
        }
        // Without truncation, a flat distribution visits every token.
        let s = Sampling { top_p: 1.0, ..s };
        let mut seen = [false; 4];
        for _ in 0..400 {
            seen[sample(&[0.0; 4], &s, &mut rng) as usize] = true;
        }
        assert!(seen.iter().all(|x| *x));
    }
}
