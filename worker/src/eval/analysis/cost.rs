//! What answering costs (`htc analyze cost`, the paper's cost tables): for one image and one
//! question on a model, the wall time of `full` (the whole sequence, prefix and question,
//! prefilled in one forward to the question's logits: [`Htc::full_text_logits`]), `compress`
//! (the image prefix run once: [`Htc::compress`]) and `followup` (the question answered
//! against the already compressed image: [`Htc::answer_logits`]), each warmed up once and then
//! timed `repeats` times (median and minimum), with the token counts behind them. Works in
//! every mode; `none` and `avgpool` keep every prefix position in the compressed cache.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use burn::tensor::backend::Backend;
use serde::Serialize;

use super::{image_batch, load_htc};
#[cfg(doc)]
use crate::models::htc::Htc;

/// Settings of `htc analyze cost`.
#[derive(Debug, Clone)]
pub struct CostRun {
    pub model: PathBuf,
    pub image: PathBuf,
    pub question: String,
    pub repeats: usize,
    /// The threads the model is tuned for ([`Htc::with_row_split`]).
    pub threads: usize,
}

/// Median and minimum of a set of timings, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Timing {
    pub median: f64,
    pub min: f64,
}

impl Timing {
    /// The median (the mean of the two middle values for an even count) and minimum of `ms`.
    pub fn of(ms: &[f64]) -> Self {
        let mut v = ms.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Self { median, min: v.first().copied().unwrap_or(f64::NAN) }
    }
}

/// The report `htc analyze cost` writes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostReport {
    pub mode: htc_shared::config::HtcMode,
    /// Positions of the sequence before the question (BOS, anchors, patches, `<voco>`).
    pub prefix_tokens: usize,
    pub question_tokens: usize,
    /// Positions the compressed image keeps for the question to attend to.
    pub kept_positions: usize,
    pub full_ms: Timing,
    pub compress_ms: Timing,
    pub followup_ms: Timing,
    pub repeats: usize,
    pub threads: usize,
}

/// Runs `f` once to warm up, then `repeats` times, and returns the timings.
fn timed(repeats: usize, sync: &dyn Fn() -> Result<()>, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    f()?;
    sync()?;
    let mut ms = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t0 = Instant::now();
        f()?;
        sync()?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Timing::of(&ms))
}

/// Times the three paths of `r` on `threads` threads; the caller runs it on a thread pool of
/// that size.
pub fn run<B: Backend>(r: &CostRun, device: &B::Device) -> Result<CostReport> {
    if r.repeats == 0 {
        anyhow::bail!("--repeats must be at least 1");
    }
    if !r.image.is_file() {
        anyhow::bail!("image {} does not exist", r.image.display());
    }
    let loaded = load_htc::<B>(&r.model, device)?;
    let tok = loaded.tokenizer.as_ref().ok_or_else(|| {
        anyhow!("{} has no tokenizer.json: the question cannot be tokenised", r.model.display())
    })?;
    let ids = tok.question_ids(&r.question, true)?;
    loaded.model.llava.llm.check_ids(&ids).context("the question")?;
    let loaded = loaded.tuned(r.threads);
    let name = r.image.to_string_lossy();
    let img = image_batch(&loaded, std::path::Path::new(""), &[name.as_ref()], device)?;
    let model = &loaded.model;
    let sync = || B::sync(device).map_err(|e| anyhow!("device sync failed: {e:?}"));
    let full = timed(r.repeats, &sync, || {
        model.full_text_logits(&img, &ids)?.into_data();
        Ok(())
    })?;
    let compress = timed(r.repeats, &sync, || model.compress(&img).map(drop))?;
    let c = model.compress(&img)?;
    let followup = timed(r.repeats, &sync, || {
        model.answer_logits(&c, &ids)?.into_data();
        Ok(())
    })?;
    Ok(CostReport {
        mode: model.config.mode,
        prefix_tokens: model.layout(0).len(),
        question_tokens: ids.len(),
        kept_positions: c.kept_positions.len(),
        full_ms: full,
        compress_ms: compress,
        followup_ms: followup,
        repeats: r.repeats,
        threads: r.threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_min() {
        assert_eq!(Timing::of(&[3.0, 1.0, 2.0]), Timing { median: 2.0, min: 1.0 });
        assert_eq!(Timing::of(&[4.0, 1.0, 2.0, 3.0]), Timing { median: 2.5, min: 1.0 });
    }
}
