//! Representation probing (`htc analyze probe`, the paper's Table 3): how much of a ShapesVQA
//! scene a linear classifier can read from three frozen representations of its image.
//!
//! - `z`: the `<voco>` token's final output, the LLM's last hidden state (after the final
//!   norm) at the `<voco>` position of the prefix `[BOS][v_d][V][<voco>]` run under the
//!   model's own mask ([`Htc::prefix_hidden`]); with several `<voco>` tokens, their outputs
//!   side by side. Only for modes with `<voco>` (voco, htc, discrete).
//! - `v_d`: the mean of the N_d anchor embeddings (P_d's output, as the LLM takes them), for
//!   modes with anchors.
//! - `V`: the mean of the projected patch tokens (P_v's output), for modes with patches.
//!
//! The paper pools `v_d` and `V` and then runs a "voco encoding" over them; here the pooled
//! inputs are probed directly, so they say what the LLM is given and `z` what it made of it.
//!
//! Tasks come from the scene labels; "the first object" is the object in the lowest-numbered
//! occupied cell. S (semantic): `shape` and `color` of the first object, `count` (the number
//! of objects; its classes are the counts seen), `pair` (24 binary tasks, "does the scene hold
//! a <colour> <shape>", reported as the mean over the pairs). D (detail): `texture`, `size`
//! and `position` (cell, 9 classes) of the first object.
//!
//! A probe is a multinomial logistic regression on features standardised with the train
//! split's mean and standard deviation, trained by full-batch Adam with an L2 penalty. Every
//! task's probe is trained at once as one linear map whose outputs are grouped per task (class
//! slots a task does not have are masked out of its softmax): the loss is the sum of the
//! tasks' losses, and Adam and the penalty act on each weight alone, so each task's weights
//! follow exactly the path they would follow trained alone, at one run per representation.

use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::module::{AutodiffModule, Module, Param};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;

use super::{first_scenes, host, image_batch, load_htc, visual_spans, Loaded};
use crate::data::shapes::{COLORS, SHAPES, TEXTURES};
use crate::data::CellLabels;
#[cfg(doc)]
use crate::models::htc::Htc;

/// Settings of `htc analyze probe`.
#[derive(Debug, Clone)]
pub struct ProbeRun {
    pub model: PathBuf,
    pub train_scenes: PathBuf,
    pub train_images: PathBuf,
    pub test_scenes: PathBuf,
    pub test_images: PathBuf,
    pub train_count: usize,
    pub test_count: usize,
    pub seed: u64,
    /// Images per forward pass.
    pub batch: usize,
}

/// The optimisation of every probe.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSettings {
    pub epochs: usize,
    pub lr: f64,
    pub l2: f32,
    pub seed: u64,
}

impl ProbeSettings {
    /// Full-batch Adam at lr 1e-2 for 300 epochs with L2 1e-4.
    pub fn new(seed: u64) -> Self {
        Self { epochs: 300, lr: 1e-2, l2: 1e-4, seed }
    }
}

/// Test accuracy (percent) per representation; `None` for one the model lacks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PerRep {
    pub z: Option<f64>,
    pub v_d: Option<f64>,
    #[serde(rename = "V")]
    pub v: Option<f64>,
}

/// One task's line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskResult {
    pub task: &'static str,
    pub kind: &'static str,
    pub classes: usize,
    /// Test accuracy (percent) of always answering the train split's most frequent class.
    pub majority: f64,
    pub accuracy: PerRep,
}

/// Mean accuracy over the S tasks and over the D tasks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Means {
    #[serde(rename = "S")]
    pub s: PerRep,
    #[serde(rename = "D")]
    pub d: PerRep,
}

/// The report `htc analyze probe` writes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeReport {
    pub train_scenes: usize,
    pub test_scenes: usize,
    pub tasks: Vec<TaskResult>,
    pub mean: Means,
}

/// What the probes are asked of one scene.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SceneTargets {
    /// The first object's shape, colour, texture and size (0-based class indices) and cell.
    pub shape: usize,
    pub color: usize,
    pub texture: usize,
    pub size: usize,
    pub position: usize,
    /// The number of objects.
    pub count: usize,
    /// Per (colour, shape) pair, colour-major (`colour * 4 + shape`): whether the scene holds it.
    pub pairs: Vec<bool>,
}

