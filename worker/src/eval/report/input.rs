//! The raw JSON `scripts/experiments.sh` writes under the results directory, read with serde.
//! A malformed file is an error naming the file and the field; a directory or file the report
//! does not know is a warning and is skipped. Only `setup.json` is required.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::paper;
use crate::eval::score::read_json;

/// `setup.json`: how the experiments ran. Every field but `seeds` may be missing.
#[derive(Debug, Deserialize)]
pub struct Setup {
    pub seeds: Vec<u64>,
    pub quick: Option<bool>,
    pub steps: Option<u64>,
    pub batch: Option<u64>,
    pub lr: Option<f64>,
    pub test_questions: Option<u64>,
    pub train_images: Option<u64>,
    pub model: Option<ModelInfo>,
    /// Seconds of the stages every arm of a seed shares, per seed.
    pub shared_seconds: Option<BTreeMap<String, f64>>,
    pub total_seconds: Option<f64>,
    pub date: Option<String>,
    pub notes: Option<String>,
}

/// The trained model's size.
#[derive(Debug, Deserialize)]
pub struct ModelInfo {
    pub llm_width: Option<u64>,
    pub llm_layers: Option<u64>,
    pub vision_width: Option<u64>,
    pub patches: Option<u64>,
    pub params: Option<u64>,
}

/// `runs/<arm>/seed-<s>.json`: one arm trained (or evaluated) with one seed.
#[derive(Debug, Deserialize)]
pub struct Run {
    pub arm: String,
    pub seed: u64,
    pub steps: Option<u64>,
    pub train_seconds: Option<f64>,
    pub eval_seconds: Option<f64>,
    pub eval: Eval,
}

/// An `htc score --json` output on ShapesVQA.
#[derive(Debug, Deserialize)]
pub struct Eval {
    /// Overall exact-match accuracy, %.
    pub score: f64,
    pub metrics: Metrics,
}

#[derive(Debug, Deserialize)]
pub struct Metrics {
    /// Accuracy per question family, %.
    #[serde(default)]
    pub family: BTreeMap<String, f64>,
    /// Accuracy per kind (`S` semantic, `D` detail), %.
    #[serde(default)]
    pub kind: BTreeMap<String, f64>,
}

/// `probe/<arm>/seed-<s>.json`: linear probes on the model's representations.
#[derive(Debug, Deserialize)]
pub struct Probe {
    pub train_scenes: Option<u64>,
    pub test_scenes: Option<u64>,
    pub tasks: Vec<ProbeTask>,
    /// Mean accuracy per kind; computed from `tasks` when missing.
    pub mean: Option<BTreeMap<String, Reprs>>,
}

#[derive(Debug, Deserialize)]
pub struct ProbeTask {
    pub task: String,
    pub kind: String,
    pub classes: Option<u64>,
    /// The majority-class baseline, %.
    pub majority: Option<f64>,
    pub accuracy: Reprs,
}

/// Probe accuracy (%) on each representation; `None` where the model lacks it.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Reprs {
    /// The `<voco>` output.
    pub z: Option<f64>,
    /// The anchors, pooled.
    pub v_d: Option<f64>,
    /// The patches, pooled (V̄).
    #[serde(rename = "V")]
    pub v: Option<f64>,
}

/// `attention/<arm>/seed-<s>.json`: where `<voco>` looks, per layer and per image.
#[derive(Debug, Deserialize)]
pub struct Attention {
    pub images: Option<u64>,
    pub n_discrete: usize,
    pub n_patches: usize,
    /// Patch grid, rows × columns.
    pub grid: Option<[usize; 2]>,
    pub layers: Vec<Layer>,
    #[serde(default)]
    pub heatmaps: Vec<Heatmap>,
}

