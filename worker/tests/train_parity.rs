//! Training matches PyTorch step for step on a tiny HTC model (fixtures from
//! `fixtures/make_train_fixtures.py`): the loss of a padded, multi-turn batch (rtol 1e-5), the
//! gradient of every trainable tensor (1e-4 of the tensor's largest gradient; CLIP and MGVQ get
//! none), and the parameters after 3 AdamW steps with two decay groups, global-norm clipping
//! and warmup-cosine (1e-5 of each tensor's scale plus the allowance each element inherits
//! from its gradient's tolerance, see [`check_after_steps`]; ndarray gets looser bounds, see
//! [`GRAD_REL`]), both as one batch of 3 and as 3 accumulated micro-batches of 1, on one thread
//! and on three (the same parameters bit for bit);
//! the learning rate (exactly), gradient norm and loss of every step (rtol 1e-5 before the first
//! update, 5e-5 after it; ndarray: 1e-3, see [`STEP_RTOL`]). The schedule equals transformers'
//! at every step. Steps taken on several threads at once give the numbers of the same step taken
//! alone ([`concurrent_training_steps_lose_no_gradient`]).

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

/// The gradient bound, relative to each tensor's largest gradient (candle and flex: 2.7e-6
/// measured).
///
/// ndarray is looser for a known reason: autodiff's backward of a division multiplies by
/// `float_recip(rhs)`, and burn-ndarray computes `float_recip` with the CPU's *approximate*
/// reciprocal instruction (macerator: `vrcp14ps` on AVX-512, relative error below 2^-14 =
/// 6.1e-5; `vrcpps` on AVX2, below 1.5 x 2^-12 = 3.7e-4). Every division in the forward pass
/// (softmax, RMSNorm, the loss mean) passes that error on to the gradients, so ndarray's
/// precision depends on the machine: measured up to 1.1e-4 with AVX-512, and with AVX2 up to
/// 6.5e-4 (the same binary under valgrind, which hides AVX-512) and 4.8e-4 (a CI machine),
/// against 2.7e-6 on candle. The bound is 2e-3: the AVX2 instruction's error compounded over
/// the few divisions a gradient passes through.
#[cfg(feature = "ndarray")]
const GRAD_REL: f32 = 2e-3;
#[cfg(not(feature = "ndarray"))]
const GRAD_REL: f32 = 1e-4;
/// The relative bound on each step's gradient norm and loss before the first update, and after
/// it (when AdamW's amplified rounding of tiny gradients moves them by about 1e-5).
///
/// ndarray's bound follows from its gradient bound (see [`GRAD_REL`]) the way candle's does
/// (half of it): 1e-3 before and after. Measured here with AVX-512: 6.8e-6 and 9.0e-6.
///
/// (The bound leaves no room for gradients lost while other tests run backward passes at the
/// same time: a step taken beside others must give the numbers of the same step taken alone,
/// which [`concurrent_training_steps_lose_no_gradient`] checks.)
#[cfg(feature = "ndarray")]
const STEP_RTOL: (f64, f64) = (1e-3, 1e-3);
#[cfg(not(feature = "ndarray"))]
const STEP_RTOL: (f64, f64) = (1e-5, 5e-5);
/// The parameter bound after AdamW steps, relative to each tensor's scale, before the
/// allowance each element inherits from its gradient (see [`check_after_steps`]; on ndarray
/// that allowance grows with [`GRAD_REL`], and its worst element measured here used 4% of its
/// bound).
const PARAM_REL: f32 = 1e-5;

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
        scene: None,
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
        assert_rel(&format!("grad {k}"), &got[k], &e.f32(&format!("grad.{k}")).1, GRAD_REL);
    }
}

