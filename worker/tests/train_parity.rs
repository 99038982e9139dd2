//! Training matches PyTorch step for step on a tiny HTC model (fixtures from
//! `scripts/make_train_fixtures.py`): the loss of a padded, multi-turn batch (rtol 1e-5), the
//! gradient of every trainable tensor (1e-4 of each tensor's scale; CLIP and MGVQ get none),
//! and the parameters after 3 AdamW steps with two decay groups, global-norm clipping and
//! warmup-cosine (1e-5 of each tensor's scale, see [`split_by_gradient`] for the few elements
//! with near-zero gradients), both as one batch of 3 and as 3 accumulated micro-batches of 1;
//! the learning rate, gradient norm and loss of every step (1e-5). The schedule equals
//! transformers' at every step.

mod common;

use std::collections::HashMap;

use burn::backend::Autodiff;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use common::{assert_close, Expected};
use htc_shared::params::ParamNames;
use htc_worker::backend::{self, Backend};
use htc_worker::formats::checkpoint::{AnyModel, Snapshot};
use htc_worker::models::htc::{Htc, ImageTensors};
use htc_worker::train::objective::{nll_sum, Batch, Trainable};
use htc_worker::train::optim::{AdamW, Moments, WarmupCosine};
use htc_worker::train::step::{train_step, Optimizer};

type Train = Autodiff<Backend>;

fn expected() -> Expected {
    Expected::open("htc-train-tiny/expected.safetensors")
}

fn model() -> (Htc<Train>, ParamNames) {
    let snap =
        Snapshot::<Train>::open(&common::fixtures().join("htc-train-tiny"), &backend::device()).unwrap();
    let AnyModel::Htc { model, .. } = snap.model else { panic!("htc-train-tiny loads as an HTC model") };
    (Trainable::PAPER.apply(model), snap.names)
}

/// The fixture batch, rows `range` of it.
fn batch(e: &Expected, range: std::ops::Range<usize>) -> Batch<Train> {
    let dev = backend::device();
    let t = |name: &str| {
        let (shape, data) = e.f32(name);
        let [b, c, h, w] = shape[..] else { panic!("{name} is 4-D") };
        let x = Tensor::<Train, 4>::from_data(TensorData::new(data, [b, c, h, w]), &dev);
        x.slice([range.clone(), 0..c, 0..h, 0..w])
    };
    let lengths = e.i64("batch.lengths");
    let (ids, labels) = (e.i64("batch.ids"), e.i64("batch.labels"));
    let width = ids.len() / lengths.len();
    let rows = |v: &[i64]| -> Vec<Vec<i64>> {
        range.clone().map(|r| v[r * width..r * width + lengths[r] as usize].to_vec()).collect()
    };
    Batch {
        images: ImageTensors { clip: t("batch.clip"), mgvq: Some(t("batch.mgvq")), codes: None },
        ids: rows(&ids).into_iter().map(|r| r.into_iter().map(|i| i as u32).collect()).collect(),
        labels: rows(&labels),
    }
}

/// Every float parameter's value (or gradient), by checkpoint key, in PyTorch's layout.
struct Collect<'a> {
    names: &'a ParamNames,
    grads: Option<&'a GradientsParams>,
    out: HashMap<String, Vec<f32>>,
}

impl ModuleVisitor<Train> for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Train, D>>) {
        let name = &self.names[&p.id];
        let t: Option<Tensor<Backend, D>> = match self.grads {
            Some(g) => g.get::<Backend, D>(p.id),
            None => Some(p.val().inner()),
        };
        if let Some(t) = t {
            let t = if name.transposed { t.transpose() } else { t };
            self.out.insert(name.key.clone(), t.into_data().to_vec::<f32>().unwrap());
        }
    }
}

fn collect(m: &Htc<Train>, names: &ParamNames, grads: Option<&GradientsParams>) -> HashMap<String, Vec<f32>> {
    let mut c = Collect { names, grads, out: HashMap::new() };
    m.visit(&mut c);
    c.out
}

fn optimizer() -> Optimizer {
    Optimizer {
        adamw: AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 },
        schedule: WarmupCosine { base: 1e-2, warmup: 2, total: 4 },
        max_grad_norm: Some(0.5),
    }
}