/// The (colour, shape) pairs the `pair` task asks about.
pub const PAIRS: usize = COLORS.len() * SHAPES.len();

/// The probe targets of a scene; `None` for a scene with no object.
pub fn scene_targets(labels: &CellLabels) -> Option<SceneTargets> {
    let first = labels.iter().position(|c| c[0] > 0)?;
    let [shape, color, size, texture] = labels[first];
    let mut pairs = vec![false; PAIRS];
    for &[s, c, _, _] in labels.iter().filter(|c| c[0] > 0) {
        pairs[(c - 1) * SHAPES.len() + (s - 1)] = true;
    }
    Some(SceneTargets {
        shape: shape - 1,
        color: color - 1,
        texture: texture - 1,
        size: size - 1,
        position: first,
        count: labels.iter().filter(|c| c[0] > 0).count(),
        pairs,
    })
}

/// One classification head: its labels on both splits and its class count.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub classes: usize,
    pub train: Vec<usize>,
    pub test: Vec<usize>,
}

/// A task of the report and the heads it averages over (one, or 24 for `pair`).
struct Task {
    name: &'static str,
    kind: &'static str,
    heads: Vec<Head>,
}

/// The tasks over a train and a test split's targets, in report order.
fn tasks(train: &[SceneTargets], test: &[SceneTargets]) -> Vec<Task> {
    let head = |classes: usize, f: &dyn Fn(&SceneTargets) -> usize| Head {
        classes,
        train: train.iter().map(f).collect(),
        test: test.iter().map(f).collect(),
    };
    let mut counts: Vec<usize> = train.iter().chain(test).map(|t| t.count).collect();
    counts.sort_unstable();
    counts.dedup();
    let count_class = |t: &SceneTargets| counts.binary_search(&t.count).expect("every count is listed");
    vec![
        Task { name: "shape", kind: "S", heads: vec![head(SHAPES.len(), &|t| t.shape)] },
        Task { name: "color", kind: "S", heads: vec![head(COLORS.len(), &|t| t.color)] },
        Task { name: "count", kind: "S", heads: vec![head(counts.len(), &count_class)] },
        Task {
            name: "pair",
            kind: "S",
            heads: (0..PAIRS).map(|p| head(2, &|t| t.pairs[p] as usize)).collect(),
        },
        Task { name: "texture", kind: "D", heads: vec![head(TEXTURES.len(), &|t| t.texture)] },
        Task { name: "size", kind: "D", heads: vec![head(2, &|t| t.size)] },
        Task { name: "position", kind: "D", heads: vec![head(9, &|t| t.position)] },
    ]
}

/// Test accuracy (percent) of always answering the most frequent train label (the lowest of
/// tied ones).
pub fn majority(head: &Head) -> f64 {
    let mut freq = vec![0usize; head.classes];
    for &y in &head.train {
        freq[y] += 1;
    }
    let best = (0..head.classes).max_by_key(|&c| (freq[c], std::cmp::Reverse(c))).unwrap_or(0);
    percent(head.test.iter().filter(|&&y| y == best).count(), head.test.len())
}

fn percent(right: usize, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        100.0 * right as f64 / n as f64
    }
}

/// The weights of every head, side by side: `[d, heads * slots]` and its bias.
#[derive(Module, Debug)]
struct Linear<B: Backend> {
    weight: Param<Tensor<B, 2>>,
    bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(self.weight.val()) + self.bias.val().unsqueeze::<2>()
    }
}

/// Per-dimension mean and standard deviation of `x` (a zero deviation counts as 1).
fn moments(x: &[Vec<f32>]) -> (Vec<f32>, Vec<f32>) {
    let d = x[0].len();
    let n = x.len() as f64;
    let mean: Vec<f64> = (0..d).map(|j| x.iter().map(|r| r[j] as f64).sum::<f64>() / n).collect();
    let std = (0..d)
        .map(|j| {
            let v = x.iter().map(|r| (r[j] as f64 - mean[j]).powi(2)).sum::<f64>() / n;
            let s = v.sqrt();
            if s > 1e-12 {
                s as f32
            } else {
                1.0
            }
        })
        .collect();
    (mean.into_iter().map(|m| m as f32).collect(), std)
}

