//! The training loop behind `htc train`: data order, micro-batches, steps, metrics,
//! validation, checkpoints and exact resume.
//!
//! The data order is a pure function of the seed and the epoch (epoch `e` shuffles with
//! `seed + e`), so a resumed run needs only the step to continue exactly where it stopped.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde_json::json;

use htc_shared::config::LoraConfig;
use htc_shared::params::ParamNames;
use htc_shared::preprocess::ClipPreprocess;

use super::checkpoint::{self, TrainerState};
use super::data::{self, DataOptions, Dataset, Example};
use super::objective::{nll_sum, Batch, SceneProbe, Trainable};
use super::optim::Moments;
use super::plot;
use super::step::{train_step_probed, Optimizer, ProbeWeight, Probed, StepReport};
use super::vision::{read_scenes, CellLabels};
use crate::formats::checkpoint::{AnyModel, Snapshot};
use crate::models::htc::{Htc, ImageTensors};
use crate::runtime::image::{clip_pixels, mgvq_pixels, read_image_file};
use crate::text::TextTokenizer;

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub model: PathBuf,
    pub data: PathBuf,
    pub images: PathBuf,
    pub val: Option<(PathBuf, PathBuf)>,
    pub out: PathBuf,
    pub trainable: Trainable,
    /// Train in this mode instead of the checkpoint's own (a stage of a curriculum: say,
    /// `none` to teach the LLM to read the patches, then `htc` to compress them); the
    /// checkpoints record it.
    pub mode: Option<htc_shared::config::HtcMode>,
    /// Train the LLM through LoRA adapters instead of its full weights.
    pub lora: Option<LoraConfig>,
    pub optimizer: Optimizer,
    /// Add the scene probe's loss on `<voco>` ([`SceneProbe`]), labels from a ShapesVQA
    /// `<split>.scenes.json`.
    pub scene_loss: Option<SceneLoss>,
    /// β of the KL term on `<voco>` ([`super::objective::kl_sum`]); 0: none.
    pub kl_weight: f64,
    pub global_batch: usize,
    pub micro_batch: usize,
    /// Micro-batches differentiated at once, each on its own thread (the step is the same
    /// for any count; more threads use more cores and memory).
    pub threads: usize,
    /// Stop after this many steps, or after `epochs` epochs.
    pub max_steps: Option<usize>,
    pub epochs: usize,
    pub seed: u64,
    pub save_every: usize,
    pub keep: usize,
    pub eval_every: usize,
    pub strict: bool,
    /// Label the questions' tokens too, not only the answers ([`DataOptions::train_on_inputs`]).
    pub train_on_inputs: bool,
    pub resume: bool,
    pub progress: bool,
}

impl RunConfig {
    /// The settings a resume must share with the run it continues.
    fn settings(&self) -> serde_json::Value {
        let o = &self.optimizer;
        let mut s = json!({
            "data": self.data, "images": self.images, "trainable": format!("{:?}", self.trainable),
            "lr": o.schedule.base, "warmup": o.schedule.warmup, "weight_decay": o.adamw.weight_decay,
            "betas": [o.adamw.beta1, o.adamw.beta2], "eps": o.adamw.eps, "max_grad_norm": o.max_grad_norm,
            "global_batch": self.global_batch, "micro_batch": self.micro_batch, "lora": self.lora,
            "mode": self.mode, "train_on_inputs": self.train_on_inputs,
            "scene_loss": self
                .scene_loss
                .as_ref()
                .map(|s| json!({"scenes": s.scenes, "weight": s.weight, "layer": s.layer, "probe_only": s.probe_only})),
        });
        if self.kl_weight > 0.0 {
            s["kl_weight"] = json!(self.kl_weight);
        }
        s
    }
}

/// The scene probe's labels and weight (`--scenes`, `--scene-loss`).
#[derive(Debug, Clone)]
pub struct SceneLoss {
    /// A `<split>.scenes.json` whose image paths are relative to the run's `images` folder.
    pub scenes: PathBuf,
    pub weight: f64,
    /// The LLM layer whose input (at `<voco>`) the probe reads.
    pub layer: usize,
    /// Train on the probe's loss alone, each text cut to its first token (`--probe-only`).
    pub probe_only: bool,
}

/// The cell labels of the scenes the scene probe learns, by image path.
type SceneLabels = HashMap<PathBuf, CellLabels>;

