//! Training: the objective (answer-token cross-entropy under the HTC mask), the optimizer
//! (AdamW with parameter groups, global-norm clipping, warmup-cosine), LLaVA conversation data,
//! checkpoints that resume exactly, and the loop behind `htc train`; [`tokenizer`] trains the
//! MGVQ image tokenizer as a VQ-VAE (`htc train-tokenizer`); [`vision`] pretrains a
//! from-scratch vision tower on scene labels (`htc pretrain-vision`). Uses models, formats,
//! text and runtime; nothing here serves requests.

pub mod checkpoint;
pub mod data;
pub mod objective;
pub mod optim;
pub mod plot;
pub mod run;
pub mod step;
pub mod tokenizer;
pub mod vision;

/// A progress bar over `total` steps (`bar pos/len message ETA`), hidden unless `show`.
pub fn progress(total: usize, show: bool) -> indicatif::ProgressBar {
    let bar = if show { indicatif::ProgressBar::new(total as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ETA {eta}")
            .expect("a valid progress template"),
    );
    bar
}
