//! `htc bench --suite train`: training throughput (samples/s, sequence tokens/s) and peak
//! memory of one AdamW step (forward, backward, global-norm clip, update) on a random HTC
//! model, for the shapes `bench/bench_train_torch.py` builds in PyTorch, so the two can be
//! run the same way on the same machine and compared (`bench/bench-train.sh`).

use std::time::Instant;

use anyhow::{bail, Result};
use burn::backend::Autodiff;
use burn::tensor::{Distribution, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

use htc_shared::config::{ClipVisionConfig, HtcConfig, LlamaConfig, MgvqConfig};

use super::{peak_rss_mib, Out};
use crate::backend::{self, Backend};
use crate::formats::Loader;
use crate::models::htc::{Htc, ImageTensors};
use crate::models::llava::{self, Llava};
use crate::train::objective::{Batch, Trainable, IGNORE};
use crate::train::optim::{AdamW, Moments, WarmupCosine};
use crate::train::step::{train_step, Optimizer};

type Train = Autodiff<Backend>;

/// A benchmark shape: CLIP (width, layers, image size, patch), LLM (vocab, width, layers,
/// heads, kv heads, MLP width), P_d hidden width, batch, text length.
pub struct Shape {
    pub name: &'static str,
    pub clip: (usize, usize, usize, usize),
    pub llm: (usize, usize, usize, usize, usize, usize),
    pub discrete_hidden: usize,
    pub batch: usize,
    pub text: usize,
}

pub const SHAPES: [Shape; 2] = [
    Shape {
        name: "tiny",
        clip: (32, 3, 16, 4),
        llm: (128, 64, 2, 4, 2, 96),
        discrete_hidden: 48,
        batch: 8,
        text: 24,
    },
    Shape {
        name: "mid",
        clip: (64, 2, 336, 14),
        llm: (4096, 512, 8, 8, 8, 1376),
        discrete_hidden: 512,
        batch: 4,
        text: 48,
    },
];

/// The tiny MGVQ of the fixtures (64 px, 4×4 latent, 8 groups of 16 codes).
fn mgvq() -> MgvqConfig {
    serde_json::from_value(serde_json::json!({
        "width_list": [16, 32, 32, 64, 64], "depth_list": [0, 1, 1, 1, 1],
        "block_type": ["ResBlock", "ResBlock", "ResBlock", "EViT_GLU", "EViT_GLU"],
        "latent_channels": 32, "groups": 8, "codebook_size": 128, "image_size": 64,
        "attention_dim": 32, "expand_ratio": 4, "norm_eps": 1e-5
    }))
    .expect("a valid MGVQ config")
}

/// Two warm-up steps and `steps` timed ones of the shape named `shape`, the batch split into
/// `threads` micro-batches differentiated at once; one report line.
pub fn run(out: Out, shape: &str, steps: usize, threads: usize) -> Result<()> {
    let Some(s) = SHAPES.iter().find(|s| s.name == shape) else {
        bail!("unknown --shape `{shape}` (tiny, mid)")
    };
    if !s.batch.is_multiple_of(threads) {
        bail!("--threads {threads} must divide the {} shape's batch of {}", s.name, s.batch);
    }
    let device = backend::device();
    let (cw, cl, size, patch) = s.clip;
    let (vocab, d, layers, heads, kv, inter) = s.llm;
    let vision = ClipVisionConfig {
        hidden_size: cw,
        intermediate_size: 2 * cw,
        num_hidden_layers: cl,
        num_attention_heads: 4,
        num_channels: 3,
        image_size: size,
        patch_size: patch,
        layer_norm_eps: 1e-5,
    };
    let text = LlamaConfig::from_json(&serde_json::json!({
        "vocab_size": vocab, "hidden_size": d, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 4096
    }))?;
    let lc = llava::Config {
        layout: llava::Layout::LlavaHf,
        text,
        vision,
        image_token_id: vocab as i64 - 1,
        select_layer: -2,
        projector_mlp: true,
    };
    let hc = HtcConfig::paper(mgvq(), s.discrete_hidden);
    let vb = Loader::<Train>::init(&device);
    let model = Htc::load(&vb, Llava::load(&vb, &lc)?, &hc)?;
    let names = vb.names();
    let mut model = Trainable::PAPER.apply(model);
    let seq = model.layout(s.text).len();
    let mut rng = StdRng::seed_from_u64(0);
    // The batch, as `threads` micro-batches of equal size.
    let rows = s.batch / threads;
    let batches: Vec<Batch<Train>> = (0..threads)
        .map(|_| {
            let ids: Vec<Vec<u32>> =
                (0..rows).map(|_| (0..s.text).map(|_| rng.random_range(3..vocab as u32)).collect()).collect();
            let labels: Vec<Vec<i64>> = ids
                .iter()
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .map(|(j, &t)| if j + 16 >= s.text { t as i64 } else { IGNORE })
                        .collect()
                })
                .collect();
            Batch {
                images: ImageTensors {
                    clip: Tensor::random([rows, 3, size, size], Distribution::Normal(0.0, 1.0), &device),
                    mgvq: Some(Tensor::random([rows, 3, 64, 64], Distribution::Uniform(-1.0, 1.0), &device)),
                    codes: None,
                },
                ids,
                labels,
                scene: None,
            }
        })
        .collect();
    let opt = Optimizer {
        adamw: AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 },
        schedule: WarmupCosine { base: 1e-4, warmup: 0, total: steps + 2 },
        max_grad_norm: Some(1.0),
    };
    let mut moments = Moments::default();
    for _ in 0..2 {
        model = train_step(model, &batches, &names, &mut moments, &opt, threads)?.0;
    }
    let after_warmup = peak_rss_mib();
    let t = Instant::now();
    let mut loss = 0.0;
    for _ in 0..steps {
        let (m, r) = train_step(model, &batches, &names, &mut moments, &opt, threads)?;
        model = m;
        loss = r.loss;
    }
    let dt = t.elapsed().as_secs_f64() / steps as f64;
    writeln!(
        out,
        "train {} [{}, {threads} thread(s)]: batch {} x {} tokens, {:.1} ms/step, {:.2} samples/s, {:.0} tokens/s, peak RSS {:.0} MiB (after warm-up {:.0}), loss {:.3}",
        s.name,
        backend::name(),
        s.batch,
        seq,
        dt * 1e3,
        s.batch as f64 / dt,
        (s.batch * seq) as f64 / dt,
        peak_rss_mib().unwrap_or(f64::NAN),
        after_warmup.unwrap_or(f64::NAN),
        loss
    )?;
    Ok(())
}