/// The cell labels of every scene in `s`, by image path (joined to `images`, as the data's).
fn scene_labels(s: &SceneLoss, images: &Path) -> Result<SceneLabels> {
    if !(s.weight.is_finite() && s.weight > 0.0) {
        bail!("--scene-loss must be a positive number, got {}", s.weight);
    }
    Ok(read_scenes(&s.scenes)?.into_iter().map(|(image, labels)| (images.join(image), labels)).collect())
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub steps: usize,
    pub final_loss: f64,
    pub checkpoint: PathBuf,
    pub examples: usize,
    pub skipped: usize,
}

/// The examples of global batch `k` of `epoch`.
fn global_batch(n: usize, seed: u64, epoch: usize, k: usize, size: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_add(epoch as u64)));
    order.into_iter().skip(k * size).take(size).collect()
}

/// The frozen MGVQ codes of each image, computed once per run (the tokenizer never trains,
/// so its codes for an image never change): `[h*w][G]` per image, about 7 KB at 336 px.
type CodeCache = HashMap<PathBuf, Vec<Vec<u16>>>;

/// The CLIP pixel values of each image, kept while they fit in a byte budget: decoding and
/// resizing an image costs more than a small model's training step spends on it, and the same
/// images come back every epoch.
struct PixelCache {
    values: HashMap<PathBuf, Vec<f32>>,
    bytes: usize,
    budget: usize,
}

impl PixelCache {
    /// Up to 4 GiB of pixel values (12,000 images at 168 px, 3,000 at 336 px).
    const BUDGET: usize = 4 << 30;

    fn new() -> Self {
        Self { values: HashMap::new(), bytes: 0, budget: Self::BUDGET }
    }
}

/// Turns examples into batches: the model's CLIP preprocessing, the code and pixel caches,
/// and, with `--scene-loss`, the scene labels the training batches carry.
struct Batcher {
    preprocess: ClipPreprocess,
    codes: CodeCache,
    pixels: PixelCache,
    scenes: Option<SceneLabels>,
    /// Cut each training text to its first token, not a target (`--probe-only`).
    probe_only: bool,
}

impl Batcher {
    /// Loads images and stacks examples into one batch; an image is decoded only when its
    /// pixel values are not in the pixel cache or (for MGVQ) its codes not in the code cache.
    /// A `training` batch carries the scene labels and, with `probe_only`, each text cut to its
    /// first token; a validation batch neither.
    fn batch<B: Backend>(
        &mut self, model: &Htc<B>, ex: &[&Example], device: &B::Device, training: bool,
    ) -> Result<Batch<B>> {
        let (scenes, probe_only) =
            if training { (self.scenes.as_ref(), self.probe_only) } else { (None, false) };
        let (codes, pixels) = (&mut self.codes, &mut self.pixels);
        let size = model.llava.vision.image_size();
        let mut clip = Vec::new();
        let mut batch_codes: Option<Vec<Vec<u16>>> =
            model.mgvq.as_ref().filter(|_| model.config.uses_discrete()).map(|_| Vec::new());
        for e in ex {
            let need_codes = batch_codes.is_some() && !codes.contains_key(&e.image);
            let cached = pixels.values.get(&e.image).cloned();
            let img = match (&cached, need_codes) {
                (Some(_), false) => None,
                _ => Some(read_image_file(&e.image).with_context(|| format!("record `{}`", e.id))?),
            };
            let t = match (cached, &img) {
                (Some(v), _) => Tensor::from_data(TensorData::new(v, [1, 3, size, size]), device),
                (None, Some(img)) => clip_pixels(&self.preprocess, img, size, device)?,
                (None, None) => unreachable!("an image without cached pixels is decoded"),
            };
            let n = 3 * size * size * std::mem::size_of::<f32>();
            if !pixels.values.contains_key(&e.image) && pixels.bytes + n <= pixels.budget {
                pixels.values.insert(
                    e.image.clone(),
                    t.to_data().convert::<f32>().to_vec::<f32>().map_err(|e| anyhow!("{e:?}"))?,
                );
                pixels.bytes += n;
            }
            clip.push(t);
            if let (Some(mgvq), Some(out)) = (&model.mgvq, batch_codes.as_mut()) {
                if need_codes {
                    let img = img.as_ref().expect("decoded when its codes are missing");
                    let px = mgvq_pixels(model, img).context("the model has MGVQ but takes no MGVQ input")?;
                    codes.insert(e.image.clone(), mgvq.encode(px)?.codes);
                }
                out.extend(codes[&e.image].iter().cloned());
            }
        }
        Ok(Batch {
            images: ImageTensors { clip: Tensor::cat(clip, 0), mgvq: None, codes: batch_codes },
            ids: ex
                .iter()
                .map(|e| if probe_only { e.ids.iter().take(1).copied().collect() } else { e.ids.clone() })
                .collect(),
            labels: ex
                .iter()
                .map(|e| if probe_only { vec![super::objective::IGNORE] } else { e.labels.clone() })
                .collect(),
            scene: scenes
                .map(|s| {
                    ex.iter()
                        .map(|e| {
                            s.get(&e.image)
                                .copied()
                                .with_context(|| format!("no scene for {}", e.image.display()))
                        })
                        .collect::<Result<Vec<_>>>()
                })
                .transpose()?,
        })
    }

