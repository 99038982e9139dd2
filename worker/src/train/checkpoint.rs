//! Training checkpoints: `RUN_DIR/checkpoint-STEP/` is a model directory `htc ask` and
//! `htc serve` load as is (f32 `model.safetensors` under the source checkpoint's keys, LoRA
//! adapters unmerged beside their base weights, with its config and tokenizer files) plus the trainer's state: AdamW's moments by checkpoint key
//! (`trainer_state.safetensors`, f32) and the step, data position and settings
//! (`trainer_state.json`). A checkpoint is written into a temporary directory and renamed into
//! place, so a crash never leaves a half-written one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use htc_shared::config::LoraConfig;
use htc_shared::params::ParamNames;

use super::optim::Moments;
use crate::formats::write::{write_safetensors, Entry};
use crate::formats::WeightSource;
use crate::models::htc::Htc;

/// Files of a model directory copied next to the weights.
const MODEL_FILES: [&str; 6] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "generation_config.json",
];

/// Where the run is, saved with every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: usize,
    pub total_steps: usize,
    pub steps_per_epoch: usize,
    /// The seed of the data order (epoch `e` is shuffled with `seed + e`).
    pub seed: u64,
    /// The run's settings, to refuse a resume with different ones.
    pub settings: serde_json::Value,
}

/// A tensor on the host as a checkpoint stores it: key, shape, f32 data.
pub type HostParam = (String, Vec<usize>, Vec<f32>);

struct Host<'a> {
    names: &'a ParamNames,
    out: Vec<HostParam>,
    missing: usize,
}

impl<B: Backend> ModuleVisitor<B> for Host<'_> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        let Some(name) = self.names.get(&p.id) else {
            self.missing += 1;
            return;
        };
        let t = p.val();
        let dims = t.dims();
        let data = t.into_data().convert::<f32>().to_vec::<f32>().expect("f32 after convert");
        let (shape, data) = if name.transposed && D == 2 {
            // burn keeps `[in, out]`; the checkpoint stores `[out, in]`.
            (vec![dims[1], dims[0]], htc_shared::loader::transpose(&data, dims[0], dims[1]))
        } else {
            (dims.to_vec(), data)
        };
        self.out.push((name.key.clone(), shape, data));
    }
}

/// Every parameter of `model` as stored in a checkpoint: key, shape, f32 data.
pub fn host_params<B: Backend, M: Module<B>>(model: &M, names: &ParamNames) -> Result<Vec<HostParam>> {
    let mut h = Host { names, out: Vec::new(), missing: 0 };
    model.visit(&mut h);
    if h.missing > 0 {
        bail!("{} parameters have no checkpoint key", h.missing);
    }
    h.out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(h.out)
}

/// Tensors to stream into a safetensors file.
pub fn entries(tensors: Vec<HostParam>) -> Vec<Entry<'static>> {
    tensors
        .into_iter()
        .map(|(k, s, d)| -> Entry<'static> { (k, s, Box::new(move || Ok(d.clone()))) })
        .collect()
}

pub fn checkpoint_dir(run: &Path, step: usize) -> PathBuf {
    run.join(format!("checkpoint-{step}"))
}

