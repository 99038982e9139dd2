//! `htc init`: builds an untrained HTC checkpoint, either
//! - from a LLaVA-1.5 snapshot (either layout) and an MGVQ checkpoint (safetensors; see
//!   `fixtures/convert_mgvq.py`): P_d gets PyTorch's default `nn.Linear` init (U(±1/√fan_in)),
//!   the `<voco>` embeddings the mean of the input embeddings (transformers'
//!   `resize_token_embeddings` default), and the LLaVA projector is reused as P_v; or
//! - from scratch (`--config`): every part drawn as transformers initialises LLaMA/CLIP
//!   (N(0, 0.02²), norms 1, biases 0), with a given tokenizer and, optionally, a trained
//!   MGVQ tokenizer (`htc train-tokenizer`) in place of a random one.
//!
//! The output is an HF-style directory: config.json (llava-hf fields plus an `htc` section),
//! model.safetensors in the llava-hf hub layout with `htc.*` and `mgvq.*` added, and the
//! tokenizer files.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};

use htc_shared::config::{Fusion, HtcConfig, HtcMode, ProjectorKind};
use htc_shared::mask::Topology;
use htc_shared::mgvq::{self, Mgvq};

use crate::formats::write::{write_safetensors, Entry};
use crate::formats::{HostTensor, Loader, WeightSource};
use crate::models::htc::discrete_widths;
use crate::models::llava::{self, Layout};

#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["llava", "config"])))]
pub struct InitArgs {
    /// LLaVA-1.5 snapshot directory (llava-hf or liuhaotian layout).
    #[arg(long, requires = "mgvq")]
    pub llava: Option<PathBuf>,
    /// Build a model from scratch with this config.json (llava-hf fields with `text_config`,
    /// `vision_config` and an `htc` section, whose `mgvq` entry gives the tokenizer's shape).
    #[arg(long, requires = "tokenizer")]
    pub config: Option<PathBuf>,
    /// With --config: the tokenizer.json (its `<s>` and `</s>` must be the config's BOS/EOS).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// MGVQ weights (safetensors with `encoder.*`, `quant_conv.*`, `quantize.embedding.weight`;
    /// a `htc train-tokenizer` output directory's `model.safetensors` works). Required with
    /// --llava; with --config, a random frozen MGVQ is used without it.
    #[arg(long)]
    pub mgvq: Option<PathBuf>,
    /// Std of the normal init of a model built from scratch (transformers' initializer_range).
    #[arg(long, default_value_t = 0.02)]
    pub init_std: f32,
    /// MGVQ config: `f16c32_g8` (the paper's) or a JSON file.
    #[arg(long, default_value = "f16c32_g8")]
    pub mgvq_config: String,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = super::Mode::Htc)]
    pub mode: super::Mode,
    #[arg(long, default_value_t = 4)]
    pub n_discrete: usize,
    #[arg(long, default_value_t = 1)]
    pub n_voco: usize,
    /// The disentanglement mask: star (the paper), causal (VoCo-LLaMA's code) or full.
    #[arg(long, default_value = "star", value_parser = parse_topology)]
    pub topology: Topology,
    #[arg(long, default_value_t = 8192)]
    pub discrete_hidden: usize,
    /// Layers of the anchors' MLP P_d: 1 (linear), 2 (the paper) or 3.
    #[arg(long, default_value_t = 2)]
    pub discrete_layers: usize,
    /// Where the anchors join the patches: before (the paper), after, or mean (averaged into
    /// every patch token).
    #[arg(long, value_enum, default_value_t = FusionArg::Before)]
    pub fusion: FusionArg,
    /// Storage dtype of model.safetensors (default f16 from LLaVA, f32 from scratch).
    #[arg(long, value_enum)]
    pub dtype: Option<StoreDtype>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `--fusion`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusionArg {
    Before,
    After,
    Mean,
}

impl From<FusionArg> for Fusion {
    fn from(f: FusionArg) -> Self {
        match f {
            FusionArg::Before => Fusion::Before,
            FusionArg::After => Fusion::After,
            FusionArg::Mean => Fusion::Mean,
        }
    }
}