#[test]
fn loss_and_gradients_match_pytorch() {
    let e = expected();
    let (model, names) = model();
    let b = batch(&e, 0..3);
    let count = e.i64("count")[0] as usize;
    assert_eq!(b.targets(), count, "answer tokens");
    let loss = nll_sum(&model, &b).unwrap().div_scalar(count as f64);
    let got = loss.clone().into_scalar();
    let want = e.f32("loss").1[0];
    assert!(((got - want) / want).abs() <= 1e-5, "loss {got} vs PyTorch {want}");
    eprintln!("loss {got} vs PyTorch {want}");
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let got = collect(&model, &names, Some(&grads));
    let want_keys = e.names_under("grad.");
    let mut got_keys: Vec<&String> = got.keys().collect();
    got_keys.sort();
    assert_eq!(got_keys, want_keys.iter().collect::<Vec<_>>(), "exactly the trainable tensors get gradients");
    assert!(!got.keys().any(|k| k.starts_with("vision_tower.") || k.starts_with("mgvq.")), "frozen");
    for k in &want_keys {
        assert_close(&format!("grad {k}"), &got[k], &e.f32(&format!("grad.{k}")).1, 1e-4);
    }
}

fn three_steps(micro: usize) {
    let e = expected();
    let (mut model, names) = model();
    let batches: Vec<Batch<Train>> = (0..3).step_by(micro).map(|s| batch(&e, s..s + micro)).collect();
    let mut moments = Moments::default();
    let opt = optimizer();
    let (lrs, norms, losses) = (e.f64("steps.lr"), e.f64("steps.grad_norm"), e.f64("steps.loss"));
    for s in 0..3 {
        let (m, r) = train_step(model, &batches, &names, &mut moments, &opt).unwrap();
        model = m;
        assert_eq!(r.lr, lrs[s], "lr at step {s}");
        assert!(
            (r.grad_norm - norms[s]).abs() <= 1e-5 * norms[s],
            "grad norm {} vs {}",
            r.grad_norm,
            norms[s]
        );
        assert!((r.loss - losses[s]).abs() <= 1e-5 * losses[s], "loss {} vs {}", r.loss, losses[s]);
        eprintln!("micro {micro} step {s}: loss {:.6} norm {:.6} lr {}", r.loss, r.grad_norm, r.lr);
    }
    let got = collect(&model, &names, None);
    let max_move: f64 = lrs.iter().sum::<f64>() * 1.01;
    let mut loose = 0;
    for k in e.names_under("after.") {
        let want = e.f32(&format!("after.{k}")).1;
        let g0 = e.f32(&format!("grad.{k}")).1;
        let (strict_got, strict_want, rest) = split_by_gradient(&got[&k], &want, &g0);
        assert_close(&format!("micro {micro}: {k} after 3 steps"), &strict_got, &strict_want, 1e-5);
        for (a, b) in &rest {
            assert!((a - b).abs() as f64 <= max_move, "{k}: {a} vs {b} moved more than AdamW can");
        }
        loose += rest.len();
    }
    eprintln!(
        "micro {micro}: {loose} elements with a gradient below the noise floor checked to AdamW's step bound"
    );
}

/// Adam divides each gradient by its own running RMS, so an element whose gradient is tiny
/// but not zero next to its tensor's largest (below 1e-3 of it) turns float rounding in that gradient into
/// a visible change of its update. Those elements are held to AdamW's bound (no element moves
/// more than the sum of the learning rates); all others to 1e-5 of the tensor's scale.
fn split_by_gradient(got: &[f32], want: &[f32], g0: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<(f32, f32)>) {
    let gmax = g0.iter().fold(0f32, |m, g| m.max(g.abs()));
    let (mut a, mut b, mut rest) = (Vec::new(), Vec::new(), Vec::new());
    for ((&x, &y), &g) in got.iter().zip(want).zip(g0) {
        if g == 0.0 || g.abs() >= 1e-3 * gmax {
            a.push(x);
            b.push(y);
        } else {
            rest.push((x, y));
        }
    }
    (a, b, rest)
}

#[test]
fn three_adamw_steps_match_pytorch() {
    three_steps(3);
}

#[test]
fn accumulated_micro_batches_match_pytorch_one_batch() {
    three_steps(1);
}

