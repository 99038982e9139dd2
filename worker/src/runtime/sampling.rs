//! How the next token is chosen: [`Sampling`] settings with the one validation policy every
//! front end applies, greedy [`argmax`] and temperature/nucleus [`sample`].

use rand::{rngs::StdRng, Rng};

/// The most tokens one answer may ask for.
pub const MAX_NEW_TOKENS: usize = 4096;
/// The highest sampling temperature accepted.
pub const MAX_TEMPERATURE: f32 = 100.0;

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

    /// The one policy for every front end (CLI, WebSocket, OpenAI): `top_p` in (0, 1],
    /// `temperature` in [0, 100], `max_new_tokens` in 1..=4096. The message names all three.
    pub fn validate(&self) -> Result<(), String> {
        let ok = self.top_p > 0.0
            && self.top_p <= 1.0
            && (0.0..=MAX_TEMPERATURE).contains(&self.temperature)
            && (1..=MAX_NEW_TOKENS).contains(&self.max_new_tokens);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "sampling out of range: top_p in (0, 1], temperature in [0, {MAX_TEMPERATURE}], \
                 max_new_tokens in 1..={MAX_NEW_TOKENS} (got top_p {}, temperature {}, max_new_tokens {})",
                self.top_p, self.temperature, self.max_new_tokens
            ))
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

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

    #[test]
    fn one_validation_policy_names_the_bounds() {
        assert!(Sampling::greedy(1).validate().is_ok());
        assert!(Sampling { temperature: 100.0, top_p: 1.0, ..Sampling::greedy(4096) }.validate().is_ok());
        for bad in [
            Sampling { top_p: 0.0, ..Sampling::greedy(8) },
            Sampling { top_p: 1.5, ..Sampling::greedy(8) },
            Sampling { temperature: -1.0, ..Sampling::greedy(8) },
            Sampling { temperature: f32::NAN, ..Sampling::greedy(8) },
            Sampling::greedy(0),
            Sampling::greedy(4097),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.contains("top_p in (0, 1]") && e.contains("max_new_tokens in 1..=4096"), "{e}");
        }
    }
}