    /// Mean answer-token loss over a data set, without gradients.
    fn validate<B: AutodiffBackend>(
        &mut self, model: &Htc<B>, set: &Dataset, micro: usize, device: &B::Device,
    ) -> Result<f64> {
        let m = model.valid();
        let inner_dev: burn::tensor::Device<B::InnerBackend> = device.clone();
        let (mut nll, mut n) = (0f64, 0usize);
        for chunk in set.examples.chunks(micro) {
            let refs: Vec<&Example> = chunk.iter().collect();
            let b = self.batch(&m, &refs, &inner_dev, false)?;
            n += b.targets();
            nll += nll_sum(&m, &b)?.into_scalar().elem::<f64>();
        }
        Ok(nll / n.max(1) as f64)
    }
}

/// Keeps the metrics lines of steps up to `step` (a resumed run rewrites what follows) and
/// returns their losses for the plot.
fn trim_metrics(path: &Path, step: usize) -> Result<Vec<plot::Point>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path)?;
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(path, &kept)?;
    Ok(kept
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()? as usize, v["loss"].as_f64()?, v["val_loss"].as_f64())))
        .collect())
}

/// The options no run can start with.
fn check_options(cfg: &RunConfig) -> Result<()> {
    if cfg.micro_batch == 0 || cfg.global_batch == 0 || !cfg.global_batch.is_multiple_of(cfg.micro_batch) {
        bail!(
            "--global-batch ({}) must be a positive multiple of --micro-batch ({})",
            cfg.global_batch,
            cfg.micro_batch
        );
    }
    if cfg.save_every == 0 {
        bail!("--save-every must be at least 1");
    }
    if cfg.resume && cfg.scene_loss.is_some() {
        bail!(
            "--resume cannot continue a run with --scene-loss: the probe's heads are training-only and \
             not checkpointed; start the stage again"
        );
    }
    Ok(())
}

/// The trainer state and optimizer moments of the checkpoint a resume continues from.
type Resumed<B> = (TrainerState, Moments<<B as AutodiffBackend>::InnerBackend>);

/// The checkpoint the run starts from: `cfg.model`, or with `--resume` the last checkpoint in
/// `cfg.out` and its trainer state (which must have been trained with the same settings). A
/// fresh run refuses an `out` that already holds checkpoints.
fn starting_point<B: AutodiffBackend>(
    cfg: &RunConfig, device: &B::Device,
) -> Result<(PathBuf, Option<Resumed<B>>)> {
    let existing = checkpoint::checkpoints(&cfg.out)?;
    match (cfg.resume, existing.last()) {
        (true, Some((_, dir))) => {
            let (state, moments) = checkpoint::load_state::<B::InnerBackend>(dir, device)?;
            if state.settings != cfg.settings() {
                bail!(
                    "{} was trained with different settings ({}); resume with the same options",
                    dir.display(),
                    state.settings
                );
            }
            Ok((dir.clone(), Some((state, moments))))
        }
        (true, None) => bail!("--resume: {} has no checkpoint to resume from", cfg.out.display()),
        (false, Some((_, dir))) => bail!(
            "{} already holds checkpoints ({}): pass --resume to continue, or choose another --out",
            cfg.out.display(),
            dir.display()
        ),
        (false, None) => Ok((cfg.model.clone(), None)),
    }
}

/// The model a run trains, as opened from its starting checkpoint.
struct Opened<B: Backend> {
    model: Htc<B>,
    names: ParamNames,
    preprocess: ClipPreprocess,
    tokenizer: TextTokenizer,
}

