//! `htc ask`: one question, submitted to the engine every front end uses, the answer streamed
//! to stdout.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};

use crate::backend::{self, Backend};
use crate::formats::checkpoint::Snapshot;
use crate::runtime::ask::{ask, ask_direct, AskRequest, ImageSource, PromptInput};
use crate::runtime::sampling::Sampling;

#[derive(clap::Args, Debug, Clone)]
pub struct AskArgs {
    #[command(flatten)]
    pub dtype: crate::backend::DtypeArg,
    /// HF snapshot directory (llava-hf, liuhaotian LLaVA, LLaMA) or a LLaMA .gguf file.
    #[arg(long)]
    pub model: PathBuf,
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
    /// At most this many new tokens (1 to 4096).
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
}

/// Parses `--prompt-ids` (`1,2,3`; image placeholders may be negative).
pub fn parse_ids(s: &str) -> Result<Vec<i64>> {
    s.split(',')
        .map(|x| x.trim())
        .filter(|x| !x.is_empty())
        .map(|x| x.parse::<i64>().map_err(|_| anyhow!("`{x}` in --prompt-ids is not an integer")))
        .collect()
}

pub fn run(a: AskArgs) -> Result<()> {
    let prompt = match (a.prompt, a.prompt_ids) {
        (_, Some(ids)) => PromptInput::Ids(parse_ids(&ids)?),
        (Some(p), None) => PromptInput::Text(p),
        (None, None) => bail!("give --prompt or --prompt-ids"),
    };
    let temperature = if a.greedy { 0.0 } else { a.temperature };
    let sampling = Sampling { max_new_tokens: a.max_new_tokens, temperature, top_p: a.top_p, seed: a.seed };
    sampling.validate().map_err(|m| anyhow!("{m} (--top-p, --temperature, --max-new-tokens)"))?;
    let image = a.image.map(ImageSource::File).or(a.pixel_values.map(ImageSource::PixelValues));
    let req = AskRequest {
        image,
        prompt,
        sampling,
        no_template: a.no_template,
        dump_logits: a.dump_logits,
        attention: a.attention,
    };
    if req.dump_logits.is_none() && req.attention.is_none() {
        return ask(&a.model, &req, &mut std::io::stdout().lock());
    }
    // The engine streams tokens; the prefill logits of every position and every `<voco>`
    // token's attention in every layer are not among its replies, so these dumps decode on
    // the checkpoint here, with the same prompt and the same decoding core.
    let device = backend::device();
    let mut snap = Snapshot::<Backend>::open(&a.model, &device)?;
    snap.model = snap.model.with_row_split(backend::row_split()).with_kv_dtype(crate::runtime::kv_dtype());
    backend::on_pool(|| ask_direct(&snap, &req, &device, &mut std::io::stdout().lock()))?;
    Ok(())
}
