//! `htc eval`: answers a question set with an HTC model and scores it (see `eval`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use crate::eval::{answer_all, read_items, Score};

#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    pub dtype: crate::backend::DtypeArg,
    /// HTC (or LLaVA) checkpoint directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Questions: LLaVA conversation JSON (scored) or a LLaVA question file `.jsonl` (answered).
    #[arg(long)]
    pub data: PathBuf,
    /// Folder the questions' image paths are relative to.
    #[arg(long)]
    pub images: PathBuf,
    /// Answers, one JSON line per question (LLaVA's answer-file format).
    #[arg(long)]
    pub out: PathBuf,
    /// Questions answered together (one batched decoding step for all of them).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 16)]
    pub max_new_tokens: usize,
    /// Answer in this mode instead of the checkpoint's own: none, voco, htc, discrete, avgpool
    /// (an ablation: the weights are the checkpoint's, trained in its own mode).
    #[arg(long, value_enum)]
    pub mode: Option<super::Mode>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let mode = a.mode.map(Into::into);
    let items = read_items(&a.data, &a.images)?;
    let model_id = a.model.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?,
    );
    let bar = if a.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(items.len() as u64)
    };
    let mut score = Score::default();
    answer_all(&a.model, mode, &items, a.batch, a.max_new_tokens, |item, answer| {
        score.add(item, answer);
        let line = json!({
            "question_id": item.id, "prompt": item.question, "text": answer, "model_id": model_id,
            "metadata": {"reference": item.reference, "family": item.family, "kind": item.kind},
        });
        writeln!(out, "{line}")?;
        bar.inc(1);
        Ok(())
    })?;
    out.flush()?;
    bar.finish_and_clear();
    outln!("answered {} questions into {}", items.len(), a.out.display());
    if score.total > 0 {
        out!("{}", score.report());
    }
    Ok(())
}