/// Opens the HTC checkpoint at `source` in the run's mode, adds fresh LoRA adapters when the
/// run asks for them and the checkpoint has none, and marks what trains.
fn open_model<B: AutodiffBackend>(cfg: &RunConfig, source: &Path, device: &B::Device) -> Result<Opened<B>> {
    let snap = Snapshot::<B>::open(source, device)?;
    let mut names = snap.names;
    let AnyModel::Htc { mut model, preprocess, .. } = snap.model else {
        bail!(
            "{} is not an HTC checkpoint (config.json has no `htc` section); make one with `htc init`",
            source.display()
        )
    };
    if let Some(mode) = cfg.mode {
        model = model.with_mode(mode, true)?;
    }
    let tokenizer =
        snap.tokenizer.context("the model has no tokenizer.json; training needs one to read the data")?;
    if let Some(lc) = &cfg.lora {
        if !cfg.trainable.llm {
            bail!("LoRA adapters train the LLM: add `llm` to --train");
        }
        if !model.llava.llm.has_lora() {
            // Fresh adapters are drawn from the run's seed, so two runs with the same options
            // are identical.
            B::seed(device, cfg.seed);
            let fresh = htc_shared::loader::Loader::<B>::init(device);
            model.llava.llm = model.llava.llm.with_lora(lc, &fresh, &names)?;
            names.extend(fresh.names());
        }
    }
    Ok(Opened { model: cfg.trainable.apply(model), names, preprocess, tokenizer })
}

/// The training set and the validation set, if any, their texts cut to what fits in the
/// model's context after the image prefix.
fn load_data<B: Backend>(
    cfg: &RunConfig, model: &Htc<B>, tokenizer: &TextTokenizer,
) -> Result<(Dataset, Option<Dataset>)> {
    let ctx = model.llava.llm.config().max_position_embeddings;
    let max_text = ctx.saturating_sub(model.layout(0).len());
    let opts = DataOptions { tokenizer, max_text, strict: cfg.strict, train_on_inputs: cfg.train_on_inputs };
    let train = data::load(&cfg.data, &cfg.images, &opts)?;
    if let Some(s) = train.skip_summary() {
        tracing::warn!("{}: {s}", cfg.data.display());
    }
    let val = match &cfg.val {
        Some((d, i)) => Some(data::load(d, i, &opts)?),
        None => None,
    };
    Ok((train, val))
}

/// With `--scene-loss`: the scene labels of every training image and a fresh scene probe
/// beside the model (its parameters' names added to `names`); without, the model alone.
fn attach_probe<B: AutodiffBackend>(
    cfg: &RunConfig, train: &Dataset, model: Htc<B>, names: &mut ParamNames, device: &B::Device,
) -> Result<(Probed<B>, ProbeWeight, Option<SceneLabels>)> {
    let scenes = match &cfg.scene_loss {
        Some(s) => {
            let labels = scene_labels(s, &cfg.images)?;
            if let Some(e) = train.examples.iter().find(|e| !labels.contains_key(&e.image)) {
                bail!(
                    "{} has no scene for {} (record `{}`); --scenes must describe the training images",
                    s.scenes.display(),
                    e.image.display(),
                    e.id
                );
            }
            Some(labels)
        }
        None => None,
    };
    let probe = match &scenes {
        Some(_) => {
            // Fresh heads drawn from the run's seed, so two runs with the same options agree.
            B::seed(device, cfg.seed);
            let vb = htc_shared::loader::Loader::<B>::init(device);
            let probe = SceneProbe::new(&vb.pp("scene_probe"), model.llava.llm.config().hidden_size)?;
            names.extend(vb.names());
            Some(probe)
        }
        None => None,
    };
    let trained = Probed { model, probe };
    if !(cfg.kl_weight.is_finite() && cfg.kl_weight >= 0.0) {
        bail!("--kl-weight must be a number of at least 0, got {}", cfg.kl_weight);
    }
    if cfg.kl_weight > 0.0 && trained.model.layout(0).n_voco == 0 {
        bail!(
            "--kl-weight: the KL term is on the <voco> token, which mode {:?} has not got",
            trained.model.config.mode
        );
    }
    let probe_weight =
        cfg.scene_loss.as_ref().map_or(ProbeWeight { weight: 0.0, layer: 0, kl: cfg.kl_weight }, |s| {
            ProbeWeight { weight: s.weight, layer: s.layer, kl: cfg.kl_weight }
        });
    let layers = trained.model.llava.llm.config().num_hidden_layers;
    if trained.probe.is_some() && probe_weight.layer >= layers {
        bail!("--scene-layer {}: the LLM has {layers} layers (0 to {})", probe_weight.layer, layers - 1);
    }
    Ok((trained, probe_weight, scenes))
}

