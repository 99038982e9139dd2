//! Supervised pretraining of an HTC model's vision tower on ShapesVQA scenes
//! (`htc pretrain-vision`): the stage that stands in for CLIP's own pretraining when a ViT is
//! trained from scratch.
//!
//! Every patch feature the projector would see (`hidden_states[select_layer]`, CLS dropped)
//! gets four linear heads that name what the 3×3 grid cell under the patch centre holds:
//! shape (or empty), colour (or empty), size (or empty) and texture (or empty). The loss is the
//! sum of the four cross-entropies, averaged over patches. A second set of four heads reads the
//! mean of all patch features and names what every one of the nine cells holds (weighted by
//! `--pooled-weight`, off by default): a single vector that averages the patches, which is what
//! a `<voco>` token reads at first (its attention starts near uniform), then carries the whole
//! scene, each property bound to its cell. Only the vision tower learns; the heads are dropped
//! afterwards and the model directory is written back with the new tower,
//! everything else unchanged, for `htc train` to build on.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::nn::Linear;
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};

use htc_shared::loader::Loader;
use htc_shared::preprocess::ClipPreprocess;

use super::checkpoint::write_model_dir;
use super::optim::{self, AdamW, Moments, WarmupCosine};
use super::plot;
pub use crate::data::{read_scenes, CellLabels};
use crate::formats::checkpoint::{AnyModel, Snapshot};
use crate::models::htc::Htc;
use crate::runtime::image::{clip_pixels, read_image_file};

/// The four properties a cell is labelled with, and their class counts (0 = empty cell).
pub const HEADS: [(&str, usize); 4] = [("shape", 5), ("color", 7), ("size", 3), ("texture", 4)];

/// The grid cell (row-major over 3×3) under the centre of patch `p` of a `g×g` patch grid.
pub fn cell_of_patch(p: usize, g: usize) -> usize {
    let (r, c) = (p / g, p % g);
    let to_cell = |i: usize| ((2 * i + 1) * 3) / (2 * g);
    to_cell(r) * 3 + to_cell(c)
}

/// Linear heads from the vision width to each property's classes, for `cells` cells at once:
/// 1 for the per-patch heads, 9 for the scene heads on the mean patch feature.
#[derive(Module, Debug)]
pub struct CellHeads<B: Backend> {
    heads: Vec<Linear<B>>,
}