#[test]
fn schedule_equals_transformers() {
    let want = expected().f64("schedule.warmup3_total20");
    let s = WarmupCosine { base: 1.0, warmup: 3, total: 20 };
    for (k, w) in want.iter().enumerate() {
        assert!((s.factor(k) - w).abs() <= 1e-12, "step {k}: {} vs {w}", s.factor(k));
    }
    assert_eq!(s.factor(0), 0.0, "lr(0) = 0 with warmup");
}

/// The fixture model with the fixture's LoRA adapters (rank 4, alpha 8, on q and v).
fn lora_model<B: burn::tensor::backend::Backend>(e: &Expected, m: Htc<B>, names: &mut ParamNames) -> Htc<B> {
    let src: HashMap<String, htc_shared::loader::HostTensor> = e
        .names_under("lora.init.")
        .into_iter()
        .map(|k| {
            let (shape, data) = e.f32(&format!("lora.init.{k}"));
            (k, htc_shared::loader::HostTensor { shape, data })
        })
        .collect();
    let cfg = htc_shared::config::LoraConfig { rank: 4, alpha: 8, targets: vec!["q".into(), "v".into()] };
    let vb = htc_worker::formats::Loader::<B>::new(&src, &m.llava.llm.device());
    let mut m = m;
    m.llava.llm = m.llava.llm.with_lora(&cfg, &vb, names).unwrap();
    names.extend(vb.names());
    m
}

#[test]
fn lora_loss_and_adapter_gradients_match_pytorch() {
    let e = expected();
    let snap =
        Snapshot::<Train>::open(&common::fixtures().join("htc-train-tiny"), &backend::device()).unwrap();
    let AnyModel::Htc { model, .. } = snap.model else { panic!("an HTC model") };
    let mut names = snap.names;
    let model = Trainable::PAPER.apply(lora_model(&e, model, &mut names));
    let b = batch(&e, 0..3);
    let loss = nll_sum(&model, &b).unwrap().div_scalar(b.targets() as f64);
    let (got, want) = (loss.clone().into_scalar(), e.f32("lora.loss").1[0]);
    assert!(((got - want) / want).abs() <= 1e-5, "LoRA loss {got} vs PyTorch {want}");
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let got = collect(&model, &names, Some(&grads));
    let want_keys = e.names_under("lora.grad.");
    let mut got_keys: Vec<&String> = got.keys().collect();
    got_keys.sort();
    assert_eq!(
        got_keys,
        want_keys.iter().collect::<Vec<_>>(),
        "the adapters learn, the LLM's own weights do not"
    );
    for k in &want_keys {
        assert_close(&format!("LoRA grad {k}"), &got[k], &e.f32(&format!("lora.grad.{k}")).1, 1e-4);
    }
}

#[test]
fn merged_lora_gives_the_unmerged_outputs() {
    let e = expected();
    let snap =
        Snapshot::<Backend>::open(&common::fixtures().join("htc-train-tiny"), &backend::device()).unwrap();
    let AnyModel::Htc { model, .. } = snap.model else { panic!("an HTC model") };
    let mut names = snap.names;
    let base_logits = common::to_vec(model.full_text_logits(&common_image(&e), &[5, 9, 17, 3]).unwrap());
    let m = lora_model(&e, model, &mut names);
    let img = common_image(&e);
    let unmerged = common::to_vec(m.full_text_logits(&img, &[5, 9, 17, 3]).unwrap());
    let mut merged = m;
    merged.llava.llm = merged.llava.llm.merged();
    assert!(!merged.llava.llm.has_lora());
    let merged = common::to_vec(merged.full_text_logits(&img, &[5, 9, 17, 3]).unwrap());
    assert_close("merged vs unmerged LoRA logits", &merged, &unmerged, 1e-5);
    let moved = base_logits.iter().zip(&unmerged).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(moved > 1e-2, "the adapters change the outputs ({moved})");
}

/// The first fixture image as model input on the plain backend.
fn common_image(e: &Expected) -> ImageTensors<Backend> {
    let dev = backend::device();
    let t = |name: &str| {
        let (shape, data) = e.f32(name);
        let [_, c, h, w] = shape[..] else { panic!("{name} is 4-D") };
        Tensor::<Backend, 4>::from_data(TensorData::new(data[..c * h * w].to_vec(), [1, c, h, w]), &dev)
    };
    ImageTensors { clip: t("batch.clip"), mgvq: Some(t("batch.mgvq")), codes: None }
}
