//! The decoding core shared by `htc ask` and the server's engine: a [`Sequence`] is one answer
//! being generated (its KV cache, next RoPE position, sampler and stop ids). It is prefilled
//! from a [`Prompt`], then advanced one token at a time, alone ([`Sequence::step`]) or together
//! with others ([`step_batch`], micro-batching). [`generate`] and [`generate_from`] run a
//! whole answer with a per-token callback.

use std::ops::ControlFlow;

use anyhow::{anyhow, Result};
use burn::tensor::{backend::Backend, Tensor};
use rand::{rngs::StdRng, SeedableRng};

use super::sampling::{sample, Sampling};
use crate::models::llama::{KvCache, Llama, Prompt, Step};
use crate::text::TextTokenizer;

/// Prefill logits of every prompt position: `(t, vocab, f32 [t, vocab])`.
pub type PrefillLogits = (usize, usize, Vec<f32>);

/// One answer being generated.
pub struct Sequence<B: Backend> {
    cache: KvCache<B>,
    /// RoPE position of the token fed next.
    next_position: usize,
    /// The token fed next (the last one accepted).
    last: u32,
    /// Tokens accepted so far.
    generated: usize,
    sampling: Sampling,
    rng: StdRng,
    stop_ids: Vec<u32>,
    stopped_at_eos: bool,
}

fn read_row<B: Backend>(logits: Tensor<B, 3>) -> Result<Vec<f32>> {
    logits.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| anyhow!("cannot read logits: {e:?}"))
}

impl<B: Backend> Sequence<B> {
    /// Runs `prompt` and returns the sequence with the logits of its last position (and of
    /// every position, when asked).
    pub fn prefill(
        llm: &Llama<B>, prompt: Prompt<B>, sampling: Sampling, stop_ids: Vec<u32>, want_prefill_logits: bool,
    ) -> Result<(Self, Vec<f32>, Option<PrefillLogits>)> {
        let Prompt { mut cache, embeds, first_position, mask } = prompt;
        let [_, t, d] = embeds.dims();
        let positions: Vec<usize> = (first_position..first_position + t).collect();
        let out = llm.forward(
            embeds,
            Step { positions: &positions, mask, want_attention: false, self_only: 0 },
            &mut cache,
        );
        let (last_row, all) = if want_prefill_logits {
            let all = llm.logits(out.hidden);
            let [_, _, v] = all.dims();
            let data = read_row(all)?;
            (data[(t - 1) * v..].to_vec(), Some((t, v, data)))
        } else {
            (read_row(llm.logits(out.hidden.slice([0..1, t - 1..t, 0..d])))?, None)
        };
        let seq = Self {
            cache,
            next_position: first_position + t,
            last: 0,
            generated: 0,
            rng: StdRng::seed_from_u64(sampling.seed),
            sampling,
            stop_ids,
            stopped_at_eos: false,
        };
        Ok((seq, last_row, all))
    }

    /// Picks the next token from `logits`: `None` when it is a stop id (the answer ends),
    /// else the token, which becomes the one fed next.
    pub fn accept(&mut self, logits: &[f32]) -> Option<u32> {
        let id = sample(logits, &self.sampling, &mut self.rng);
        if self.stop_ids.contains(&id) {
            self.stopped_at_eos = true;
            return None;
        }
        self.generated += 1;
        self.last = id;
        Some(id)
    }

    /// Whether the answer may take another token (below `max_new_tokens`, no stop id seen).
    pub fn wants_more(&self) -> bool {
        !self.stopped_at_eos && self.generated < self.sampling.max_new_tokens
    }

    pub fn generated(&self) -> usize {
        self.generated
    }

    pub fn stopped_at_eos(&self) -> bool {
        self.stopped_at_eos
    }

    /// Feeds the last accepted token and returns the next logits.
    pub fn step(&mut self, llm: &Llama<B>) -> Result<Vec<f32>> {
        let pos = [self.next_position];
        let o = llm.forward(
            llm.embed(&[self.last]),
            Step { positions: &pos, mask: None, want_attention: false, self_only: 0 },
            &mut self.cache,
        );
        self.next_position += 1;
        read_row(llm.logits(o.hidden))
    }
}

/// Feeds the last accepted token of every sequence in one batched step
/// ([`Llama::decode_batch`]) and returns each one's next logits.
pub fn step_batch<B: Backend>(llm: &Llama<B>, seqs: &mut [&mut Sequence<B>]) -> Result<Vec<Vec<f32>>> {
    let ids: Vec<u32> = seqs.iter().map(|s| s.last).collect();
    let positions: Vec<usize> = seqs.iter().map(|s| s.next_position).collect();
    let mut caches: Vec<KvCache<B>> =
        seqs.iter_mut().map(|s| std::mem::replace(&mut s.cache, KvCache::new(0))).collect();
    let logits = llm.decode_batch(&ids, &positions, &mut caches);
    for (s, c) in seqs.iter_mut().zip(caches) {
        s.cache = c;
        s.next_position += 1;
    }
    let vocab = llm.config().vocab_size;
    let rows = logits
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| anyhow!("cannot read logits: {e:?}"))?;
    Ok(rows.chunks(vocab).map(<[f32]>::to_vec).collect())
}

/// The ids that end an answer: the tokenizer's stop ids, else the model config's EOS ids.
pub fn stop_ids<B: Backend>(tokenizer: Option<&TextTokenizer>, llm: &Llama<B>) -> Vec<u32> {
    match tokenizer {
        Some(t) => t.eos_ids.clone(),
        None => llm.config().eos_token_ids.clone(),
    }
}

/// The result of [`generate`].
pub struct Generation {
    pub ids: Vec<u32>,
    /// f32 `[prefill_len, vocab]`, when asked for.
    pub prefill_logits: Option<PrefillLogits>,
    /// Whether generation stopped at an end-of-sequence token.
    pub stopped_at_eos: bool,
}

/// Runs the prompt `embeds: [1, t, d]` at positions `0..t` (causal), then generates. The
/// callback sees every new id and may stop generation with `ControlFlow::Break`.
pub fn generate<B: Backend>(
    llm: &Llama<B>, embeds: Tensor<B, 3>, stop_ids: &[u32], s: &Sampling, want_prefill_logits: bool,
    on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation> {
    let prompt = Prompt { cache: llm.new_cache(), embeds, first_position: 0, mask: None };
    generate_from(llm, prompt, stop_ids, s, want_prefill_logits, on_token)
}

/// Like [`generate`], continuing from a cache (a compressed image, for instance). Every
/// generated token sees all cached keys plus the prompt and earlier generated tokens.
pub fn generate_from<B: Backend>(
    llm: &Llama<B>, prompt: Prompt<B>, stop_ids: &[u32], s: &Sampling, want_prefill_logits: bool,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation> {
    let (mut seq, mut logits, prefill_logits) =
        Sequence::prefill(llm, prompt, *s, stop_ids.to_vec(), want_prefill_logits)?;
    let mut ids = Vec::new();
    while seq.wants_more() {
        let Some(id) = seq.accept(&logits) else { break };
        ids.push(id);
        if on_token(id).is_break() || !seq.wants_more() {
            break;
        }
        logits = seq.step(llm)?;
    }
    Ok(Generation { ids, prefill_logits, stopped_at_eos: seq.stopped_at_eos() })
}