/// The completed checkpoints of a run, oldest first.
pub fn checkpoints(run: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut v = Vec::new();
    if !run.is_dir() {
        return Ok(v);
    }
    for e in std::fs::read_dir(run).with_context(|| format!("cannot list {}", run.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(step) = name.strip_prefix("checkpoint-").and_then(|s| s.parse::<usize>().ok()) {
            if e.path().join("trainer_state.json").is_file() {
                v.push((step, e.path()));
            }
        }
    }
    v.sort();
    Ok(v)
}

/// Writes `model` as a model directory `dir` that `htc ask` and `htc serve` load: f32
/// `model.safetensors` under the checkpoint keys, and the config and tokenizer files of
/// `source`, with `htc.lora` set to `lora` (adapters stored unmerged) or removed.
pub fn write_model_dir<B: Backend>(
    dir: &Path, source: &Path, model: &Htc<B>, names: &ParamNames, lora: Option<&LoraConfig>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_safetensors(&dir.join("model.safetensors"), entries(host_params(model, names)?), false)?;
    for f in MODEL_FILES {
        let p = source.join(f);
        if p.is_file() {
            std::fs::copy(&p, dir.join(f)).with_context(|| format!("cannot copy {}", p.display()))?;
        }
    }
    let cfg_path = dir.join("config.json");
    let raw = std::fs::read(&cfg_path).with_context(|| format!("{} has no config.json", source.display()))?;
    let mut cfg: serde_json::Value = serde_json::from_slice(&raw).context("config.json is not valid JSON")?;
    let htc =
        cfg.get_mut("htc").and_then(|h| h.as_object_mut()).context("config.json has no `htc` section")?;
    htc.insert("mode".into(), serde_json::to_value(model.config.mode)?);
    match lora {
        Some(l) => htc.insert("lora".into(), serde_json::to_value(l)?),
        None => htc.remove("lora"),
    };
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
    Ok(())
}

/// Writes checkpoint `state.step` of `model` into `run`, copying the model files from
/// `source`, then keeps only the newest `keep` checkpoints.
#[allow(clippy::too_many_arguments)] // the parts of a checkpoint, each needed once
pub fn save<B: AutodiffBackend>(
    run: &Path, source: &Path, model: &Htc<B>, names: &ParamNames, lora: Option<&LoraConfig>,
    moments: &Moments<B::InnerBackend>, state: &TrainerState, keep: usize,
) -> Result<PathBuf> {
    let dest = checkpoint_dir(run, state.step);
    let tmp = run.join(format!(".checkpoint-{}.tmp", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot clear {}", tmp.display()))?;
    }
    write_model_dir(&tmp, source, model, names, lora)?;
    let mut keys: Vec<&String> = moments.by_key.keys().collect();
    keys.sort();
    let mut opt = Vec::new();
    for k in keys {
        let (m, v) = &moments.by_key[k];
        for (prefix, t) in [("m", m), ("v", v)] {
            let data = t.clone().into_data().convert::<f32>().to_vec::<f32>().expect("f32 after convert");
            opt.push((format!("{prefix}.{k}"), vec![data.len()], data));
        }
    }
    write_safetensors(&tmp.join("trainer_state.safetensors"), entries(opt), false)?;
    let json = serde_json::json!({ "state": state, "adam_steps": moments.steps });
    std::fs::write(tmp.join("trainer_state.json"), serde_json::to_vec_pretty(&json)?)?;
    sync_dir(&tmp)?;
    if dest.exists() {
        std::fs::remove_dir_all(&dest).with_context(|| format!("cannot replace {}", dest.display()))?;
    }
    std::fs::rename(&tmp, &dest)
        .with_context(|| format!("cannot move the checkpoint to {}", dest.display()))?;
    let all = checkpoints(run)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(old)
            .with_context(|| format!("cannot remove old checkpoint {}", old.display()))?;
    }
    Ok(dest)
}

/// Flushes a directory's files to disk before it is renamed into place.
fn sync_dir(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        std::fs::File::open(e?.path())?.sync_all()?;
    }
    Ok(())
}

/// Reads the trainer state and AdamW's moments of a checkpoint.
pub fn load_state<B: Backend>(dir: &Path, device: &B::Device) -> Result<(TrainerState, Moments<B>)> {
    let p = dir.join("trainer_state.json");
    let raw = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&raw).with_context(|| format!("{} is not valid JSON", p.display()))?;
    let state: TrainerState = serde_json::from_value(v["state"].clone())
        .with_context(|| format!("{} has no valid trainer state", p.display()))?;
    let steps =
        v["adam_steps"].as_u64().with_context(|| format!("{} has no adam_steps", p.display()))? as usize;
    let src = WeightSource::open_files(&[dir.join("trainer_state.safetensors")])?;
    let mut moments = Moments { steps, by_key: Default::default() };
    for name in src.names() {
        let Some(key) = name.strip_prefix("m.") else { continue };
        let read = |n: &str| -> Result<Tensor<B, 1>> {
            let t = src.read(n)?;
            let len = t.data.len();
            Ok(Tensor::from_data(TensorData::new(t.data, [len]), device))
        };
        moments.by_key.insert(key.to_string(), (read(&name)?, read(&format!("v.{key}"))?));
    }
    Ok((state, moments))
}
