//! `htc tokenize`: an image's MGVQ codes from a trained tokenizer (or an HTC model's), and
//! with `--recon` its reconstruction through the tokenizer's decoder.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::backend::{self, Backend};
use crate::runtime::image::read_image_file;
use crate::train::tokenizer::{load_tokenizer, to_images};

#[derive(clap::Args, Debug, Clone)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub dtype: crate::backend::DtypeArg,
    /// A `htc train-tokenizer` directory, or an HTC model directory with an MGVQ tokenizer.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub image: PathBuf,
    /// Write the reconstruction from the codes (needs the tokenizer's decoder).
    #[arg(long)]
    pub recon: Option<PathBuf>,
    /// Print `{"side", "groups", "codes"}` as JSON instead of a grid.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: TokenizeArgs) -> Result<()> {
    let device = backend::device();
    let (enc, dec) = load_tokenizer::<Backend>(&a.model, &device)?;
    let c = enc.config().clone();
    let img = read_image_file(&a.image)?;
    let x = enc.pixels_of(&img);
    let e = enc.encode(x)?;
    let side = c.latent_side();
    if a.json {
        outln!("{}", serde_json::json!({"side": side, "groups": c.groups, "codes": e.codes}));
    } else {
        outln!(
            "{side}x{side} positions, {} groups of {} codes (one `g0.g1...` per position):",
            c.groups,
            c.codes_per_group()
        );
        for row in e.codes.chunks(side) {
            let cells: Vec<String> =
                row.iter().map(|p| p.iter().map(u16::to_string).collect::<Vec<_>>().join(".")).collect();
            outln!("{}", cells.join(" "));
        }
    }
    if let Some(out) = &a.recon {
        let dec = dec.with_context(|| {
            format!(
                "{} has no MGVQ decoder (`decoder.*` weights), so it cannot reconstruct",
                a.model.display()
            )
        })?;
        let img = to_images(&dec.forward(e.q)).remove(0);
        img.save(out).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