fn standardised<B: Backend>(x: &[Vec<f32>], mean: &[f32], std: &[f32], device: &B::Device) -> Tensor<B, 2> {
    let d = mean.len();
    let flat: Vec<f32> =
        x.iter().flat_map(|r| r.iter().zip(mean).zip(std).map(|((v, m), s)| (v - m) / s)).collect();
    Tensor::from_data(TensorData::new(flat, [x.len(), d]), device)
}

/// Trains one probe per head on `train_x` (rows: scenes) and returns each head's test
/// accuracy on `test_x`, in percent.
pub fn fit_probes<B: AutodiffBackend>(
    train_x: &[Vec<f32>], test_x: &[Vec<f32>], heads: &[Head], s: ProbeSettings, device: &B::Device,
) -> Result<Vec<f64>> {
    let (n, m) = (train_x.len(), test_x.len());
    if n == 0 || heads.is_empty() {
        bail!("a probe needs at least one training scene and one task");
    }
    let d = train_x[0].len();
    if let Some(bad) = train_x.iter().chain(test_x).find(|r| r.len() != d) {
        bail!("feature rows of {} and {d} values mixed", bad.len());
    }
    if let Some(h) = heads.iter().find(|h| h.train.len() != n || h.test.len() != m) {
        bail!("a task has {} train and {} test labels for {n} and {m} scenes", h.train.len(), h.test.len());
    }
    let t = heads.len();
    let c = heads.iter().map(|h| h.classes).max().unwrap_or(1).max(1);
    if let Some(h) = heads.iter().find(|h| h.train.iter().chain(&h.test).any(|&y| y >= h.classes)) {
        bail!("a label is out of its task's {} classes", h.classes);
    }
    let (mean, std) = moments(train_x);
    let x = standardised::<B>(train_x, &mean, &std, device);
    let mut onehot = vec![0f32; n * t * c];
    for (k, h) in heads.iter().enumerate() {
        for (i, &y) in h.train.iter().enumerate() {
            onehot[(i * t + k) * c + y] = 1.0;
        }
    }
    let onehot = Tensor::<B, 3>::from_data(TensorData::new(onehot, [n, t, c]), device);
    // Class slots past a task's classes get a large negative logit: no probability, no gradient.
    let slots: Vec<f32> =
        heads.iter().flat_map(|h| (0..c).map(move |j| if j < h.classes { 0.0 } else { -1e9 })).collect();
    let slots = Tensor::<B, 3>::from_data(TensorData::new(slots, [1, t, c]), device);
    // Head k's initial weights come from its own stream (seed + k), so that a head starts
    // where it would start trained alone with that seed; the masked slots start (and stay) at 0.
    let mut w = vec![0f32; d * t * c];
    for (k, h) in heads.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(s.seed.wrapping_add(k as u64));
        for i in 0..d {
            for j in 0..h.classes {
                w[i * t * c + k * c + j] = rng.random_range(-0.01..0.01);
            }
        }
    }
    let mut probe = Linear {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(w, [d, t * c]), device)),
        bias: Param::from_tensor(Tensor::zeros([t * c], device)),
    };
    let mut optim = AdamConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(Some(WeightDecayConfig::new(s.l2)))
        .init::<B, Linear<B>>();
    for _ in 0..s.epochs {
        let logits = probe.forward(x.clone()).reshape([n, t, c]) + slots.clone();
        // Each head's mean cross-entropy, summed over the heads.
        let loss = (log_softmax(logits, 2) * onehot.clone()).sum().div_scalar(n as f64).neg();
        let grads = GradientsParams::from_grads(loss.backward(), &probe);
        probe = optim.step(s.lr, probe, grads);
    }
    if m == 0 {
        return Ok(vec![0.0; t]);
    }
    let probe = probe.valid();
    let test = standardised::<B::InnerBackend>(test_x, &mean, &std, device);
    let logits = probe.forward(test).reshape([m, t, c]) + slots.inner();
    let pred: Vec<i64> =
        logits.argmax(2).into_data().convert::<i64>().to_vec().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(heads
        .iter()
        .enumerate()
        .map(|(k, h)| {
            let right = h.test.iter().enumerate().filter(|&(i, &y)| pred[i * t + k] == y as i64).count();
            percent(right, m)
        })
        .collect())
}