/// Three steps on micro-batches of `micro` rows, differentiated `threads` at a time; returns
/// the trained parameters.
fn three_steps(micro: usize, threads: usize) -> HashMap<String, Vec<f32>> {
    let e = expected();
    let (mut model, names) = model();
    let batches: Vec<Batch<Train>> = (0..3).step_by(micro).map(|s| batch(&e, s..s + micro)).collect();
    let mut moments = Moments::default();
    let opt = optimizer();
    let (lrs, norms, losses) = (e.f64("steps.lr"), e.f64("steps.grad_norm"), e.f64("steps.loss"));
    let start = collect(&model, &names, None);
    for s in 0..3 {
        let (m, r) = train_step(model, &batches, &names, &mut moments, &opt, threads).unwrap();
        model = m;
        assert_eq!(r.lr, lrs[s], "lr at step {s}");
        if lrs[..=s].iter().all(|&l| l == 0.0) {
            // A step at lr 0 moves nothing (decay and update are both scaled by lr).
            let now = collect(&model, &names, None);
            for (k, v) in &start {
                assert!(v == &now[k], "{k} changed in step {s} at lr 0");
            }
        }
        // Until the first real update (lr(0) = 0) the parameters are the fixture's own; after
        // it they carry AdamW's amplified rounding of small gradients (see
        // `check_after_steps`), which moves the next norm and loss by about 1e-5.
        let tol = if lrs[..s].iter().all(|&l| l == 0.0) { STEP_RTOL.0 } else { STEP_RTOL.1 };
        assert!(
            (r.grad_norm - norms[s]).abs() <= tol * norms[s],
            "step {s}: grad norm {} vs {} (rtol {tol}); loss {} vs {}",
            r.grad_norm,
            norms[s],
            r.loss,
            losses[s]
        );
        assert!(
            (r.loss - losses[s]).abs() <= tol * losses[s],
            "loss {} vs {} (rtol {tol})",
            r.loss,
            losses[s]
        );
        eprintln!("micro {micro} step {s}: loss {:.6} norm {:.6} lr {}", r.loss, r.grad_norm, r.lr);
    }
    let got = collect(&model, &names, None);
    let lr_sum: f64 = lrs.iter().sum();
    for k in e.names_under("after.") {
        let want = e.f32(&format!("after.{k}")).1;
        let g0 = e.f32(&format!("grad.{k}")).1;
        check_after_steps(&format!("micro {micro}: {k} after 3 steps"), &got[&k], &want, &g0, lr_sum as f32);
    }
    got
}

/// `max |got - want| <= rel * max |want|`: relative to the tensor's own largest value (a
/// gradient can be far below 1, so no floor at 1 as `assert_close` has).
fn assert_rel(what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err.is_finite() && err <= rel * scale,
        "{what}: max abs error {err:.3e} exceeds {rel:.0e} x {scale:.3e}"
    );
    eprintln!("{what}: max abs error {err:.3e} = {:.1e} of its largest value {scale:.3e}", err / scale);
}

/// Parameters after AdamW steps, element by element. Adam divides each gradient by its own
/// running RMS, so an element's update inherits the *relative* error of its gradient: an error
/// of `GRAD_REL × max|g|` (what the gradient check allows) in an element whose gradient is
/// `|g|` moves its update by up to `lr × GRAD_REL × max|g| / |g|` per step, and never by more
/// than AdamW's largest step (about 2 lr). Each element is held to `PARAM_REL × scale` plus
/// that allowance over the 3 steps; an element with a zero gradient gets no allowance.
fn check_after_steps(what: &str, got: &[f32], want: &[f32], g0: &[f32], lr_sum: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1f32, |m, x| m.max(x.abs()));
    let gmax = g0.iter().fold(0f32, |m, g| m.max(g.abs()));
    let (mut worst, mut worst_err, mut beyond) = (0f32, 0f32, 0usize);
    for ((&a, &b), &g) in got.iter().zip(want).zip(g0) {
        let allowance = if g == 0.0 { 0.0 } else { lr_sum * (3.0 * GRAD_REL * gmax / g.abs()).min(2.0) };
        let bound = PARAM_REL * scale + allowance;
        let err = (a - b).abs();
        assert!(
            err.is_finite() && err <= bound,
            "{what}: {a} vs {b} (gradient {g:.3e}, largest {gmax:.3e}): error {err:.3e} > bound {bound:.3e}"
        );
        beyond += usize::from(err > PARAM_REL * scale);
        if err / bound > worst {
            (worst, worst_err) = (err / bound, err);
        }
    }
    eprintln!(
        "{what}: worst error {worst_err:.3e} ({:.0}% of its bound); {beyond} of {} elements beyond {PARAM_REL:.0e} x scale",
        worst * 100.0,
        got.len()
    );
}

#[test]
fn three_adamw_steps_match_pytorch() {
    three_steps(3, 1);
}

#[test]
fn accumulated_micro_batches_match_pytorch_one_batch() {
    three_steps(1, 1);
}

