//! The `htc` section of an HTC checkpoint's config.json: mode, N_d, k, mask topology,
//! projectors and the MGVQ tokenizer.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{parse, MgvqConfig};
use crate::mask::Topology;
use crate::Error;

/// How the image reaches the text (the `htc` section of a checkpoint's config.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HtcMode {
    /// Vanilla LLaVA: all 576 patch tokens stay visible (the upper bound).
    None,
    /// Continuous only: `[BOS][V][<voco>][text]` (VoCo-LLaMA).
    Voco,
    /// Hybrid: `[BOS][v_d][V][<voco>][text]` (the paper).
    Htc,
    /// Discrete anchors only: `[BOS][v_d][<voco>][text]`.
    Discrete,
    /// The 576 patch tokens average-pooled to `n_voco` tokens, visible to the text.
    Avgpool,
}

impl HtcMode {
    /// Whether the mode reads MGVQ anchors (the MGVQ tokenizer runs on the image itself).
    pub fn uses_discrete(self) -> bool {
        matches!(self, HtcMode::Htc | HtcMode::Discrete)
    }
}

/// How a question becomes the text after the image prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatFormat {
    /// LLaVA-1.5's vicuna_v1: system prompt, `USER: … ASSISTANT:`.
    #[default]
    VicunaV1,
    /// vicuna_v1's turns without the system prompt.
    UserAssistant,
}

/// The continuous projector P_v.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectorKind {
    Linear,
    Mlp2xGelu,
}

/// Where the anchors join the patches before `<voco>` compresses them (the paper's Table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    /// `[BOS][v_d][V][<voco>]`: the anchors first (the paper).
    #[default]
    Before,
    /// `[BOS][V][v_d][<voco>]`: the anchors after the patches.
    After,
    /// `[BOS][V + mean(v_d)][<voco>]`: the anchors averaged into one vector added to every
    /// patch token; no anchor positions of their own.
    Mean,
}

fn default_n_discrete() -> usize {
    4
}
fn default_n_voco() -> usize {
    1
}
fn default_topology() -> Topology {
    Topology::Star
}
fn default_projector() -> ProjectorKind {
    ProjectorKind::Mlp2xGelu
}
fn default_discrete_hidden() -> usize {
    8192
}
fn default_discrete_layers() -> usize {
    2
}

/// The `htc` section of an HTC checkpoint's config.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HtcConfig {
    pub mode: HtcMode,
    /// N_d: discrete anchor tokens (1, 2, 4 or 8).
    #[serde(default = "default_n_discrete")]
    pub n_discrete: usize,
    /// k: `<voco>` tokens (or pooled tokens in `avgpool`).
    #[serde(default = "default_n_voco")]
    pub n_voco: usize,
    #[serde(default = "default_topology")]
    pub topology: Topology,
    #[serde(default = "default_projector")]
    pub continuous_projector: ProjectorKind,
    /// Hidden width of the discrete projector P_d (8192 in the paper's Eq. 4).
    #[serde(default = "default_discrete_hidden")]
    pub discrete_hidden: usize,
    /// Layers of P_d: 1 (one linear map, no activation: the paper's Table 10 "Linear"), 2 (the
    /// paper's Eq. 4) or 3 (a second hidden layer of the same width).
    #[serde(default = "default_discrete_layers")]
    pub discrete_layers: usize,
    /// Where the anchors join the patches.
    #[serde(default)]
    pub fusion: Fusion,
    /// The MGVQ tokenizer (required by `htc` and `discrete`).
    #[serde(default)]
    pub mgvq: Option<MgvqConfig>,
    /// The chat format the model was trained with.
    #[serde(default)]
    pub chat_format: ChatFormat,
}

impl HtcConfig {
    /// The paper's setting: mode `htc`, 4 anchors, one `<voco>`, star mask, MLP projector.
    pub fn paper(mgvq: MgvqConfig, discrete_hidden: usize) -> Self {
        Self {
            mode: HtcMode::Htc,
            n_discrete: 4,
            n_voco: 1,
            topology: Topology::Star,
            continuous_projector: ProjectorKind::Mlp2xGelu,
            discrete_hidden,
            discrete_layers: 2,
            fusion: Fusion::Before,
            mgvq: Some(mgvq),
            chat_format: ChatFormat::VicunaV1,
        }
    }

    pub fn from_json(v: &Value) -> Result<Self, Error> {
        let c: Self = parse(v, "invalid `htc` section: ")?;
        c.validate()?;
        Ok(c)
    }

    pub fn uses_discrete(&self) -> bool {
        self.mode.uses_discrete()
    }

    pub fn uses_continuous(&self) -> bool {
        !matches!(self.mode, HtcMode::Discrete)
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.uses_discrete() {
            if !matches!(self.n_discrete, 1 | 2 | 4 | 8) {
                return Err(Error::Config(format!(
                    "n_discrete must be 1, 2, 4 or 8, got {}",
                    self.n_discrete
                )));
            }
            if !(1..=3).contains(&self.discrete_layers) {
                return Err(Error::Config(format!(
                    "discrete_layers must be 1, 2 or 3, got {}",
                    self.discrete_layers
                )));
            }
            let m = self
                .mgvq
                .as_ref()
                .ok_or_else(|| Error::Config(format!("mode {:?} needs an `mgvq` config", self.mode)))?;
            m.validate()?;
        }
        if self.n_voco == 0 {
            return Err(Error::Config("n_voco must be at least 1".into()));
        }
        Ok(())
    }
}

/// LoRA adapters on the LLM's projections (`htc.lora` in config.json): `W x + (α/r) B A x`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: usize,
    /// Which projections carry adapters: any of q, k, v, o, gate, up, down.
    pub targets: Vec<String>,
}

/// The projections a LoRA adapter may target.
pub const LORA_TARGETS: [&str; 7] = ["q", "k", "v", "o", "gate", "up", "down"];

impl LoraConfig {
    /// Checks rank, alpha and targets, naming what is wrong.
    pub fn validate(&self) -> Result<(), Error> {
        if self.rank == 0 || self.alpha == 0 {
            return Err(Error::Config(format!(
                "LoRA rank and alpha must be at least 1 (rank {}, alpha {})",
                self.rank, self.alpha
            )));
        }
        if self.targets.is_empty() {
            return Err(Error::Config("LoRA needs at least one target (q, k, v, o, gate, up, down)".into()));
        }
        if let Some(bad) = self.targets.iter().find(|t| !LORA_TARGETS.contains(&t.as_str())) {
            return Err(Error::Config(format!("unknown LoRA target `{bad}` (q, k, v, o, gate, up, down)")));
        }
        Ok(())
    }

    /// `α / r`.
    pub fn scale(&self) -> f64 {
        self.alpha as f64 / self.rank as f64
    }

    pub fn targets(&self, t: &str) -> bool {
        self.targets.iter().any(|x| x == t)
    }

    /// The `lora` entry of an `htc` section, if any.
    pub fn from_htc_json(htc: &Value) -> Result<Option<Self>, Error> {
        match htc.get("lora") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let c: Self = parse(v, "invalid `htc.lora` section: ")?;
                c.validate()?;
                Ok(Some(c))
            }
        }
    }
}