/// The three representations of a set of scene images (rows: images); `None` where the model
/// lacks one.
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub z: Option<Vec<Vec<f32>>>,
    pub v_d: Option<Vec<Vec<f32>>>,
    pub v: Option<Vec<Vec<f32>>>,
}

/// Appends the rows of `t: [b, w]` to `rows`.
fn push_rows<B: Backend>(rows: &mut Option<Vec<Vec<f32>>>, t: Tensor<B, 2>) -> Result<()> {
    let w = t.dims()[1];
    rows.get_or_insert_with(Vec::new).extend(host(t)?.chunks(w).map(<[f32]>::to_vec));
    Ok(())
}

/// The representations of the images `names` (under `root`), `batch` images per forward pass.
pub fn features<B: Backend>(
    loaded: &Loaded<B>, root: &std::path::Path, names: &[&str], batch: usize, device: &B::Device,
) -> Result<Features> {
    let model = &loaded.model;
    let layout = model.layout(0);
    let bos = layout.bos as usize;
    let (anchors, patches) = visual_spans(&layout, model.config.fusion);
    let (anchors, patches) = (anchors.start + bos..anchors.end + bos, patches.start + bos..patches.end + bos);
    let (v0, v1) = (layout.voco_start(), layout.text_start());
    let mut f = Features::default();
    for chunk in names.chunks(batch.max(1)) {
        let img = image_batch(loaded, root, chunk, device)?;
        if layout.n_voco == 0 {
            // No bottleneck (`none`, `avgpool`): no `<voco>`, no anchors; the patches before
            // any pooling.
            let v = model.llava.image_features(img.clip);
            push_rows(&mut f.v, v.mean_dim(1).squeeze_dim::<2>(1))?;
            continue;
        }
        let embeds = model.prefix_embeds(&img)?;
        let [b, _, d] = embeds.dims();
        if !anchors.is_empty() {
            let a = embeds.clone().slice([0..b, anchors.clone(), 0..d]).mean_dim(1);
            push_rows(&mut f.v_d, a.squeeze_dim::<2>(1))?;
        }
        if !patches.is_empty() {
            let p = embeds.clone().slice([0..b, patches.clone(), 0..d]).mean_dim(1);
            push_rows(&mut f.v, p.squeeze_dim::<2>(1))?;
        }
        let hidden = model.prefix_hidden(embeds)?;
        let z = hidden.slice([0..b, v0..v1, 0..d]).reshape([b, (v1 - v0) * d]);
        push_rows(&mut f.z, z)?;
    }
    Ok(f)
}

/// Runs the probes of `r`: the model's forward passes on `B::InnerBackend`, the probes' training
/// on `B`.
pub fn run<B: AutodiffBackend>(r: &ProbeRun, device: &B::Device) -> Result<ProbeReport> {
    // The scene files first: a bad one fails before the model loads.
    let train = first_scenes(&r.train_scenes, r.train_count)?;
    let test = first_scenes(&r.test_scenes, r.test_count)?;
    let targets = |scenes: &[(String, CellLabels)], path: &std::path::Path| -> Result<Vec<SceneTargets>> {
        scenes
            .iter()
            .enumerate()
            .map(|(i, (image, labels))| match scene_targets(labels) {
                Some(t) => Ok(t),
                None => bail!("scene {i} ({image}) of {} has no object to probe", path.display()),
            })
            .collect()
    };
    let train_t = targets(&train, &r.train_scenes)?;
    let test_t = targets(&test, &r.test_scenes)?;
    let inner: burn::tensor::Device<B::InnerBackend> = device.clone();
    let loaded = load_htc::<B::InnerBackend>(&r.model, &inner)?.tuned(crate::backend::row_split());
    let names = |s: &[(String, CellLabels)]| -> Vec<String> { s.iter().map(|(n, _)| n.clone()).collect() };
    let (train_names, test_names) = (names(&train), names(&test));
    let ftrain = features(&loaded, &r.train_images, &as_str(&train_names), r.batch, &inner)?;
    let ftest = features(&loaded, &r.test_images, &as_str(&test_names), r.batch, &inner)?;
    let tasks = tasks(&train_t, &test_t);
    let heads: Vec<Head> = tasks.iter().flat_map(|t| t.heads.clone()).collect();
    let settings = ProbeSettings::new(r.seed);
    let fit = |a: &Option<Vec<Vec<f32>>>, b: &Option<Vec<Vec<f32>>>| -> Result<Option<Vec<f64>>> {
        match (a, b) {
            (Some(a), Some(b)) => Ok(Some(fit_probes::<B>(a, b, &heads, settings, device)?)),
            _ => Ok(None),
        }
    };
    let acc = [fit(&ftrain.z, &ftest.z)?, fit(&ftrain.v_d, &ftest.v_d)?, fit(&ftrain.v, &ftest.v)?];
    Ok(report(train.len(), test.len(), &tasks, &acc))
}

