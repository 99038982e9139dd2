//! `htc score`: scores a LLaVA answer file on a benchmark (see `eval::score`).

use std::path::PathBuf;

use anyhow::Result;

use crate::eval::score::{score, Benchmark};

#[derive(clap::Args, Debug, Clone)]
pub struct ScoreArgs {
    /// Which benchmark's rules and annotation format.
    #[arg(long, value_enum)]
    pub benchmark: Benchmark,
    /// The answers: a LLaVA answer file (JSON lines), as `htc eval` writes it.
    #[arg(long)]
    pub predictions: PathBuf,
    /// The benchmark's own annotations (a file or folder; docs/evaluation.md says which).
    #[arg(long)]
    pub annotations: PathBuf,
    /// Print one JSON object `{"benchmark", "score", "metrics"}` instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: ScoreArgs) -> Result<()> {
    let report = score(a.benchmark, &a.predictions, &a.annotations)?;
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    if a.json {
        outln!("{}", report.to_json());
    } else {
        out!("{}", report.table());
    }
    Ok(())
}
