//! Opening a model from disk: an HF snapshot directory (llava-hf, liuhaotian LLaVA or plain
//! LLaMA) or a LLaMA `.gguf` file, with its tokenizer, chat template and image preprocessing.

use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use serde_json::Value;

use htc_shared::config::HtcConfig;
use htc_shared::params::ParamNames;
use htc_shared::preprocess::ClipPreprocess;

use super::{Loader, WeightSource};
use crate::models::htc::Htc;
use crate::models::llama::Llama;
use crate::models::llava::{self, Llava};
use crate::text::{stop_ids, Template, TextTokenizer};

/// A loaded model of any supported architecture.
#[allow(clippy::large_enum_variant)] // one per process, held for its lifetime
pub enum AnyModel<B: Backend> {
    Llama(Llama<B>),
    Llava {
        model: Llava<B>,
        config: llava::Config,
        preprocess: ClipPreprocess,
    },
    /// A LLaVA with the HTC parts (config.json has an `htc` section).
    Htc {
        model: Htc<B>,
        config: llava::Config,
        preprocess: ClipPreprocess,
    },
}

impl<B: Backend> AnyModel<B> {
    /// The model with its language model's decoding steps split over `threads` threads
    /// ([`Llama::with_row_split`]; `crate::backend::row_split` gives the count for the backend).
    pub fn with_row_split(self, threads: usize) -> Self {
        match self {
            AnyModel::Llama(m) => AnyModel::Llama(m.with_row_split(threads)),
            AnyModel::Llava { mut model, config, preprocess } => {
                model.llm = model.llm.with_row_split(threads);
                model.vision = model.vision.with_host_kernels(threads > 1);
                AnyModel::Llava { model, config, preprocess }
            }
            AnyModel::Htc { model, config, preprocess } => {
                AnyModel::Htc { model: model.with_row_split(threads), config, preprocess }
            }
        }
    }

    /// The model with its language model storing the caches it decodes on in `dtype` in f32
    /// CPU inference ([`Llama::with_kv_dtype`]; `crate::backend::kv_dtype` gives `--kv-cache`).
    pub fn with_kv_dtype(self, dtype: crate::kernels::kv_cache::KvDtype) -> Self {
        match self {
            AnyModel::Llama(m) => AnyModel::Llama(m.with_kv_dtype(dtype)),
            AnyModel::Llava { mut model, config, preprocess } => {
                model.llm = model.llm.with_kv_dtype(dtype);
                AnyModel::Llava { model, config, preprocess }
            }
            AnyModel::Htc { model, config, preprocess } => {
                AnyModel::Htc { model: model.with_kv_dtype(dtype), config, preprocess }
            }
        }
    }

    pub fn llm(&self) -> &Llama<B> {
        match self {
            AnyModel::Llama(m) => m,
            AnyModel::Llava { model, .. } => &model.llm,
            AnyModel::Htc { model, .. } => &model.llava.llm,
        }
    }

    pub fn architecture(&self) -> &'static str {
        match self {
            AnyModel::Llama(_) => "llama",
            AnyModel::Htc { .. } => "htc",
            AnyModel::Llava { config, .. } => match config.layout {
                llava::Layout::LlavaHf => "llava-hf",
                llava::Layout::Liuhaotian => "llava-liuhaotian",
            },
        }
    }
}

/// A model plus its text side.
pub struct Snapshot<B: Backend> {
    pub model: AnyModel<B>,
    pub tokenizer: Option<TextTokenizer>,
    /// The checkpoint key of every parameter (what training saves under).
    pub names: ParamNames,
}

