//! The `htc` command line: one file per subcommand, each an `Args` struct and a `run`
//! ([`ask`], [`init`], [`data`], [`train`], [`train_tokenizer`], [`pretrain_vision`],
//! [`tokenize`], [`eval`], [`analyze`], [`score`], [`retention`], [`report`],
//! [`merge_lora`], [`serve`], [`load`], [`bench`]). Parsing and dispatch only; the work
//! happens in `runtime`, `train`, `server`, `formats`, `eval`, `loadtest` and `bench`.

/// `println!` for the subcommands' output, returning the write's error instead of panicking
/// when stdout is closed early (`htc ... | head`); [`is_broken_pipe`] tells `main` to stop
/// quietly then. Use in functions returning `anyhow::Result`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
}

/// `print!` counterpart of `outln!`.
#[allow(unused_macros)]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout(), $($arg)*)?
    }};
}

pub mod analyze;
pub mod ask;
pub mod bench;
pub mod data;
pub mod eval;
pub mod init;
pub mod load;
pub mod merge_lora;
pub mod pretrain_vision;
pub mod report;
pub mod retention;
pub mod score;
pub mod serve;
pub mod tokenize;
pub mod train;
pub mod train_tokenizer;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Whether `e` comes from writing to a pipe whose reader has gone (`htc ... | head`): the
/// command's output was cut short on purpose, which is not a failure. The server never
/// writes to stdout, so its own broken connections stay errors.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[derive(Parser)]
#[command(name = "htc", version, about = "HTC-VLM worker: ask questions about images, serve the web UI")]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Answer one question, streaming the answer to stdout.
    Ask(ask::AskArgs),
    /// Build an untrained HTC checkpoint from a LLaVA-1.5 snapshot and MGVQ weights.
    Init(init::InitArgs),
    /// Generate a data set (ShapesVQA).
    #[command(subcommand)]
    Data(data::DataCmd),
    /// Fine-tune an HTC checkpoint on LLaVA conversation data.
    Train(Box<train::TrainArgs>),
    /// Train the MGVQ image tokenizer as a VQ-VAE (encoder, grouped quantiser, decoder).
    TrainTokenizer(train_tokenizer::TrainTokenizerArgs),
    /// Pretrain a from-scratch vision tower on ShapesVQA scene labels (per-cell heads).
    PretrainVision(pretrain_vision::PretrainVisionArgs),
    /// Print an image's MGVQ codes (and write its reconstruction with --recon).
    Tokenize(tokenize::TokenizeArgs),
    /// Answer a question set with an HTC model and score exact match.
    Eval(eval::EvalArgs),
    /// Analyse a trained HTC model: linear probes, <voco> attention, cost per question.
    #[command(subcommand)]
    Analyze(analyze::AnalyzeCmd),
    /// Score a LLaVA answer file on a benchmark, as its official scorer does.
    Score(score::ScoreArgs),
    /// The paper's retention: (model - lower) / (upper - lower) per benchmark, and the mean.
    Retention(retention::RetentionArgs),
    /// Regenerate docs/results.md and its figures from the experiments' raw JSON.
    Report(report::ReportArgs),
    /// Fold a checkpoint's LoRA adapters into its weights (a plain servable checkpoint).
    MergeLora(merge_lora::MergeLoraArgs),
    /// Serve the web UI, the WebSocket protocol, the OpenAI endpoint and metrics.
    Serve(crate::server::ServeArgs),
    /// Load a running service (a worker or a balancer) with many WebSocket clients; report
    /// answers lost or mixed up, latency, throughput and cache hits.
    Load(load::LoadArgs),
    /// Measure the compiled backend on matmuls and a decoder forward pass.
    Bench(bench::BenchArgs),
}

impl Cli {
    pub fn run(self) -> Result<()> {
        // The inference commands' `--dtype`, resolved against their model's checkpoint.
        let (choice, model) = match &self.cmd {
            Cmd::Ask(a) => (a.dtype, Some(a.model.as_path())),
            Cmd::Eval(a) => (a.dtype, Some(a.model.as_path())),
            Cmd::Tokenize(a) => (a.dtype, Some(a.model.as_path())),
            Cmd::Serve(a) => (a.dtype, a.model.as_deref()),
            Cmd::Bench(a) => (a.dtype, a.model.as_deref()),
            _ => (
                crate::backend::DtypeArg { choice: crate::backend::DtypeChoice::F32, ..Default::default() },
                None,
            ),
        };
        crate::backend::set_kv_cache(choice.kv_cache);
        let choice = choice.choice;
        let (dtype, note) = crate::backend::resolve_dtype(choice, model);
        if let Some(note) = note {
            tracing::warn!("{note}");
        }
        crate::backend::set_dtype(dtype)?;
        match self.cmd {
            Cmd::Ask(a) => ask::run(a),
            Cmd::Init(a) => init::run(a),
            Cmd::Data(c) => data::run(c),
            Cmd::Train(a) => train::run(*a),
            Cmd::TrainTokenizer(a) => train_tokenizer::run(a),
            Cmd::Tokenize(a) => tokenize::run(a),
            Cmd::PretrainVision(a) => pretrain_vision::run(a),
            Cmd::MergeLora(a) => merge_lora::run(a),
            Cmd::Eval(a) => eval::run(a),
            Cmd::Analyze(c) => analyze::run(c),
            Cmd::Score(a) => score::run(a),
            Cmd::Retention(a) => retention::run(a),
            Cmd::Report(a) => report::run(a),
            Cmd::Serve(a) => serve::run(a),
            Cmd::Load(a) => load::run(a),
            Cmd::Bench(a) => bench::run(a),
        }
    }
}

/// A `--mode` value (`htc init`, `htc train`, `htc eval`): one of the modes HTC configs name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// All patch tokens visible (vanilla LLaVA, the upper bound).
    None,
    /// Continuous only (VoCo-LLaMA).
    Voco,
    /// Discrete anchors and patches through `<voco>` (the paper).
    Htc,
    /// Discrete anchors only.
    Discrete,
    /// The patches average-pooled.
    Avgpool,
}

impl From<Mode> for htc_shared::config::HtcMode {
    fn from(m: Mode) -> Self {
        use htc_shared::config::HtcMode as H;
        match m {
            Mode::None => H::None,
            Mode::Voco => H::Voco,
            Mode::Htc => H::Htc,
            Mode::Discrete => H::Discrete,
            Mode::Avgpool => H::Avgpool,
        }
    }
}