/// One layer's attention mass of `<voco>` (mean ± std over images).
#[derive(Debug, Deserialize)]
pub struct Layer {
    pub layer: usize,
    /// Summed over the anchors.
    pub anchors: Option<MeanStd>,
    /// Summed over the patches.
    pub patches: Option<MeanStd>,
    /// Per anchor (mass / count).
    pub anchor_token: Option<MeanStd>,
    /// Per patch (mass / count).
    pub patch_token: Option<MeanStd>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct MeanStd {
    pub mean: f64,
    pub std: Option<f64>,
}

/// `<voco>`'s attention to each anchor and each patch of one image.
#[derive(Debug, Deserialize)]
pub struct Heatmap {
    pub image: String,
    #[serde(default)]
    pub anchors: Vec<f64>,
    pub patches: Vec<f64>,
}

/// `cost/<arm>.json`: the time to answer one question three ways (median and minimum ms).
#[derive(Debug, Deserialize)]
pub struct Cost {
    pub mode: Option<String>,
    pub prefix_tokens: Option<u64>,
    pub question_tokens: Option<u64>,
    pub kept_positions: Option<u64>,
    /// The whole sequence prefilled.
    pub full_ms: Ms,
    /// The image compressed once.
    pub compress_ms: Ms,
    /// A follow-up question on the cached compressed image.
    pub followup_ms: Ms,
    pub repeats: Option<u64>,
    pub threads: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Ms {
    pub median: f64,
    pub min: Option<f64>,
}

/// Files per arm, then per seed.
pub type PerArm<T> = BTreeMap<String, BTreeMap<u64, T>>;

/// Everything read from a results directory.
pub struct Results {
    pub dir: PathBuf,
    pub setup: Setup,
    pub runs: PerArm<Run>,
    pub probes: PerArm<Probe>,
    pub attention: PerArm<Attention>,
    pub cost: BTreeMap<String, Cost>,
    /// `limits.md`, verbatim.
    pub limits: Option<String>,
    /// Files and directories skipped, one line each.
    pub warnings: Vec<String>,
}

impl Results {
    /// Reads `dir`. Fails on a missing `setup.json` or any malformed file, naming it.
    pub fn read(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!("{} is not a directory of experiment results", dir.display());
        }
        let setup: Setup = read_json(&dir.join("setup.json"))?;
        let mut warnings = Vec::new();
        let runs = read_arms(dir, "runs", &setup.seeds, &mut warnings, |p, r: &Run, arm, seed| {
            check_run(p, r, arm, seed)
        })?;
        let probes = read_arms(dir, "probe", &setup.seeds, &mut warnings, check_probe)?;
        let attention = read_arms(dir, "attention", &setup.seeds, &mut warnings, check_attention)?;
        let cost = read_cost(dir, &mut warnings)?;
        let limits_path = dir.join("limits.md");
        let limits = match limits_path.exists() {
            true => Some(
                std::fs::read_to_string(&limits_path)
                    .with_context(|| format!("cannot read {}", limits_path.display()))?,
            ),
            false => None,
        };
        Ok(Self { dir: dir.to_path_buf(), setup, runs, probes, attention, cost, limits, warnings })
    }
}

/// The sorted entries of `dir`, or none when it does not exist.
fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut v = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    v.sort();
    Ok(v)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Reads `<dir>/<section>/<arm>/seed-<s>.json` for every known arm and every seed of the
/// setup, checking each parsed file with `check(path, value, arm, seed)`.
fn read_arms<T: DeserializeOwned>(
    dir: &Path, section: &str, seeds: &[u64], warnings: &mut Vec<String>,
    check: impl Fn(&Path, &T, &str, u64) -> Result<()>,
) -> Result<PerArm<T>> {
    let mut out = PerArm::new();
    for arm_dir in entries(&dir.join(section))? {
        let arm = file_name(&arm_dir);
        if !arm_dir.is_dir() {
            warnings.push(format!("{}: not an arm directory, ignored", arm_dir.display()));
            continue;
        }
        if paper::arm(&arm).is_none() {
            warnings.push(format!("{}: unknown arm `{arm}`, ignored", arm_dir.display()));
            continue;
        }
        for file in entries(&arm_dir)? {
            let name = file_name(&file);
            let Some(seed) = name.strip_prefix("seed-").and_then(|s| s.strip_suffix(".json")) else {
                warnings.push(format!("{}: not a seed-<s>.json file, ignored", file.display()));
                continue;
            };
            let Ok(seed) = seed.parse::<u64>() else {
                warnings.push(format!("{}: `{seed}` is not a seed number, ignored", file.display()));
                continue;
            };
            if !seeds.contains(&seed) {
                warnings
                    .push(format!("{}: seed {seed} is not in setup.json's seeds, ignored", file.display()));
                continue;
            }
            let value: T = read_json(&file)?;
            check(&file, &value, &arm, seed)?;
            out.entry(arm.clone()).or_default().insert(seed, value);
        }
    }
    Ok(out)
}

/// Fails unless `v` is a percentage.
fn percent(path: &Path, field: &str, v: f64) -> Result<()> {
    if !(0.0..=100.0).contains(&v) {
        bail!("{}: `{field}` is {v}, not a percentage in 0..=100", path.display());
    }
    Ok(())
}

fn check_run(path: &Path, r: &Run, arm: &str, seed: u64) -> Result<()> {
    if r.arm != arm || r.seed != seed {
        bail!(
            "{}: the file says arm `{}` seed {}, its path arm `{arm}` seed {seed}",
            path.display(),
            r.arm,
            r.seed
        );
    }
    percent(path, "eval.score", r.eval.score)?;
    for (name, map) in [("family", &r.eval.metrics.family), ("kind", &r.eval.metrics.kind)] {
        for (k, v) in map {
            percent(path, &format!("eval.metrics.{name}.{k}"), *v)?;
        }
    }
    Ok(())
}

fn check_probe(path: &Path, p: &Probe, _: &str, _: u64) -> Result<()> {
    for (i, t) in p.tasks.iter().enumerate() {
        let fields = [
            ("accuracy.z", t.accuracy.z),
            ("accuracy.v_d", t.accuracy.v_d),
            ("accuracy.V", t.accuracy.v),
            ("majority", t.majority),
        ];
        for (name, v) in fields {
            if let Some(v) = v {
                percent(path, &format!("tasks[{i}].{name}"), v)?;
            }
        }
    }
    Ok(())
}

fn check_attention(path: &Path, a: &Attention, _: &str, _: u64) -> Result<()> {
    if let Some([rows, cols]) = a.grid {
        if rows * cols != a.n_patches {
            bail!("{}: `grid` {rows}×{cols} does not hold `n_patches` {}", path.display(), a.n_patches);
        }
    }
    for (i, h) in a.heatmaps.iter().enumerate() {
        if h.anchors.len() != a.n_discrete || h.patches.len() != a.n_patches {
            bail!(
                "{}: `heatmaps[{i}]` ({}) has {} anchors and {} patches, the file says {} and {}",
                path.display(),
                h.image,
                h.anchors.len(),
                h.patches.len(),
                a.n_discrete,
                a.n_patches
            );
        }
    }
    Ok(())
}

/// Reads `<dir>/cost/<arm>.json` for every known arm.
fn read_cost(dir: &Path, warnings: &mut Vec<String>) -> Result<BTreeMap<String, Cost>> {
    let mut out = BTreeMap::new();
    for file in entries(&dir.join("cost"))? {
        let name = file_name(&file);
        let Some(arm) = name.strip_suffix(".json") else {
            warnings.push(format!("{}: not a <arm>.json file, ignored", file.display()));
            continue;
        };
        if paper::arm(arm).is_none() {
            warnings.push(format!("{}: unknown arm `{arm}`, ignored", file.display()));
            continue;
        }
        out.insert(arm.to_string(), read_json(&file)?);
    }
    Ok(out)
}