fn read_json(path: &Path) -> Result<Value> {
    let raw = std::fs::read(path).with_context(|| format!("missing {}", path.display()))?;
    serde_json::from_slice(&raw).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// The `config.json` of the local CLIP snapshot a liuhaotian config names in
/// `mm_vision_tower` (relative to `dir` or absolute), if there is one.
pub fn vision_tower_config(cfg: &Value, dir: &Path) -> Result<Option<Value>> {
    if llava::Config::is_llava_hf(cfg) {
        return Ok(None);
    }
    let tower = llava::Config::vision_tower_name(cfg);
    let local = [dir.join(tower), Path::new(tower).to_path_buf()];
    match local.iter().map(|p| p.join("config.json")).find(|p| !tower.is_empty() && p.is_file()) {
        Some(p) => read_json(&p).map(Some),
        None => Ok(None),
    }
}

impl<B: Backend> Snapshot<B> {
    pub fn open(path: &Path, device: &B::Device) -> Result<Self> {
        if !path.exists() {
            bail!("model path {} does not exist", path.display());
        }
        if path.is_file() {
            if path.extension().is_some_and(|e| e == "gguf") {
                return Self::open_gguf(path, device);
            }
            bail!("{} is a file; expected a snapshot directory or a .gguf file", path.display());
        }
        let cfg_path = path.join("config.json");
        if !cfg_path.is_file() {
            bail!("missing config.json in {}", path.display());
        }
        let cfg = read_json(&cfg_path)?;
        let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
        let archs: Vec<&str> = cfg
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let is_llava = model_type == "llava" || archs.iter().any(|a| a.starts_with("Llava"));
        let is_llama = model_type == "llama" || archs.contains(&"LlamaForCausalLM");
        if !is_llava && !is_llama {
            let name = archs.first().copied().unwrap_or(model_type);
            bail!("unknown architecture `{name}` in {} (supported: llama, llava)", cfg_path.display());
        }
        let src = WeightSource::open_dir(path)?;
        let vb = Loader::<B>::new(&src, device);
        let tok_path = path.join("tokenizer.json");
        let tok = if tok_path.is_file() { Some(TextTokenizer::from_file(&tok_path)?) } else { None };
        // Config errors name the field; the file is named here.
        let in_cfg = || cfg_path.display().to_string();
        let (model, template, text_cfg) = if is_llava {
            let tower = vision_tower_config(&cfg, path)?;
            let mut config = llava::Config::from_json(&cfg, tower.as_ref()).with_context(in_cfg)?;
            if let Some(kind) =
                cfg.get("htc").and_then(|h| h.get("continuous_projector")).and_then(Value::as_str)
            {
                config.projector_mlp = kind != "linear";
            }
            let model = Llava::load(&vb, &config).context("loading the LLaVA weights")?;
            let pp_path = path.join("preprocessor_config.json");
            let mut preprocess = ClipPreprocess::llava(config.vision.image_size as u32);
            if pp_path.is_file() {
                preprocess = preprocess.with_json(&read_json(&pp_path)?)?;
            }
            let text = config.text.clone();
            match cfg.get("htc") {
                Some(h) => {
                    let hc = HtcConfig::from_json(h).with_context(in_cfg)?;
                    let mut model = Htc::load(&vb, model, &hc).context("loading the HTC weights")?;
                    if let Some(lora) =
                        htc_shared::config::LoraConfig::from_htc_json(h).with_context(in_cfg)?
                    {
                        model.llava.llm = model
                            .llava
                            .llm
                            .with_lora(&lora, &vb, &vb.names())
                            .context("loading the LoRA adapters")?;
                    }
                    let template = match hc.chat_format {
                        htc_shared::config::ChatFormat::VicunaV1 => Template::VicunaV1,
                        htc_shared::config::ChatFormat::UserAssistant => Template::UserAssistant,
                    };
                    (AnyModel::Htc { model, config, preprocess }, template, text)
                }
                None => (AnyModel::Llava { model, config, preprocess }, Template::VicunaV1, text),
            }
        } else {
            let config = htc_shared::config::LlamaConfig::from_json(&cfg).with_context(in_cfg)?;
            let prefix = if src.contains("model.embed_tokens.weight") { "model" } else { "" };
            let model = Llama::load(&vb.pp(prefix), &vb.pp("lm_head"), &config)
                .context("loading the LLaMA weights")?;
            (AnyModel::Llama(model), jinja_template(path)?, config)
        };
        let tokenizer = tok.map(|inner| TextTokenizer {
            eos_ids: stop_ids(&text_cfg.eos_token_ids, &inner),
            inner,
            template,
        });
        Ok(Self { model, tokenizer, names: vb.names() })
    }

    fn open_gguf(path: &Path, device: &B::Device) -> Result<Self> {
        let src = WeightSource::open_gguf(path)?;
        let g = src.gguf().expect("gguf source");
        let config = g.llama_config()?;
        let doc = g.tokenizer_json()?;
        let inner = TextTokenizer::from_json(&doc)?;
        let template = g.chat_template().map(Template::Jinja).unwrap_or(Template::Plain);
        let vb = Loader::<B>::new(&src, device);
        let model =
            Llama::load(&vb.pp("model"), &vb.pp("lm_head"), &config).context("loading the GGUF weights")?;
        let tokenizer = TextTokenizer { eos_ids: stop_ids(&config.eos_token_ids, &inner), inner, template };
        Ok(Self { model: AnyModel::Llama(model), tokenizer: Some(tokenizer), names: vb.names() })
    }

    /// The image placeholder id, for models that take images.
    pub fn image_marker(&self) -> Option<i64> {
        match &self.model {
            AnyModel::Llava { config, .. } => Some(config.image_token_id),
            AnyModel::Llama(_) | AnyModel::Htc { .. } => None,
        }
    }
}

/// The chat template of a plain snapshot: `chat_template.jinja`, or `chat_template` in
/// `tokenizer_config.json`; none means the prompt is used as given.
fn jinja_template(dir: &Path) -> Result<Template> {
    let file = dir.join("chat_template.jinja");
    if file.is_file() {
        return Ok(Template::Jinja(std::fs::read_to_string(&file)?));
    }
    let tc = dir.join("tokenizer_config.json");
    if tc.is_file() {
        if let Some(t) = read_json(&tc)?.get("chat_template").and_then(Value::as_str) {
            return Ok(Template::Jinja(t.to_string()));
        }
    }
    Ok(Template::Plain)
}