/// The step to start from and the optimizer moments to start with: a resumed run's, which
/// must have been planned for the same `total` steps and seed, or step 0 and no moments.
fn resume_point<B: AutodiffBackend>(
    resumed: Option<Resumed<B>>, total: usize, seed: u64,
) -> Result<(usize, Moments<B::InnerBackend>)> {
    match resumed {
        Some((state, moments)) => {
            if state.total_steps != total || state.seed != seed {
                bail!(
                    "the run was planned for {} steps with seed {}; this resume asks for {total} with seed {}",
                    state.total_steps,
                    state.seed,
                    seed
                );
            }
            Ok((state.step, moments))
        }
        None => Ok((0, Moments::<B::InnerBackend>::default())),
    }
}

/// Where a run reports its steps: `metrics.jsonl` (one line per step), the loss plot and the
/// progress bar.
struct Log {
    metrics: std::fs::File,
    /// Every step's losses so far, for the plot.
    history: Vec<plot::Point>,
    plot_path: PathBuf,
    bar: indicatif::ProgressBar,
    total: usize,
    save_every: usize,
}

impl Log {
    /// Creates `cfg.out`, keeps the metrics of the steps up to `start` and opens the metrics
    /// file to append the rest.
    fn open(cfg: &RunConfig, start: usize, total: usize) -> Result<Self> {
        std::fs::create_dir_all(&cfg.out).with_context(|| format!("cannot create {}", cfg.out.display()))?;
        let metrics_path = cfg.out.join("metrics.jsonl");
        let history = trim_metrics(&metrics_path, start)?;
        let plot_path = cfg.out.join("loss.png");
        let metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .with_context(|| format!("cannot open {}", metrics_path.display()))?;
        let bar = super::progress(total, cfg.progress);
        bar.set_position(start as u64);
        Ok(Self { metrics, history, plot_path, bar, total, save_every: cfg.save_every })
    }

    /// Appends step `step`'s metrics `line`, redraws the plot every 10 steps, at each
    /// checkpoint and at the end, and advances the bar.
    fn record(&mut self, step: usize, line: &serde_json::Value, r: &StepReport, tps: f64) -> Result<()> {
        writeln!(self.metrics, "{line}")?;
        self.metrics.flush()?;
        self.history.push((step, r.loss, line["val_loss"].as_f64()));
        if step.is_multiple_of(10) || step == self.total || step.is_multiple_of(self.save_every) {
            plot::draw(&self.history, &self.plot_path)?;
        }
        self.bar.set_message(format!("loss {:.4} lr {:.2e} {:.0} tok/s", r.loss, r.lr, tps));
        self.bar.inc(1);
        Ok(())
    }
}

/// The metrics line of one step.
fn metrics_line(step: usize, epoch: usize, r: &StepReport, tps: f64, elapsed_s: f64) -> serde_json::Value {
    let mut line = json!({
        "step": step, "epoch": epoch, "loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm,
        "tokens_per_s": tps, "elapsed_s": elapsed_s,
    });
    if let Some((l, acc)) = r.scene {
        line["scene_loss"] = json!(l);
        line["scene_accuracy"] = json!(acc);
    }
    if let Some(kl) = r.kl {
        line["kl"] = json!(kl);
    }
    line
}

/// The steps of a run, once its model, data and optimizer state are set up.
struct Steps<'a, B: AutodiffBackend> {
    cfg: &'a RunConfig,
    device: &'a B::Device,
    /// The checkpoint the run started from (recorded in each checkpoint it saves).
    source: PathBuf,
    names: ParamNames,
    train: Dataset,
    val: Option<Dataset>,
    batcher: Batcher,
    moments: Moments<B::InnerBackend>,
    opt: Optimizer,
    probe_weight: ProbeWeight,
    steps_per_epoch: usize,
    total: usize,
}

