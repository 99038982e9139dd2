//! `htc retention`: the paper's retention from three sets of scores (see `eval::retention`).

use std::path::PathBuf;

use anyhow::Result;

use crate::eval::retention::{read_scores, retention};

#[derive(clap::Args, Debug, Clone)]
pub struct RetentionArgs {
    /// Scores of the upper bound (every patch visible): a list of `htc score --json` outputs.
    #[arg(long)]
    pub upper: PathBuf,
    /// Scores of the lower bound (no image).
    #[arg(long)]
    pub lower: PathBuf,
    /// Scores of the model under test.
    #[arg(long)]
    pub model: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: RetentionArgs) -> Result<()> {
    let r = retention(&read_scores(&a.upper)?, &read_scores(&a.lower)?, &read_scores(&a.model)?)?;
    for (b, has) in &r.left_out {
        eprintln!("note: {b} is left out of the average: only in {}", has.join(", "));
    }
    if a.json {
        outln!("{}", r.to_json());
    } else {
        out!("{}", r.table());
    }
    Ok(())
}