impl<B: Backend> CellHeads<B> {
    pub(crate) fn new(vb: &Loader<B>, width: usize, cells: usize) -> Result<Self> {
        let heads = HEADS
            .iter()
            .map(|(name, n)| Ok(vb.linear(name, width, cells * n, true)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { heads })
    }

    /// One head per property of [`HEADS`], in order.
    pub(crate) fn heads(&self) -> &[Linear<B>] {
        &self.heads
    }
}

/// The vision tower being pretrained (inside its HTC model) and the heads.
#[derive(Module, Debug)]
pub struct Pretrain<B: Backend> {
    model: Htc<B>,
    heads: CellHeads<B>,
    scene: CellHeads<B>,
}

/// Settings of a pretraining run.
#[derive(Debug, Clone)]
pub struct VisionRun {
    pub model: PathBuf,
    pub scenes: PathBuf,
    pub images: PathBuf,
    pub val_scenes: Option<PathBuf>,
    pub out: PathBuf,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub warmup: usize,
    /// Weight of the scene heads on the mean patch feature (0 turns them off).
    pub pooled_weight: f64,
    pub seed: u64,
    pub progress: bool,
}

/// What a run reports: held-out accuracy per head (cells, empty ones included), from each
/// patch and from the mean patch feature.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionSummary {
    pub steps: usize,
    pub final_loss: f64,
    pub val_accuracy: Vec<(&'static str, f64)>,
    pub val_pooled_accuracy: Vec<(&'static str, f64)>,
    pub seconds: f64,
}

struct Batch<B: Backend> {
    pixels: Tensor<B, 4>,
    /// Per head, the class of every patch `[b * patches]`.
    targets: Vec<Vec<i64>>,
    /// Per head, the class of every cell `[b * 9]`.
    scene: Vec<Vec<i64>>,
}

fn batch<B: Backend>(
    items: &[&(String, CellLabels)], images: &Path, pre: &ClipPreprocess, size: usize, patches: usize,
    device: &B::Device,
) -> Result<Batch<B>> {
    let g = (patches as f64).sqrt().round() as usize;
    let mut px = Vec::with_capacity(items.len());
    let mut targets: Vec<Vec<i64>> = (0..4).map(|_| Vec::with_capacity(items.len() * patches)).collect();
    let mut scene: Vec<Vec<i64>> = (0..4).map(|_| Vec::with_capacity(items.len() * 9)).collect();
    for (file, labels) in items {
        let img = read_image_file(&images.join(file))?;
        px.push(clip_pixels(pre, &img, size, device)?);
        for p in 0..patches {
            let cell = labels[cell_of_patch(p, g)];
            for (h, t) in targets.iter_mut().enumerate() {
                t.push(cell[h] as i64);
            }
        }
        for cell in labels {
            for (h, t) in scene.iter_mut().enumerate() {
                t.push(cell[h] as i64);
            }
        }
    }
    Ok(Batch { pixels: Tensor::cat(px, 0), targets, scene })
}

/// Mean cross-entropy of `logits` `[n, classes]` against `t`, and how many it gets right.
pub(crate) fn head_loss<B: Backend>(logits: Tensor<B, 2>, t: &[i64]) -> (Tensor<B, 1>, usize) {
    let logp = log_softmax(logits, 1);
    let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(t.to_vec(), [t.len(), 1]), &logp.device());
    let nll = logp.clone().gather(1, idx).mean().neg();
    let pred: Vec<i64> = logp.argmax(1).into_data().convert::<i64>().to_vec().expect("i64 after convert");
    (nll, pred.iter().zip(t).filter(|(a, b)| a == b).count())
}

/// The loss: the sum over the per-patch heads of their mean cross-entropy, plus `pooled`
/// times the same sum for the scene heads on the mean patch feature; and per head the number
/// of right predictions, per patch and per cell from the mean feature.
fn loss<B: Backend>(m: &Pretrain<B>, b: &Batch<B>, pooled: f64) -> (Tensor<B, 1>, Vec<usize>, Vec<usize>) {
    let feats = m.model.llava.vision.patch_features(b.pixels.clone(), m.model.llava.select_layer());
    let [bs, p, d] = feats.dims();
    let mean = feats.clone().mean_dim(1).reshape([bs, d]);
    let feats = feats.reshape([bs * p, d]);
    let mut total: Option<Tensor<B, 1>> = None;
    let mut add = |x: Tensor<B, 1>| {
        total = Some(match total.take() {
            Some(t) => t + x,
            None => x,
        })
    };
    let mut right = Vec::new();
    for (head, t) in m.heads.heads.iter().zip(&b.targets) {
        let (nll, k) = head_loss(head.forward(feats.clone()), t);
        add(nll);
        right.push(k);
    }
    let mut pooled_right = Vec::new();
    for ((head, t), (_, n)) in m.scene.heads.iter().zip(&b.scene).zip(HEADS) {
        let (nll, k) = head_loss(head.forward(mean.clone()).reshape([bs * 9, n]), t);
        if pooled > 0.0 {
            add(nll.mul_scalar(pooled));
        }
        pooled_right.push(k);
    }
    (total.expect("four heads"), right, pooled_right)
}

/// Pretrains the vision tower of the HTC model in `r.model` and writes the model to `r.out`.
pub fn pretrain<B: AutodiffBackend>(r: &VisionRun, device: &B::Device) -> Result<VisionSummary> {
    if r.batch == 0 || r.steps == 0 {
        bail!("--batch and --steps must be at least 1");
    }
    if !(r.lr.is_finite() && r.lr > 0.0) {
        bail!("--lr must be a positive number, got {}", r.lr);
    }
    if !(r.pooled_weight.is_finite() && r.pooled_weight >= 0.0) {
        bail!("--pooled-weight must be a number ≥ 0, got {}", r.pooled_weight);
    }
    let t0 = Instant::now();
    let train = read_scenes(&r.scenes)?;
    if train.is_empty() {
        bail!("{} holds no scenes", r.scenes.display());
    }
    let val = match &r.val_scenes {
        Some(p) => read_scenes(p)?,
        None => Vec::new(),
    };
    let snap = Snapshot::<B>::open(&r.model, device)?;
    let mut names = snap.names;
    let AnyModel::Htc { model, preprocess, .. } = snap.model else {
        bail!("{} is not an HTC checkpoint (config.json has no `htc` section)", r.model.display())
    };
    let (size, patches) = (model.llava.vision.image_size(), model.llava.vision.num_patches());
    let g = (patches as f64).sqrt().round() as usize;
    if g * g != patches {
        bail!("the vision tower's {patches} patches are not a square grid");
    }
    let mut model = model;
    model.llava.projector = model.llava.projector.no_grad();
    model.llava.llm = model.llava.llm.no_grad();
    model.mgvq = model.mgvq.map(Module::no_grad);
    model.discrete = model.discrete.map(Module::no_grad);
    model.voco = model.voco.set_require_grad(false);
    let width = {
        let probe = Tensor::<B, 4>::zeros([1, 3, size, size], device);
        model.llava.vision.patch_features(probe, model.llava.select_layer()).dims()[2]
    };
    B::seed(device, r.seed);
    let vb = Loader::<B>::init(device);
    let heads = CellHeads::new(&vb.pp("cell_heads"), width, 1)?;
    let scene = CellHeads::new(&vb.pp("scene_heads"), width, 9)?;
    names.extend(vb.names());
    let mut m = Pretrain { model, heads, scene };
    std::fs::create_dir_all(&r.out).with_context(|| format!("cannot create {}", r.out.display()))?;
    let metrics_path = r.out.join("vision_metrics.jsonl");
    let mut metrics = std::fs::File::create(&metrics_path)
        .with_context(|| format!("cannot create {}", metrics_path.display()))?;
    let mut moments = Moments::<B::InnerBackend>::default();
    let adamw = AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05 };
    let schedule = WarmupCosine { base: r.lr, warmup: r.warmup, total: r.steps };
    let mut rng = StdRng::seed_from_u64(r.seed);
    let bar = super::progress(r.steps, r.progress);
    let mut history = Vec::new();
    let mut last = f64::NAN;
    for step in 1..=r.steps {
        let items: Vec<&(String, CellLabels)> =
            (0..r.batch).map(|_| &train[rng.random_range(0..train.len())]).collect();
        let b = batch::<B>(&items, &r.images, &preprocess, size, patches, device)?;
        let (l, right, pooled_right) = loss(&m, &b, r.pooled_weight);
        let lv = l.clone().into_scalar().elem::<f64>();
        if !lv.is_finite() {
            bail!("the loss is {lv} at step {step}: training diverged");
        }
        let grads = GradientsParams::from_grads(l.backward(), &m);
        let norm = optim::global_norm(&m, &grads);
        let lr = schedule.lr(moments.steps);
        m = optim::step(m, grads, &names, &mut moments, adamw, lr, optim::clip_factor(norm, Some(1.0)))?;
        let n = (r.batch * patches) as f64;
        let cells = (r.batch * 9) as f64;
        let acc: serde_json::Map<String, Value> = HEADS
            .iter()
            .zip(&right)
            .map(|((h, _), &k)| (format!("acc_{h}"), json!(k as f64 / n)))
            .chain(
                HEADS
                    .iter()
                    .zip(&pooled_right)
                    .map(|((h, _), &k)| (format!("pooled_acc_{h}"), json!(k as f64 / cells))),
            )
            .collect();
        let mut line = json!({"step": step, "loss": lv, "lr": lr, "grad_norm": norm, "elapsed_s": t0.elapsed().as_secs_f64()});
        line.as_object_mut().expect("an object").extend(acc);
        writeln!(metrics, "{line}")?;
        history.push((step, lv, None));
        bar.set_message(format!("loss {lv:.4}"));
        bar.inc(1);
        last = lv;
    }
    bar.finish();
    plot::draw_labelled(&history, &r.out.join("vision_loss.png"), "cell cross-entropy (4 heads)")?;
    let valid = m.valid();
    let mut val_accuracy = Vec::new();
    let mut val_pooled_accuracy = Vec::new();
    if !val.is_empty() {
        let mut right = [0usize; 4];
        let mut pooled_right = [0usize; 4];
        let inner: burn::tensor::Device<B::InnerBackend> = device.clone();
        for chunk in val.chunks(r.batch) {
            let items: Vec<&(String, CellLabels)> = chunk.iter().collect();
            let b = batch::<B::InnerBackend>(&items, &r.images, &preprocess, size, patches, &inner)?;
            let (_, r1, r2) = loss(&valid, &b, 0.0);
            for (acc, k) in right.iter_mut().zip(r1) {
                *acc += k;
            }
            for (acc, k) in pooled_right.iter_mut().zip(r2) {
                *acc += k;
            }
        }
        let n = (val.len() * patches) as f64;
        val_accuracy = HEADS.iter().zip(right).map(|((h, _), k)| (*h, k as f64 / n)).collect();
        let cells = (val.len() * 9) as f64;
        val_pooled_accuracy =
            HEADS.iter().zip(pooled_right).map(|((h, _), k)| (*h, k as f64 / cells)).collect();
    }
    write_model_dir(&r.out, &r.model, &valid.model, &names, None)?;
    Ok(VisionSummary {
        steps: r.steps,
        final_loss: last,
        val_accuracy,
        val_pooled_accuracy,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