impl<B: AutodiffBackend> Steps<'_, B> {
    /// Takes steps `start..total`, logging each and saving checkpoints; returns the last
    /// step's loss and the last checkpoint (`source` if none was saved).
    fn run(&mut self, mut trained: Probed<B>, start: usize, log: &mut Log) -> Result<(f64, PathBuf)> {
        let t0 = Instant::now();
        let mut last = (f64::NAN, self.source.clone());
        for s in start..self.total {
            let epoch = s / self.steps_per_epoch;
            let micro = self.micro_batches(&trained.model, s)?;
            let ts = Instant::now();
            let (m, r) = train_step_probed(
                trained,
                &micro,
                &self.names,
                &mut self.moments,
                &self.opt,
                self.probe_weight,
                self.cfg.threads,
            )?;
            trained = m;
            let tps = r.tokens as f64 / ts.elapsed().as_secs_f64().max(1e-9);
            let step = s + 1;
            let mut line = metrics_line(step, epoch, &r, tps, t0.elapsed().as_secs_f64());
            if let Some(v) = self.val_loss(&trained.model, step)? {
                line["val_loss"] = json!(v);
            }
            log.record(step, &line, &r, tps)?;
            last.0 = r.loss;
            if step.is_multiple_of(self.cfg.save_every) || step == self.total {
                last.1 = self.save(&trained.model, step)?;
            }
        }
        Ok(last)
    }

    /// The micro-batches of step `s` (counted from 0): its global batch in the data order of
    /// its epoch, cut into `--micro-batch` pieces.
    fn micro_batches(&mut self, model: &Htc<B>, s: usize) -> Result<Vec<Batch<B>>> {
        let (epoch, k) = (s / self.steps_per_epoch, s % self.steps_per_epoch);
        let idx = global_batch(self.train.examples.len(), self.cfg.seed, epoch, k, self.cfg.global_batch);
        let ex: Vec<&Example> = idx.iter().map(|&i| &self.train.examples[i]).collect();
        ex.chunks(self.cfg.micro_batch).map(|c| self.batcher.batch(model, c, self.device, true)).collect()
    }

    /// The validation loss after step `step`, when there is a validation set and the step is
    /// due (every `--eval-every` steps and the last).
    fn val_loss(&mut self, model: &Htc<B>, step: usize) -> Result<Option<f64>> {
        let Some(v) = &self.val else { return Ok(None) };
        if step.is_multiple_of(self.cfg.eval_every.max(1)) || step == self.total {
            return Ok(Some(self.batcher.validate(model, v, self.cfg.micro_batch, self.device)?));
        }
        Ok(None)
    }

    /// Saves the checkpoint of step `step` with the trainer state a resume needs, and returns
    /// its directory.
    fn save(&self, model: &Htc<B>, step: usize) -> Result<PathBuf> {
        let cfg = self.cfg;
        let state = TrainerState {
            step,
            total_steps: self.total,
            steps_per_epoch: self.steps_per_epoch,
            seed: cfg.seed,
            settings: cfg.settings(),
        };
        checkpoint::save(
            &cfg.out,
            &self.source,
            model,
            &self.names,
            cfg.lora.as_ref(),
            &self.moments,
            &state,
            cfg.keep,
        )
    }
}

/// Runs training to the end and returns where the last checkpoint is.
pub fn run<B: AutodiffBackend>(cfg: &RunConfig, device: &B::Device) -> Result<RunSummary> {
    check_options(cfg)?;
    let (source, resumed) = starting_point::<B>(cfg, device)?;
    let Opened { model, mut names, preprocess, tokenizer } = open_model::<B>(cfg, &source, device)?;
    let (train, val) = load_data(cfg, &model, &tokenizer)?;
    let (trained, probe_weight, scenes) = attach_probe(cfg, &train, model, &mut names, device)?;
    let probe_only = cfg.scene_loss.as_ref().is_some_and(|s| s.probe_only);
    let n = train.examples.len();
    let steps_per_epoch = n.div_ceil(cfg.global_batch);
    let total = cfg.max_steps.unwrap_or(cfg.epochs * steps_per_epoch);
    if total == 0 {
        bail!("nothing to do: 0 steps (set --epochs or --max-steps)");
    }
    let mut opt = cfg.optimizer;
    opt.schedule.total = total;
    let (start, moments) = resume_point::<B>(resumed, total, cfg.seed)?;
    let mut log = Log::open(cfg, start, total)?;
    let batcher =
        Batcher { preprocess, codes: CodeCache::new(), pixels: PixelCache::new(), scenes, probe_only };
    let skipped = train.skipped_count();
    let mut steps = Steps {
        cfg,
        device,
        source,
        names,
        train,
        val,
        batcher,
        moments,
        opt,
        probe_weight,
        steps_per_epoch,
        total,
    };
    let (final_loss, checkpoint) = steps.run(trained, start, &mut log)?;
    log.bar.finish();
    Ok(RunSummary { steps: total, final_loss, checkpoint, examples: n, skipped })
}