/// Maps a LLaVA tensor name of any supported layout to the llava-hf hub layout.
fn hub_name(layout: Layout, name: &str) -> Option<String> {
    let map = |prefixes: &[(&str, &str)]| {
        prefixes.iter().find_map(|(from, to)| name.strip_prefix(from).map(|rest| format!("{to}{rest}")))
    };
    match layout {
        Layout::Liuhaotian => map(&[
            ("model.vision_tower.vision_tower.", "vision_tower."),
            ("model.mm_projector.0.", "multi_modal_projector.linear_1."),
            ("model.mm_projector.2.", "multi_modal_projector.linear_2."),
            ("model.mm_projector.", "multi_modal_projector.linear_1."),
            ("model.", "language_model.model."),
            ("lm_head.", "language_model.lm_head."),
        ]),
        Layout::LlavaHf => map(&[
            ("model.vision_tower.", "vision_tower."),
            ("model.multi_modal_projector.", "multi_modal_projector."),
            ("model.language_model.", "language_model.model."),
            ("lm_head.", "language_model.lm_head."),
            ("vision_tower.", "vision_tower."),
            ("multi_modal_projector.", "multi_modal_projector."),
            ("language_model.", "language_model."),
        ]),
    }
    .map(|n| {
        if n.starts_with("vision_tower.") && !n.starts_with("vision_tower.vision_model.") {
            n.replacen("vision_tower.", "vision_tower.vision_model.", 1)
        } else {
            n
        }
    })
}

/// `--dtype` of `htc init`: how model.safetensors stores the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreDtype {
    F16,
    F32,
}

fn parse_topology(s: &str) -> std::result::Result<Topology, String> {
    s.parse().map_err(|e: htc_shared::Error| e.to_string())
}

