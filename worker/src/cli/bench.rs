//! `htc bench`: figures for the compiled backend, printed as a table. Run the same command
//! built with each backend feature to compare them (`bench/bench-backends.sh`). The suites
//! are in [`crate::bench`]; they write to stdout.

use anyhow::Result;

use crate::bench;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub dtype: crate::backend::DtypeArg,
    /// Timed repetitions per measurement (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Which figures: `backend` (matmuls, decoder), `htc` (compress / answer / cached answer),
    /// `all` (both), `train` (training steps of one shape), `llm` (a checkpoint's prefill and
    /// decoding), `e2e` (one image and question end to end, stage by stage, per mode) or
    /// `memory` (the peak memory of one HTC answer in the current `--dtype`).
    #[arg(long, default_value = "all")]
    pub suite: String,
    /// `--suite train`: the model shape (tiny, mid; see `bench/train.rs`); `--suite e2e` and
    /// `memory`: tiny or 7b (LLaVA-1.5-7B's shape: CLIP ViT-L/14-336, a 7B LLaMA, the paper's MGVQ).
    #[arg(long, default_value = "tiny")]
    pub shape: String,
    /// `--suite e2e`: LLM layers (default: the shape's; fewer for a quick look).
    #[arg(long)]
    pub layers: Option<usize>,
    /// `--suite e2e`: CLIP layers (default: the shape's).
    #[arg(long)]
    pub vision_layers: Option<usize>,
    /// `--suite e2e`: tokens decoded after the question (decode speed).
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// `--suite e2e`: tokens in the question.
    #[arg(long, default_value_t = 32)]
    pub question_tokens: usize,
    /// `--suite e2e`: also write one JSON line per mode (and the peak memory) to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// `--suite train`: timed optimizer steps (after two warm-up steps).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// `--suite train`: split the batch into this many micro-batches, differentiated on as
    /// many threads at once (`htc train --threads`); 1 runs the batch whole.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// `--suite llm`: the language model to time (a GGUF file or a checkpoint directory).
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    outln!("backend: {}", crate::backend::name());
    let out = &mut std::io::stdout();
    match args.suite.as_str() {
        "backend" => bench::backend::run(out, args.reps),
        "htc" => bench::htc::run(out, args.reps),
        "all" => bench::backend::run(out, args.reps).and_then(|_| bench::htc::run(out, args.reps)),
        "train" => bench::train::run(out, &args.shape, args.steps.max(1), args.threads.max(1)),
        "llm" => {
            let path =
                args.model.as_ref().ok_or_else(|| anyhow::anyhow!("--suite llm needs --model PATH"))?;
            bench::llm::run(out, path, args.reps)
        }
        "e2e" | "memory" => {
            let e = bench::e2e::Args {
                shape: &args.shape,
                llm_layers: args.layers,
                vision_layers: args.vision_layers,
                reps: args.reps,
                new_tokens: args.new_tokens,
                question_tokens: args.question_tokens,
                json: args.json.as_deref(),
            };
            if args.suite == "e2e" {
                bench::e2e::run(out, e)
            } else {
                bench::e2e::memory(out, e)
            }
        }
        other => anyhow::bail!("unknown --suite `{other}` (backend, htc, all, train, llm, e2e, memory)"),
    }
}
