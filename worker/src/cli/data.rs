//! `htc data`: generates the project's own data sets (`htc data shapes`: ShapesVQA v1).

use std::path::PathBuf;

use anyhow::Result;

use crate::data;

#[derive(clap::Subcommand, Debug, Clone)]
pub enum DataCmd {
    /// ShapesVQA v1: scenes of 1-4 shapes and questions about them, in LLaVA's format.
    Shapes(ShapesArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct ShapesArgs {
    /// Output folder: `<split>.json` and `<split>/NNNNNN.png` (images relative to it).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of scenes (images).
    #[arg(long)]
    pub images: usize,
    /// Seed; with the split's name it fixes every scene and question.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// train, val or test.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Questions (records) per image.
    #[arg(long, default_value_t = 3)]
    pub questions_per_image: usize,
}

pub fn run(cmd: DataCmd) -> Result<()> {
    match cmd {
        DataCmd::Shapes(a) => {
            let s = data::write_shapes(&a.out, &a.split, a.images, a.seed, a.questions_per_image)?;
            let families: Vec<String> = s.per_family.iter().map(|(f, n)| format!("{f} {n}")).collect();
            println!(
                "wrote {} images and {} records to {} ({})",
                s.images,
                s.records,
                a.out.join(format!("{}.json", a.split)).display(),
                families.join(", ")
            );
            Ok(())
        }
    }
}
