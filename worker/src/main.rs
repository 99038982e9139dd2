//! `htc`: the HTC-VLM worker command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use htc_worker::ask::{ask, AskRequest, ImageInput, PromptInput};
use htc_worker::backend::{self, Backend};
use htc_worker::generate::Sampling;
use htc_worker::snapshot::{parse_ids, Snapshot};

#[derive(Parser)]
#[command(name = "htc", version, about = "HTC-VLM worker: ask questions about images, serve the web UI")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Answer one question, streaming the answer to stdout.
    Ask {
        /// HF snapshot directory (llava-hf, liuhaotian LLaVA, LLaMA) or a LLaMA .gguf file.
        #[arg(long)]
        model: PathBuf,
        /// Image file (PNG, JPEG, WebP, GIF, BMP).
        #[arg(long, conflicts_with = "pixel_values")]
        image: Option<PathBuf>,
        /// Preprocessed pixel values: safetensors with `pixel_values` [1, 3, H, W].
        #[arg(long)]
        pixel_values: Option<PathBuf>,
        /// The question.
        #[arg(long, conflicts_with = "prompt_ids", required_unless_present = "prompt_ids")]
        prompt: Option<String>,
        /// Raw prompt token ids, comma-separated; the image token id marks the image.
        #[arg(long, allow_hyphen_values = true)]
        prompt_ids: Option<String>,
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
        /// Greedy decoding (the default when no temperature is given).
        #[arg(long)]
        greedy: bool,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Tokenise the prompt exactly as given instead of applying the chat template.
        #[arg(long)]
        no_template: bool,
        /// Write the prefill logits (f32 [prefill_len, vocab]) to this safetensors file.
        #[arg(long)]
        dump_logits: Option<PathBuf>,
        /// HTC models: write the <voco> attention over [v_d; V] (per layer, head-averaged) as JSON.
        #[arg(long)]
        attention: Option<PathBuf>,
    },
    /// Build an untrained HTC checkpoint from a LLaVA-1.5 snapshot and MGVQ weights.
    Init(htc_worker::init::InitArgs),
    /// Serve the web UI, /healthz and the model card on a local address.
    Serve(htc_worker::serve::ServeArgs),
    /// Measure the compiled backend on matmuls and a decoder forward pass.
    Bench(htc_worker::bench::BenchArgs),
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Ask {
            model,
            image,
            pixel_values,
            prompt,
            prompt_ids,
            max_new_tokens,
            greedy,
            temperature,
            top_p,
            seed,
            no_template,
            dump_logits,
            attention,
        } => {
            let device = backend::device();
            let snap = Snapshot::<Backend>::open(&model, &device)?;
            let prompt = match (prompt, prompt_ids) {
                (_, Some(ids)) => PromptInput::Ids(parse_ids(&ids)?),
                (Some(p), None) => PromptInput::Text(p),
                (None, None) => bail!("give --prompt or --prompt-ids"),
            };
            if !(0.0..=1.0).contains(&top_p) || top_p == 0.0 {
                bail!("--top-p must be in (0, 1]");
            }
            let temperature = if greedy { 0.0 } else { temperature };
            let image = image.map(ImageInput::File).or(pixel_values.map(ImageInput::PixelValues));
            let req = AskRequest {
                image,
                prompt,
                sampling: Sampling { max_new_tokens, temperature, top_p, seed },
                no_template,
                dump_logits,
                attention,
            };
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            ask(&snap, &req, &device, &mut lock)?;
            Ok(())
        }
        Cmd::Serve(args) => htc_worker::serve::run(args),
        Cmd::Init(args) => htc_worker::init::run(args),
        Cmd::Bench(args) => htc_worker::bench::run(args).context("bench"),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HTC_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
