//! `htc report`: regenerates `docs/results.md` and its figures from the experiments' raw JSON
//! (see `eval::report`).

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// The results directory `scripts/experiments.sh` writes (`setup.json`, `runs/`, `probe/`,
    /// `attention/`, `cost/`, `limits.md`); the figures are written into it as PNG.
    #[arg(long, default_value = "docs/results")]
    pub results: PathBuf,
    /// The page to write.
    #[arg(long, default_value = "docs/results.md")]
    pub out: PathBuf,
}

pub fn run(a: ReportArgs) -> Result<()> {
    let written = crate::eval::report::write(&a.results, &a.out)?;
    for w in &written.warnings {
        eprintln!("warning: {w}");
    }
    outln!("wrote {} ({} figures)", a.out.display(), written.figures.len());
    for f in &written.figures {
        outln!("wrote {}", f.display());
    }
    Ok(())
}
