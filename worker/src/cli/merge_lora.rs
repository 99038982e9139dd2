//! `htc merge-lora`: folds a checkpoint's LoRA adapters into its LLM weights and writes a
//! plain model directory (no adapters, no `htc.lora`), as fast to serve as the base model.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::backend::{self, Backend};
use crate::formats::checkpoint::{AnyModel, Snapshot};
use crate::train::checkpoint::write_model_dir;

#[derive(clap::Args, Debug, Clone)]
pub struct MergeLoraArgs {
    /// A checkpoint with LoRA adapters (from `htc train --lora-rank`).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: MergeLoraArgs) -> Result<()> {
    if a.out.exists() {
        bail!("{} already exists; choose a new --out", a.out.display());
    }
    let snap = Snapshot::<Backend>::open(&a.model, &backend::device())?;
    let AnyModel::Htc { mut model, .. } = snap.model else {
        bail!("{} is not an HTC checkpoint", a.model.display())
    };
    if !model.llava.llm.has_lora() {
        bail!("{} has no LoRA adapters to merge", a.model.display());
    }
    model.llava.llm = model.llava.llm.merged();
    write_model_dir(&a.out, &a.model, &model, &snap.names, None)?;
    outln!("merged the LoRA adapters of {} into {}", a.model.display(), a.out.display());
    Ok(())
}