/// The micro-batches differentiated on 3 threads at once give PyTorch's steps too, and the
/// very same parameters as one thread (the gradients add up in micro-batch order).
#[test]
fn micro_batches_on_threads_match_pytorch_and_one_thread() {
    let one = three_steps(1, 1);
    let three = three_steps(1, 3);
    assert_eq!(one.len(), three.len());
    for (k, v) in &one {
        assert!(v == &three[k], "{k}: 3 threads differ from 1");
    }
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
        assert_rel(&format!("LoRA grad {k}"), &got[k], &e.f32(&format!("lora.grad.{k}")).1, GRAD_REL);
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

#[test]
fn cached_mgvq_codes_give_the_loss_of_the_pixels() {
    // Training runs MGVQ once per image and feeds its codes afterwards (`[b*h*w][G]` for a
    // batch); that must be the same input as running the encoder on the pixels every step.
    let e = expected();
    let (model, _) = model();
    let b = batch(&e, 0..3);
    let from_pixels = nll_sum(&model, &b).unwrap().into_scalar();
    let codes = model.mgvq.as_ref().unwrap().encode(b.images.mgvq.clone().unwrap()).unwrap().codes;
    assert_eq!(codes.len(), 3 * 16, "3 images of 4x4 latent positions");
    let cached = Batch {
        images: ImageTensors { clip: b.images.clip.clone(), mgvq: None, codes: Some(codes) },
        ids: b.ids.clone(),
        labels: b.labels.clone(),
        scene: None,
    };
    let from_codes = nll_sum(&model, &cached).unwrap().into_scalar();
    assert_eq!(from_codes, from_pixels, "codes and pixels give the same loss");
    let mut short = cached;
    short.images.codes.as_mut().unwrap().pop();
    let err = nll_sum(&model, &short).expect_err("a wrong number of code rows is refused").to_string();
    assert!(err.contains("47 rows of MGVQ codes for 3 images of 16 latent positions each"), "{err}");
}

/// Training steps taken on several threads at once (as `cargo test` runs these tests, or as
/// `train_step` runs micro-batches) lose no gradient: each thread's steps give the grad norm
/// and loss of the same step taken alone. At lr 0 the parameters never move, so every step
/// must give the first step's numbers.
///
/// burn-autodiff 0.21 drops a step from a graph under construction when another thread's
/// backward pass cleans up (`cleanup_orphaned_entries` frees a node no tensor holds whose
/// parents are outside the graph, the instant an operation has consumed it and not yet
/// registered its output), so the parameters behind it get no gradient; `train_step` gives
/// every micro-batch fresh leaves to prevent it (see `train::step`). Without them, 3 threads
/// of 150 steps of 3 micro-batches each failed this test in 8 runs of 8 on candle (3 to 10
/// steps each); with them it passed 6 runs of 6.
#[test]
fn concurrent_training_steps_lose_no_gradient() {
    let e = expected();
    let opt = Optimizer { schedule: WarmupCosine { base: 0.0, warmup: 0, total: 1 }, ..optimizer() };
    let run = |steps: usize| -> Vec<(f64, f64)> {
        let (mut model, names) = model();
        let batches: Vec<Batch<Train>> = (0..3).map(|s| batch(&e, s..s + 1)).collect();
        let mut moments = Moments::default();
        (0..steps)
            .map(|_| {
                let (m, r) = train_step(model.clone(), &batches, &names, &mut moments, &opt, 1).unwrap();
                model = m;
                (r.grad_norm, r.loss)
            })
            .collect()
    };
    let (want_norm, want_loss) = run(1)[0];
    let lost: Vec<String> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..3).map(|_| s.spawn(|| run(150))).collect();
        threads.into_iter().flat_map(|t| t.join().unwrap()).collect::<Vec<_>>()
    })
    .into_iter()
    .enumerate()
    .filter(|(_, (n, l))| {
        (n - want_norm).abs() > 1e-6 * want_norm || (l - want_loss).abs() > 1e-6 * want_loss
    })
    .map(|(k, (n, l))| format!("step {k}: grad norm {n} (alone {want_norm}), loss {l} (alone {want_loss})"))
    .collect();
    assert!(
        lost.is_empty(),
        "{} of 450 concurrent steps differ from the step alone:\n{}",
        lost.len(),
        lost.join("\n")
    );
}