fn as_str(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The report from each representation's per-head accuracies (in the order of the tasks'
/// heads): `pair` averages its heads.
fn report(n_train: usize, n_test: usize, tasks: &[Task], acc: &[Option<Vec<f64>>; 3]) -> ProbeReport {
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let mut results = Vec::new();
    let mut at = 0;
    for t in tasks {
        let span = at..at + t.heads.len();
        at = span.end;
        let rep = |a: &Option<Vec<f64>>| a.as_ref().map(|a| mean(&a[span.clone()]));
        let majority: Vec<f64> = t.heads.iter().map(majority).collect();
        results.push(TaskResult {
            task: t.name,
            kind: t.kind,
            classes: t.heads[0].classes,
            majority: mean(&majority),
            accuracy: PerRep { z: rep(&acc[0]), v_d: rep(&acc[1]), v: rep(&acc[2]) },
        });
    }
    let kind_mean = |kind: &str| {
        let of = |f: fn(&PerRep) -> Option<f64>| {
            let xs: Option<Vec<f64>> =
                results.iter().filter(|r| r.kind == kind).map(|r| f(&r.accuracy)).collect();
            xs.map(|xs| mean(&xs))
        };
        PerRep { z: of(|p| p.z), v_d: of(|p| p.v_d), v: of(|p| p.v) }
    };
    let mean = Means { s: kind_mean("S"), d: kind_mean("D") };
    ProbeReport { train_scenes: n_train, test_scenes: n_test, tasks: results, mean }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend as Cpu;
    use burn::backend::Autodiff;

    type Ad = Autodiff<Cpu>;

    /// Gaussian-ish points around one centre per class (`spread` wide), in `d` dimensions.
    fn blobs(
        n: usize, classes: usize, d: usize, spread: f32, rng: &mut StdRng,
    ) -> (Vec<Vec<f32>>, Vec<usize>) {
        let centres: Vec<Vec<f32>> =
            (0..classes).map(|_| (0..d).map(|_| rng.random_range(-3.0..3.0)).collect()).collect();
        (0..n)
            .map(|i| {
                let y = i % classes;
                (centres[y].iter().map(|c| c + rng.random_range(-spread..spread)).collect(), y)
            })
            .unzip()
    }

    #[test]
    fn separable_labels_are_learned_and_random_ones_stay_near_the_majority() {
        let mut rng = StdRng::seed_from_u64(7);
        let (x, y) = blobs(400, 4, 16, 0.5, &mut rng);
        let (train_x, test_x) = (x[..300].to_vec(), x[300..].to_vec());
        let separable = Head { classes: 4, train: y[..300].to_vec(), test: y[300..].to_vec() };
        // Labels with no relation to the features: 70 % one class.
        let noise: Vec<usize> =
            (0..400).map(|_| if rng.random_range(0.0..1.0) < 0.7 { 0 } else { 1 }).collect();
        let random = Head { classes: 2, train: noise[..300].to_vec(), test: noise[300..].to_vec() };
        let acc = fit_probes::<Ad>(
            &train_x,
            &test_x,
            &[separable, random.clone()],
            ProbeSettings::new(0),
            &Default::default(),
        )
        .unwrap();
        assert!(acc[0] >= 95.0, "separable classes: {}% on test", acc[0]);
        let base = majority(&random);
        assert!(base > 55.0, "the noise labels' majority class: {base}%");
        assert!((acc[1] - base).abs() <= 12.0, "random labels: {}% against a majority of {base}%", acc[1]);
    }

    #[test]
    fn heads_trained_together_equal_heads_trained_alone() {
        let mut rng = StdRng::seed_from_u64(3);
        let (x, y) = blobs(120, 3, 8, 2.0, &mut rng);
        let a = Head { classes: 3, train: y[..90].to_vec(), test: y[90..].to_vec() };
        let flip: Vec<usize> = y.iter().map(|&v| (v == 1) as usize).collect();
        let b = Head { classes: 2, train: flip[..90].to_vec(), test: flip[90..].to_vec() };
        let s = ProbeSettings { epochs: 60, ..ProbeSettings::new(0) };
        let dev = Default::default();
        let both = fit_probes::<Ad>(&x[..90], &x[90..], &[a.clone(), b.clone()], s, &dev).unwrap();
        // Beside head a, head b drew its initial weights from seed + 1.
        let alone_a = fit_probes::<Ad>(&x[..90], &x[90..], &[a], s, &dev).unwrap();
        let alone_b =
            fit_probes::<Ad>(&x[..90], &x[90..], &[b], ProbeSettings { seed: 1, ..s }, &dev).unwrap();
        // Up to the order of float additions: at most one of the 30 test scenes may differ.
        assert!((both[0] - alone_a[0]).abs() <= 100.0 / 30.0 + 1e-9, "{} vs {}", both[0], alone_a[0]);
        assert!((both[1] - alone_b[0]).abs() <= 100.0 / 30.0 + 1e-9, "{} vs {}", both[1], alone_b[0]);
    }

    #[test]
    fn targets_follow_the_first_occupied_cell() {
        // Hand-written scenes.json: a large striped blue square in cell 7, a small red circle in
        // cell 4 and a small solid red star in cell 2.
        let json = serde_json::json!([
            {"image": "a.png", "objects": [
                {"cell": 7, "shape": "square", "color": "blue", "texture": "striped", "extent": 80},
                {"cell": 4, "shape": "circle", "color": "red", "texture": "outline", "extent": 40},
                {"cell": 2, "shape": "star", "color": "red", "texture": "solid", "extent": 40},
            ]},
            {"image": "b.png", "objects": []},
        ]);
        let dir = std::env::temp_dir().join(format!("htc-probe-targets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.scenes.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let scenes = crate::data::read_scenes(&path).unwrap();
        let t = scene_targets(&scenes[0].1).unwrap();
        assert_eq!((t.shape, t.color, t.texture, t.size, t.position), (3, 0, 0, 0, 2), "the star in cell 2");
        assert_eq!(t.count, 3);
        let on: Vec<usize> = (0..PAIRS).filter(|&p| t.pairs[p]).collect();
        // red = 0, blue = 2; circle = 0, square = 1, star = 3; colour-major.
        assert_eq!(on, vec![0, 3, 2 * 4 + 1]);
        assert_eq!(scene_targets(&scenes[1].1), None, "an empty scene has no first object");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_majority_baseline_uses_the_train_split_and_ties_go_low() {
        let h = Head { classes: 3, train: vec![2, 2, 1, 1, 0], test: vec![1, 1, 1, 2] };
        assert_eq!(majority(&h), 75.0, "train tie 1/2 → class 1");
        let tasks = tasks(
            &[scene_targets(&one(1, 4)).unwrap(), scene_targets(&two()).unwrap()],
            &[scene_targets(&one(1, 4)).unwrap()],
        );
        let names: Vec<&str> = tasks.iter().map(|t| t.name).collect();
        assert_eq!(names, ["shape", "color", "count", "pair", "texture", "size", "position"]);
        let count = &tasks[2].heads[0];
        assert_eq!((count.classes, count.train.clone(), count.test.clone()), (2, vec![0, 1], vec![0]));
        assert_eq!(tasks[3].heads.len(), 24);
    }

    /// One small solid red circle in `cell`, `shape`-th shape (1-based).
    fn one(shape: usize, cell: usize) -> CellLabels {
        let mut l = [[0usize; 4]; 9];
        l[cell] = [shape, 1, 1, 1];
        l
    }

    fn two() -> CellLabels {
        let mut l = one(2, 0);
        l[8] = [3, 2, 2, 2];
        l
    }
}
