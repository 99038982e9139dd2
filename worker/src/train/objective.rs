//! What training minimises: next-token cross-entropy on answer tokens only, over a right-padded
//! batch under the model's own attention mask (plus, when asked, the scene probe's loss on the
//! `<voco>` token), and which parts of the model learn.

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::log_softmax;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use super::vision::{head_loss, CellHeads, CellLabels, HEADS};
use crate::models::htc::{Htc, ImageTensors};
use htc_shared::loader::Loader;

/// The label of a token that is not a target (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// A batch of examples sharing one image layout: images `[b, …]` and, per row, the text ids
/// after the image prefix with their labels (`IGNORE`, or the id itself for answer tokens).
pub struct Batch<B: Backend> {
    pub images: ImageTensors<B>,
    pub ids: Vec<Vec<u32>>,
    pub labels: Vec<Vec<i64>>,
    /// Per row, what each grid cell of its ShapesVQA scene holds (only for the scene probe).
    pub scene: Option<Vec<CellLabels>>,
}

impl<B: Backend> Batch<B> {
    /// The number of answer tokens (targets).
    pub fn targets(&self) -> usize {
        self.labels.iter().flatten().filter(|&&l| l != IGNORE).count()
    }

    /// The number of real (unpadded) text tokens.
    pub fn tokens(&self) -> usize {
        self.ids.iter().map(Vec::len).sum()
    }
}

/// The summed negative log-likelihood of the batch's answer tokens (a `[1]` tensor).
///
/// Rows are right-padded to the longest text; every row has the same image prefix, so one
/// `[len, len]` mask serves all of them and real tokens never see padding (it comes after
/// them). Only the hidden states that predict an answer token go through the LM head.
pub fn nll_sum<B: Backend>(model: &Htc<B>, batch: &Batch<B>) -> Result<Tensor<B, 1>> {
    Ok(losses(model, None, false, batch)?.nll_sum)
}

/// What one forward pass of a batch gives the objective.
pub struct Losses<B: Backend> {
    /// The summed negative log-likelihood of the answer tokens (`[1]`).
    pub nll_sum: Tensor<B, 1>,
    /// With a probe: the sum over rows of the probe's loss (the sum over its four heads of
    /// the mean cross-entropy over the nine cells), and how many cell properties it named
    /// right (of `rows × 9 × 4`).
    pub scene: Option<(Tensor<B, 1>, usize)>,
    /// When asked: the sum over rows of the KL term [`kl_sum`] on the `<voco>` tokens (`[1]`).
    pub kl: Option<Tensor<B, 1>>,
}

/// The KL term of the paper's Eq. 10, `KL(q(z | V_hy) ‖ p(z))`, under this interpretation (the
/// paper leaves both distributions unspecified): `z` is a `<voco>` token's state after the
/// LLM's last layer (the residual stream, before the final norm), the posterior is a Gaussian
/// of unit variance around it and the prior `N(0, I)`, so the KL is `½‖z‖²`. It is taken per
/// dimension (`½ mean z²` over the `<voco>` tokens and the model width), so that a weight β
/// means the same at any width. `z: [b, k, d]` → the sum over the `b` rows (`[1]`).
pub fn kl_sum<B: Backend>(z: Tensor<B, 3>) -> Tensor<B, 1> {
    let [b, k, d] = z.dims();
    z.powi_scalar(2).reshape([b, k * d]).mean_dim(1).sum().mul_scalar(0.5)
}

