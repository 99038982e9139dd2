//! `htc data`: generates the project's own data sets (`htc data shapes`: ShapesVQA v1) and
//! word-level tokenizers for them (`htc data vocab`).

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::data;

#[derive(clap::Subcommand, Debug, Clone)]
pub enum DataCmd {
    /// ShapesVQA v1: scenes of 1-4 shapes and questions about them, in LLaVA's format.
    Shapes(ShapesArgs),
    /// A word-level tokenizer.json over the words of LLaVA conversation files and the chat
    /// template (for models trained on a closed vocabulary).
    Vocab(VocabArgs),
    /// A copy of a LLaVA conversation file whose every image is one blank image (ShapesVQA's
    /// background colour, the size of the first record's image): the question-only lower
    /// bound of an experiment, trained and evaluated like any other data.
    Blank(BlankArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct BlankArgs {
    /// LLaVA conversation JSON.
    #[arg(long)]
    pub data: PathBuf,
    /// Folder the records' image paths are relative to (the blank takes the first one's size).
    #[arg(long)]
    pub images: PathBuf,
    /// Output folder: `blank.png` and the records, under --data's file name.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug, Clone)]
pub struct VocabArgs {
    /// LLaVA conversation JSON files (repeat the option for several).
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// Where to write tokenizer.json.
    #[arg(long)]
    pub out: PathBuf,
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
    /// One multi-turn record per image (all its questions as turns) instead of one record
    /// per question: the same scenes and questions, in the form training uses best.
    #[arg(long)]
    pub grouped: bool,
    /// Add "Describe the image." with a description of every object (a dense training
    /// target; not a ShapesVQA question): one more record per image, or with --grouped the
    /// last turn of its conversation.
    #[arg(long)]
    pub describe: bool,
}

pub fn run(cmd: DataCmd) -> Result<()> {
    match cmd {
        DataCmd::Shapes(a) => {
            let s = data::write_shapes(
                &a.out,
                &a.split,
                a.images,
                a.seed,
                a.questions_per_image,
                a.grouped,
                a.describe,
            )?;
            let families: Vec<String> = s.per_family.iter().map(|(f, n)| format!("{f} {n}")).collect();
            outln!(
                "wrote {} images and {} records to {} ({})",
                s.images,
                s.records,
                a.out.join(format!("{}.json", a.split)).display(),
                families.join(", ")
            );
            Ok(())
        }
        DataCmd::Blank(a) => {
            let n = data::write_blank(&a.data, &a.images, &a.out)?;
            outln!("wrote {n} records over one blank image to {}", a.out.display());
            Ok(())
        }
        DataCmd::Vocab(a) => {
            let mut texts = Vec::new();
            for path in &a.data {
                let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
                let records: Vec<serde_json::Value> = serde_json::from_slice(&raw).with_context(|| {
                    format!("{} is not a JSON list of LLaVA conversation records", path.display())
                })?;
                for r in &records {
                    for t in r["conversations"].as_array().into_iter().flatten() {
                        texts.extend(t["value"].as_str().map(crate::data::llava::strip_placeholder));
                    }
                }
            }
            let tok = crate::text::vocab::word_level(texts.iter().map(String::as_str))?;
            tok.save(&a.out, true).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", a.out.display()))?;
            outln!("wrote {} ({} tokens)", a.out.display(), tok.get_vocab_size(true));
            Ok(())
        }
    }
}
