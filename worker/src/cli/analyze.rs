//! `htc analyze`: analyses of a trained HTC model (`eval::analysis`), each writing one JSON
//! report and printing a short summary: `probe` (linear probes of its frozen representations
//! on ShapesVQA scene labels), `attention` (the `<voco>` token's attention on anchors and
//! patches) and `cost` (wall time per question with and without the compressed image).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::backend::Autodiff;

use crate::backend::{self, Backend};
use crate::eval::analysis::attention::{self, AttentionRun};
use crate::eval::analysis::cost::{self, CostRun};
use crate::eval::analysis::probe::{self, PerRep, ProbeRun};
use crate::eval::analysis::{write_report, Stat};

#[derive(clap::Subcommand, Debug, Clone)]
pub enum AnalyzeCmd {
    /// Linear probes of the frozen <voco> output (z), mean anchor (v_d) and mean patch (V) on
    /// ShapesVQA scene labels (S: shape, color, count, pair; D: texture, size, position).
    Probe(ProbeArgs),
    /// The first <voco> token's attention on the anchors and on the patches, per layer, with
    /// heatmaps of the first images.
    Attention(AttentionArgs),
    /// Wall time of one question: the full sequence in one forward, compressing the image, and
    /// answering against the compressed image.
    Cost(CostArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct ProbeArgs {
    /// The HTC model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// The train split's scenes (`<split>.scenes.json` from `htc data shapes`).
    #[arg(long)]
    pub train_scenes: PathBuf,
    /// The folder the train scenes' image paths are relative to.
    #[arg(long)]
    pub train_images: PathBuf,
    /// The test split's scenes.
    #[arg(long)]
    pub test_scenes: PathBuf,
    /// The folder the test scenes' image paths are relative to.
    #[arg(long)]
    pub test_images: PathBuf,
    /// Train on the first this many train scenes (all of them when there are fewer).
    #[arg(long, default_value_t = 1000)]
    pub train_count: usize,
    /// Test on the first this many test scenes (all of them when there are fewer).
    #[arg(long, default_value_t = 500)]
    pub test_count: usize,
    /// Seeds the probes' initial weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Where to write the JSON report.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug, Clone)]
pub struct AttentionArgs {
    /// The HTC model directory (a mode with <voco>: voco, htc or discrete).
    #[arg(long)]
    pub model: PathBuf,
    /// The scenes (`<split>.scenes.json` from `htc data shapes`).
    #[arg(long)]
    pub scenes: PathBuf,
    /// The folder the scenes' image paths are relative to.
    #[arg(long)]
    pub images: PathBuf,
    /// Analyse the first this many scene images (all of them when there are fewer).
    #[arg(long, default_value_t = 16)]
    pub count: usize,
    /// Heatmaps (attention averaged over the layers) for the first this many images.
    #[arg(long, default_value_t = 4)]
    pub heatmaps: usize,
    /// Where to write the JSON report.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug, Clone)]
pub struct CostArgs {
    /// The HTC model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// The image file.
    #[arg(long)]
    pub image: PathBuf,
    /// The question (the chat template is applied).
    #[arg(long)]
    pub question: String,
    /// Timed runs of each path, after one warm-up run.
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
    /// Threads to run and tune the model for (0: every core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Where to write the JSON report.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(c: AnalyzeCmd) -> Result<()> {
    match c {
        AnalyzeCmd::Probe(a) => probe_cmd(a),
        AnalyzeCmd::Attention(a) => attention_cmd(a),
        AnalyzeCmd::Cost(a) => cost_cmd(a),
    }
}

/// Says on stderr when a scene file held fewer scenes than asked for.
fn note_fewer(path: &Path, asked: usize, used: usize) {
    if used < asked {
        eprintln!("note: {} holds {used} scenes; using those {used} (asked for {asked})", path.display());
    }
}

fn probe_cmd(a: ProbeArgs) -> Result<()> {
    let r = ProbeRun {
        model: a.model,
        train_scenes: a.train_scenes,
        train_images: a.train_images,
        test_scenes: a.test_scenes,
        test_images: a.test_images,
        train_count: a.train_count,
        test_count: a.test_count,
        seed: a.seed,
        batch: a.batch,
    };
    let report = backend::on_pool(|| probe::run::<Autodiff<Backend>>(&r, &backend::device()))?;
    note_fewer(&r.train_scenes, r.train_count, report.train_scenes);
    note_fewer(&r.test_scenes, r.test_count, report.test_scenes);
    write_report(&a.out, &report)?;
    let cell = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |x| format!("{x:.1}"));
    let row = |p: &PerRep| format!("{:>7} {:>7} {:>7}", cell(p.z), cell(p.v_d), cell(p.v));
    outln!("probe test accuracy (%), {} train / {} test scenes", report.train_scenes, report.test_scenes);
    outln!("{:<10} {:>4} {:>8} {:>7} {:>7} {:>7}", "task", "kind", "majority", "z", "v_d", "V");
    for t in &report.tasks {
        outln!("{:<10} {:>4} {:>8.1} {}", t.task, t.kind, t.majority, row(&t.accuracy));
    }
    outln!("{:<10} {:>4} {:>8} {}", "mean", "S", "", row(&report.mean.s));
    outln!("{:<10} {:>4} {:>8} {}", "mean", "D", "", row(&report.mean.d));
    outln!("wrote {}", a.out.display());
    Ok(())
}

fn attention_cmd(a: AttentionArgs) -> Result<()> {
    let r = AttentionRun {
        model: a.model,
        scenes: a.scenes,
        images: a.images,
        count: a.count,
        heatmaps: a.heatmaps,
    };
    let report = backend::on_pool(|| attention::run::<Backend>(&r, &backend::device()))?;
    note_fewer(&r.scenes, r.count, report.images);
    write_report(&a.out, &report)?;
    let stat =
        |s: &Option<Stat>| s.map_or_else(|| "-".to_string(), |s| format!("{:.3} ± {:.3}", s.mean, s.std));
    outln!(
        "<voco> attention over {} images ({} anchors, {} patches): mass per layer, mean ± std",
        report.images,
        report.n_discrete,
        report.n_patches
    );
    outln!("{:<6} {:>15} {:>15} {:>15} {:>15}", "layer", "anchors", "patches", "per anchor", "per patch");
    for l in &report.layers {
        outln!(
            "{:<6} {:>15} {:>15} {:>15} {:>15}",
            l.layer,
            stat(&l.anchors),
            stat(&l.patches),
            stat(&l.anchor_token),
            stat(&l.patch_token)
        );
    }
    outln!("wrote {}", a.out.display());
    Ok(())
}

fn cost_cmd(a: CostArgs) -> Result<()> {
    let threads = if a.threads == 0 { backend::row_split() } else { a.threads };
    let r = CostRun { model: a.model, image: a.image, question: a.question, repeats: a.repeats, threads };
    let work = || backend::on_pool(|| cost::run::<Backend>(&r, &backend::device()));
    let report = if a.threads == 0 {
        work()?
    } else {
        rayon::ThreadPoolBuilder::new()
            .num_threads(a.threads)
            .build()
            .context("cannot start the thread pool for --threads")?
            .install(work)?
    };
    write_report(&a.out, &report)?;
    let mode = serde_json::to_value(report.mode)?;
    outln!(
        "mode {}, {} threads: prefix {} tokens, question {} tokens, {} positions kept",
        mode.as_str().unwrap_or("?"),
        report.threads,
        report.prefix_tokens,
        report.question_tokens,
        report.kept_positions
    );
    for (name, t) in
        [("full", report.full_ms), ("compress", report.compress_ms), ("followup", report.followup_ms)]
    {
        outln!("{name:<9} median {:>9.2} ms   min {:>9.2} ms", t.median, t.min);
    }
    outln!("wrote {}", a.out.display());
    Ok(())
}