/// [`nll_sum`], and the scene probe's loss when `probe` is given with the layer whose input it
/// reads (the batch must then carry scene labels).
pub fn losses<B: Backend>(
    model: &Htc<B>, probe: Option<(&SceneProbe<B>, usize)>, kl: bool, batch: &Batch<B>,
) -> Result<Losses<B>> {
    let llm = &model.llava.llm;
    let b = batch.ids.len();
    if b == 0 || batch.labels.len() != b {
        bail!("a batch needs one label row per text row ({} texts, {} label rows)", b, batch.labels.len());
    }
    let t = batch.ids.iter().map(Vec::len).max().unwrap_or(0);
    if t == 0 {
        bail!("every text in the batch is empty");
    }
    let device = llm.device();
    let mut padded = Vec::with_capacity(b * t);
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    let layout = model.layout(t);
    let start = layout.text_start();
    let len = layout.len();
    for (r, (ids, labels)) in batch.ids.iter().zip(&batch.labels).enumerate() {
        if ids.len() != labels.len() {
            bail!("row {r}: {} ids but {} labels", ids.len(), labels.len());
        }
        llm.check_ids(ids)?;
        padded.extend(ids.iter().map(|&i| i as i64));
        padded.extend(std::iter::repeat_n(0, t - ids.len()));
        for (j, &l) in labels.iter().enumerate() {
            if l != IGNORE {
                if j == 0 {
                    bail!(
                        "row {r}: the first text token cannot be a target (nothing in the text precedes it)"
                    );
                }
                // The hidden state just before a token predicts it.
                rows.push((r * len + start + j - 1) as i64);
                targets.push(l);
            }
        }
    }
    if targets.is_empty() && probe.is_none() {
        bail!("the batch has no answer tokens");
    }
    let n = targets.len();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(padded, [b, t]), &device);
    let out = model.full_forward(&batch.images, llm.embed_batch(ids))?;
    let scene = match probe {
        Some((p, layer)) => {
            let labels = batch.scene.as_deref().context("the scene probe needs the batch's scene labels")?;
            if labels.len() != b {
                bail!("{} scene label rows for a batch of {b}", labels.len());
            }
            if layout.n_voco == 0 {
                bail!("the scene probe reads the <voco> token, which this model's mode has not got");
            }
            let n = out.layer_inputs.len();
            let state = out
                .layer_inputs
                .get(layer)
                .with_context(|| {
                    format!("--scene-layer {layer}: the LLM has {n} layers (0 to {})", n.max(1) - 1)
                })?
                .clone();
            let d = state.dims()[2];
            let v = layout.voco_start();
            Some(p.loss(state.slice([0..b, v..v + 1, 0..d]).reshape([b, d]), labels))
        }
        None => None,
    };
    let kl = match kl {
        false => None,
        true => {
            if layout.n_voco == 0 {
                bail!("the KL term is on the <voco> token, which this model's mode has not got");
            }
            let z = out.residual.clone().context("the KL term needs the residual stream as a tensor")?;
            let (v, d) = (layout.voco_start(), z.dims()[2]);
            Some(kl_sum(z.slice([0..b, v..v + layout.n_voco, 0..d])))
        }
    };
    if n == 0 {
        // The probe alone learns (`--probe-only`): no answer token to score.
        return Ok(Losses { nll_sum: Tensor::zeros([1], &device), scene, kl });
    }
    let hidden = out.hidden;
    let d = hidden.dims()[2];
    let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), &device);
    let hidden = hidden.reshape([b * len, d]).select(0, rows);
    let logits = llm.logits(hidden.unsqueeze::<3>()).squeeze_dim::<2>(0);
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [n, 1]), &device);
    Ok(Losses { nll_sum: log_softmax(logits, 1).gather(1, targets).sum().neg(), scene, kl })
}

/// A training-only probe (`htc train --scene-loss`): linear heads on the `<voco>` token's
/// state as one LLM layer reads it (that layer's normalised input, `--scene-layer`; an early
/// layer leaves the text the layers after it to decode what `<voco>` carries). Its loss asks the one
/// token to carry the whole scene, with a signal on every part of every image rather than on
/// one answer word, in two layouts: per grid cell (what each of the nine cells holds: shape,
/// colour, size, texture, or empty) and per (colour, shape) pair (whether the scene has that
/// object and, if so, its size, texture, row and column), the layout the questions ask in
/// ("the red star"). It is dropped when a checkpoint is written.
#[derive(Module, Debug)]
pub struct SceneProbe<B: Backend> {
    cells: CellHeads<B>,
    pairs: Vec<Linear<B>>,
}

/// The per-pair heads and their classes (0: no such object in the scene).
const PAIR_HEADS: [(&str, usize); 4] = [("size", 3), ("texture", 4), ("row", 4), ("column", 4)];
/// (colour, shape) pairs: 6 colours × 4 shapes.
const PAIRS: usize = 24;

/// Per (colour, shape) pair of a scene, its class under each of [`PAIR_HEADS`].
fn pair_labels(cells: &CellLabels) -> [[usize; 4]; PAIRS] {
    let mut out = [[0usize; 4]; PAIRS];
    for (cell, &[shape, color, size, texture]) in cells.iter().enumerate() {
        if shape > 0 && color > 0 {
            out[(color - 1) * 4 + (shape - 1)] = [size, texture, cell / 3 + 1, cell % 3 + 1];
        }
    }
    out
}

impl<B: Backend> SceneProbe<B> {
    /// Classification targets per image (for the share named right).
    pub const TARGETS_PER_IMAGE: usize = 9 * HEADS.len() + PAIRS * PAIR_HEADS.len();