pub fn run(a: InitArgs) -> Result<()> {
    let half = match a.dtype {
        Some(d) => d == StoreDtype::F16,
        None => a.llava.is_some(),
    };
    let (Some(llava_dir), Some(mgvq_path)) = (&a.llava, &a.mgvq) else {
        return scratch(&a, half);
    };
    let mode: HtcMode = a.mode.into();
    let topology = a.topology;
    let mgvq_cfg = if a.mgvq_config == "f16c32_g8" {
        mgvq::Config::f16c32_g8()
    } else {
        let raw = std::fs::read(&a.mgvq_config)
            .with_context(|| format!("cannot read MGVQ config {}", a.mgvq_config))?;
        mgvq::Config::from_json(
            &serde_json::from_slice(&raw).with_context(|| format!("{} is not valid JSON", a.mgvq_config))?,
        )
        .with_context(|| a.mgvq_config.clone())?
    };
    let raw = std::fs::read(llava_dir.join("config.json"))
        .with_context(|| format!("missing config.json in {}", llava_dir.display()))?;
    let src_cfg: Value = serde_json::from_slice(&raw).context("LLaVA config.json is not valid JSON")?;
    let tower = crate::formats::checkpoint::vision_tower_config(&src_cfg, llava_dir)?;
    let mut lc = llava::Config::from_json(&src_cfg, tower.as_ref())
        .with_context(|| llava_dir.join("config.json").display().to_string())?;
    // An HTC checkpoint as the source: its P_v is what its `htc` section says.
    if let Some(kind) = src_cfg.pointer("/htc/continuous_projector").and_then(Value::as_str) {
        lc.projector_mlp = kind != "linear";
    }
    let htc = HtcConfig {
        mode,
        n_discrete: a.n_discrete,
        n_voco: a.n_voco,
        topology,
        continuous_projector: if lc.projector_mlp { ProjectorKind::Mlp2xGelu } else { ProjectorKind::Linear },
        discrete_hidden: a.discrete_hidden,
        discrete_layers: a.discrete_layers,
        fusion: a.fusion.into(),
        mgvq: Some(mgvq_cfg.clone()),
        // An HTC checkpoint used as the LLaVA keeps the chat format it was trained with.
        chat_format: match src_cfg.pointer("/htc/chat_format") {
            Some(v) => serde_json::from_value(v.clone())
                .with_context(|| format!("{}: invalid `htc.chat_format`", llava_dir.display()))?,
            None => Default::default(),
        },
    };
    htc.validate()?;
    let src = WeightSource::open_dir(llava_dir)?;
    let mg = WeightSource::open_files(std::slice::from_ref(mgvq_path))?;
    // Fail early, naming the problem, if the MGVQ file does not fit its config.
    let dev = crate::backend::device();
    Mgvq::<crate::backend::Backend>::load(&Loader::new(&mg, &dev), &mgvq_cfg)
        .context("the MGVQ weights do not match the MGVQ config")?;

    let d = lc.text.hidden_size;
    let mut entries: Vec<Entry<'_>> = Vec::new();
    let mut names = src.names();
    names.sort();
    for n in names {
        let Some(hub) = hub_name(lc.layout, &n) else { continue };
        let shape = src.shape(&n)?;
        let src = &src;
        entries.push((hub, shape, Box::new(move || Ok(src.read(&n)?.data))));
    }
    let mut mg_names = mg.names();
    mg_names.sort();
    for n in mg_names.into_iter().filter(|n| {
        n.starts_with("encoder.") || n.starts_with("quant_conv.") || n == "quantize.embedding.weight"
    }) {
        let shape = mg.shape(&n)?;
        let mg = &mg;
        entries.push((format!("mgvq.{n}"), shape, Box::new(move || Ok(mg.read(&n)?.data))));
    }
    let mut rng = StdRng::seed_from_u64(a.seed);
    let mut uniform = |n: usize, fan_in: usize| -> Vec<f32> {
        let b = 1.0 / (fan_in as f32).sqrt();
        (0..n).map(|_| rng.random_range(-b..b)).collect()
    };
    if htc.uses_discrete() {
        let widths =
            discrete_widths(mgvq_cfg.q_len(), a.discrete_hidden, a.discrete_layers, a.n_discrete * d);
        for (i, w) in widths.windows(2).enumerate() {
            let (fan_in, out) = (w[0], w[1]);
            let (weight, bias) = (uniform(out * fan_in, fan_in), uniform(out, fan_in));
            let name = format!("htc.discrete_projector.linear_{}", i + 1);
            entries.push((format!("{name}.weight"), vec![out, fan_in], Box::new(move || Ok(weight.clone()))));
            entries.push((format!("{name}.bias"), vec![out], Box::new(move || Ok(bias.clone()))));
        }
    }
    let emb_name = src
        .names()
        .into_iter()
        .find(|n| n.ends_with("embed_tokens.weight"))
        .context("the LLaVA checkpoint has no embed_tokens")?;
    let emb: HostTensor = src.read(&emb_name)?;
    let rows = emb.shape[0];
    let mean: Vec<f32> = (0..d)
        .map(|j| (0..rows).map(|r| emb.data[r * d + j] as f64).sum::<f64>() as f32 / rows as f32)
        .collect();
    let voco: Vec<f32> = (0..a.n_voco).flat_map(|_| mean.clone()).collect();
    entries.push(("htc.voco_embeddings".into(), vec![a.n_voco, d], Box::new(move || Ok(voco.clone()))));
    drop(emb);

    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    write_safetensors(&a.out.join("model.safetensors"), entries, half)?;
    let image_token = if lc.layout == Layout::LlavaHf { lc.image_token_id } else { 32000 };
    let config = config_json(&lc, &htc, image_token);
    std::fs::write(a.out.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    for f in
        ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"]
    {
        let p = llava_dir.join(f);
        if p.is_file() {
            std::fs::copy(&p, a.out.join(f)).with_context(|| format!("cannot copy {}", p.display()))?;
        }
    }
    tracing::info!(out = %a.out.display(), ?mode, "wrote an untrained HTC checkpoint");
    Ok(())
}

/// config.json of an HTC checkpoint: llava-hf fields plus the `htc` section.
fn config_json(lc: &llava::Config, htc: &HtcConfig, image_token: i64) -> Value {
    let t = &lc.text;
    let v = &lc.vision;
    json!({
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": image_token,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": lc.select_layer,
        "vision_feature_select_strategy": "default",
        "text_config": {
            "model_type": "llama", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
            "head_dim": t.head_dim, "max_position_embeddings": t.max_position_embeddings,
            "rms_norm_eps": t.rms_norm_eps, "rope_theta": t.rope_theta,
            "tie_word_embeddings": t.tie_word_embeddings, "bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_ids,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": v.hidden_size, "intermediate_size": v.intermediate_size,
            "num_hidden_layers": v.num_hidden_layers, "num_attention_heads": v.num_attention_heads,
            "num_channels": v.num_channels, "image_size": v.image_size, "patch_size": v.patch_size,
            "layer_norm_eps": v.layer_norm_eps,
        },
        "htc": htc,
    })
}

/// `htc init --config`: a whole HTC model from scratch.
fn scratch(a: &InitArgs, half: bool) -> Result<()> {
    let (Some(cfg_path), Some(tok_path)) = (&a.config, &a.tokenizer) else {
        bail!("--llava needs --mgvq; --config needs --tokenizer");
    };
    let raw = std::fs::read(cfg_path).with_context(|| format!("cannot read {}", cfg_path.display()))?;
    let cfg: Value =
        serde_json::from_slice(&raw).with_context(|| format!("{} is not valid JSON", cfg_path.display()))?;
    let lc = llava::Config::from_json(&cfg, None)
        .with_context(|| format!("{} is not a LLaVA config", cfg_path.display()))?;
    let htc = HtcConfig::from_json(
        cfg.get("htc").with_context(|| format!("{} has no `htc` section", cfg_path.display()))?,
    )
    .with_context(|| cfg_path.display().to_string())?;
    let tok = tokenizers::Tokenizer::from_file(tok_path)
        .map_err(|e| anyhow::anyhow!("cannot read the tokenizer {}: {e}", tok_path.display()))?;
    let t = &lc.text;
    if tok.get_vocab_size(true) > t.vocab_size {
        bail!(
            "the tokenizer has {} tokens but text_config.vocab_size is {}",
            tok.get_vocab_size(true),
            t.vocab_size
        );
    }
    for (name, want) in [("<s>", t.bos_token_id), ("</s>", t.eos_token_ids.first().copied())] {
        let got = tok.token_to_id(name);
        if got != want {
            bail!("the tokenizer's {name} is {got:?} but the config says {want:?}");
        }
    }
    let WeightSource::Memory(mut map) = crate::formats::random::htc_weights(
        &lc,
        &htc,
        a.seed,
        crate::formats::random::Init::Normal(a.init_std),
    ) else {
        unreachable!("generated weights are in memory")
    };
    if let Some(path) = &a.mgvq {
        let mc = htc
            .mgvq
            .as_ref()
            .filter(|_| htc.uses_discrete())
            .with_context(|| format!("--mgvq given but mode {:?} uses no MGVQ tokenizer", htc.mode))?;
        let mg = WeightSource::open_files(std::slice::from_ref(path))?;
        let dev = crate::backend::device();
        Mgvq::<crate::backend::Backend>::load(&Loader::new(&mg, &dev), mc)
            .context("the MGVQ weights do not match the config's `htc.mgvq`")?;
        for key in map.keys().filter_map(|k| k.strip_prefix("mgvq.")).map(str::to_string).collect::<Vec<_>>()
        {
            map.insert(format!("mgvq.{key}"), mg.read(&key)?);
        }
    }
    let mut keys: Vec<String> = map.keys().cloned().collect();
    keys.sort();
    let entries: Vec<Entry<'_>> = keys
        .into_iter()
        .map(|k| {
            let t = map.remove(&k).expect("listed key");
            let shape = t.shape.clone();
            (k, shape, Box::new(move || Ok(t.data.clone())) as Box<dyn Fn() -> Result<Vec<f32>>>)
        })
        .collect();
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    write_safetensors(&a.out.join("model.safetensors"), entries, half)?;
    let config = config_json(&lc, &htc, lc.image_token_id);
    std::fs::write(a.out.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    std::fs::copy(tok_path, a.out.join("tokenizer.json"))
        .with_context(|| format!("cannot copy {}", tok_path.display()))?;
    let side = lc.vision.image_size;
    let pre = json!({
        "image_processor_type": "CLIPImageProcessor", "do_resize": true, "do_center_crop": true,
        "size": {"shortest_edge": side}, "crop_size": {"height": side, "width": side},
        "do_normalize": true, "image_mean": htc_shared::preprocess::CLIP_MEAN,
        "image_std": htc_shared::preprocess::CLIP_STD, "resample": 3,
    });
    std::fs::write(a.out.join("preprocessor_config.json"), serde_json::to_vec_pretty(&pre)?)?;
    tracing::info!(out = %a.out.display(), mode = ?htc.mode, "wrote an HTC model initialised from scratch");
    Ok(())
}