    /// Fresh heads for an LLM of width `d`, their parameters named under `vb`.
    pub fn new(vb: &Loader<B>, d: usize) -> Result<Self> {
        let pairs = PAIR_HEADS
            .iter()
            .map(|(name, n)| Ok(vb.linear(&format!("pair_{name}"), d, PAIRS * n, true)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { cells: CellHeads::new(vb, d, 9)?, pairs })
    }

    /// The summed (over rows) loss of `voco: [b, d]` against `labels` (the sum over all heads
    /// of each one's mean cross-entropy), and the number of targets named right.
    fn loss(&self, voco: Tensor<B, 2>, labels: &[CellLabels]) -> (Tensor<B, 1>, usize) {
        let b = labels.len();
        let pairs: Vec<[[usize; 4]; PAIRS]> = labels.iter().map(pair_labels).collect();
        let mut total: Option<Tensor<B, 1>> = None;
        let mut right = 0;
        let mut add = |head: &Linear<B>, rows: usize, n: usize, t: Vec<i64>| {
            let (nll, k) = head_loss(head.forward(voco.clone()).reshape([b * rows, n]), &t);
            right += k;
            total = Some(match total.take() {
                Some(x) => x + nll,
                None => nll,
            });
        };
        for (h, (head, (_, n))) in self.cells.heads().iter().zip(HEADS).enumerate() {
            add(head, 9, n, labels.iter().flat_map(|cells| cells.iter().map(move |c| c[h] as i64)).collect());
        }
        for (h, (head, (_, n))) in self.pairs.iter().zip(PAIR_HEADS).enumerate() {
            add(head, PAIRS, n, pairs.iter().flat_map(|p| p.iter().map(move |c| c[h] as i64)).collect());
        }
        (total.expect("eight heads").mul_scalar(b as f64), right)
    }
}

/// The parts of an HTC model that can learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trainable {
    pub voco: bool,
    pub projector: bool,
    pub discrete: bool,
    pub llm: bool,
    pub vision: bool,
}

impl Trainable {
    /// The paper's set: `<voco>`, P_v, P_d and the LLM; CLIP frozen.
    pub const PAPER: Trainable =
        Trainable { voco: true, projector: true, discrete: true, llm: true, vision: false };

    /// Parses `voco,projector,discrete,llm,vision` (any subset, comma-separated).
    pub fn parse(s: &str) -> Result<Self> {
        let mut t = Trainable { voco: false, projector: false, discrete: false, llm: false, vision: false };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "voco" => t.voco = true,
                "projector" => t.projector = true,
                "discrete" => t.discrete = true,
                "llm" => t.llm = true,
                "vision" => t.vision = true,
                other => bail!("unknown part `{other}` in --train (voco, projector, discrete, llm, vision)"),
            }
        }
        if t == (Trainable { voco: false, projector: false, discrete: false, llm: false, vision: false }) {
            bail!("--train names nothing to train (voco, projector, discrete, llm, vision)");
        }
        Ok(t)
    }

    /// `model` with every part outside this set (and MGVQ, always) frozen: no gradients are
    /// kept for them. An LLM with LoRA adapters trains the adapters, its base weights frozen.
    pub fn apply<B: Backend>(&self, mut m: Htc<B>) -> Htc<B> {
        if !self.vision {
            m.llava.vision = m.llava.vision.no_grad();
        }
        if !self.projector {
            m.llava.projector = m.llava.projector.no_grad();
        }
        if !self.llm {
            m.llava.llm = m.llava.llm.no_grad();
        } else if m.llava.llm.has_lora() {
            // The LLM learns through its adapters only.
            m.llava.llm = m.llava.llm.freeze_base();
        }
        if !self.discrete {
            m.discrete = m.discrete.map(Module::no_grad);
        }
        if !self.voco {
            m.voco = m.voco.set_require_grad(false);
        }
        m.mgvq = m.mgvq.map(Module::no_grad);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{self, Backend};

    #[test]
    fn the_kl_term_is_half_the_mean_square_per_row_summed_over_rows() {
        // Two rows, k = 1, d = 2: ½·mean(1², 3²) = 2.5 and ½·mean(0², 2²) = 1.
        let z = Tensor::<Backend, 3>::from_data(
            TensorData::new(vec![1.0f32, 3.0, 0.0, 2.0], [2, 1, 2]),
            &backend::device(),
        );
        let got: f32 = burn::tensor::ElementConversion::elem(kl_sum(z).into_scalar());
        assert!((got - 3.5).abs() < 1e-6, "{got}");
    }
}
