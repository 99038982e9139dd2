//! Training the MGVQ image tokenizer as a VQ-VAE (`htc train-tokenizer`): the model's own
//! encoder and grouped quantiser plus the mirror decoder of `models::mgvq_decoder`.
//!
//! Per group, the latent and the codes are L2-normalised (as MGVQ quantises); the decoder sees
//! `z + sg(q - z)` (straight-through), and the loss is
//! `mse_w(x̂, x) + mse(q, sg(z)) + β · mse(z, sg(q))` (reconstruction, codebook, commitment),
//! where `mse_w` may weigh foreground pixels more ([`pixel_weights`]).
//! Codebook use is tracked over a window of steps: per-group perplexity and dead codes, and
//! codes unused for a whole window restart at latents of the current batch.
//!
//! Output directory: `config.json` (`{"model_type": "mgvq", "mgvq": …, "decoder": …}`),
//! `model.safetensors` (`encoder.*`, `quant_conv.*`, `quantize.embedding.weight`, `decoder.*`,
//! the official MGVQ key names plus the decoder), `metrics.jsonl`, `loss.png` and
//! `recon.png` (held-out images above their reconstructions).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use image::RgbImage;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;

use htc_shared::config::MgvqConfig;
use htc_shared::loader::Loader;
use htc_shared::mgvq::{self, Mgvq};

use super::checkpoint::{entries, host_params};
use super::optim::{self, AdamW, Moments, WarmupCosine};
use super::plot;
use crate::formats::write::write_safetensors;
use crate::formats::WeightSource;
use crate::models::mgvq_decoder::{self, Decoder};
use crate::runtime::image::read_image_file;

/// The tokenizer as a VQ-VAE.
#[derive(Module, Debug)]
pub struct VqVae<B: Backend> {
    pub encoder: Mgvq<B>,
    pub decoder: Decoder<B>,
}

impl<B: Backend> VqVae<B> {
    /// Loads (or initialises) the encoder under the official MGVQ keys and the decoder under
    /// `decoder.*`, with parameter ids from those keys.
    pub fn load(vb: &Loader<B>, c: &MgvqConfig, d: &mgvq_decoder::Config) -> Result<Self> {
        Ok(Self { encoder: Mgvq::load(vb, c)?, decoder: Decoder::load(&vb.pp("decoder"), d)? })
    }

    /// Reconstructs pixels `[b, 3, s, s]` from the nearest codes.
    pub fn reconstruct(&self, pixels: Tensor<B, 4>) -> Tensor<B, 4> {
        let q = self.encoder.quantize(self.encoder.latent(pixels)).q;
        self.decoder.forward(q)
    }
}

/// Settings of a tokenizer run.
#[derive(Debug, Clone)]
pub struct TokenizerRun {
    pub config: MgvqConfig,
    pub decoder: mgvq_decoder::Config,
    pub images: Vec<PathBuf>,
    /// Held out: reconstructed into the grid and scored, never trained on.
    pub val_images: Vec<PathBuf>,
    pub out: PathBuf,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub warmup: usize,
    /// Commitment weight β.
    pub beta: f64,
    /// Weight of foreground pixels in the reconstruction loss (1: plain MSE), see
    /// [`pixel_weights`].
    pub foreground_weight: f32,
    /// Window (steps) over which code use is counted; unused codes restart at its end.
    pub restart_every: usize,
    pub seed: u64,
    pub progress: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerSummary {
    pub steps: usize,
    /// Reconstruction MSE (pixels in [-1, 1]) on the held-out images, or the last training
    /// batch without them.
    pub recon_mse: f64,
    /// Mean per-group perplexity of the codes over the held-out images.
    pub perplexity: f64,
    /// Codes (of all groups) that no held-out image uses.
    pub unused_codes: usize,
    /// Codes restarted during training.
    pub restarted: usize,
    pub seconds: f64,
}

/// Image files (png, jpg, jpeg, webp) directly in `dir`, sorted by name.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list images in {}", dir.display()))? {
        let p = e?.path();
        let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if p.is_file() && matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg" | "webp")) {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// Decodes and preprocesses every image (MGVQ's pipeline, pixels in [-1, 1], CHW).
fn load_pixels(paths: &[PathBuf], size: usize, progress: bool) -> Result<Vec<Vec<f32>>> {
    let bar = if progress {
        indicatif::ProgressBar::new(paths.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_message("reading images");
    let out = paths
        .iter()
        .map(|p| {
            bar.inc(1);
            Ok(mgvq::preprocess(&read_image_file(p)?, size as u32))
        })
        .collect();
    bar.finish_and_clear();
    out
}

/// Per-pixel weights `[s·s]` of one image (CHW pixels in [-1, 1]): `w` where a pixel differs
/// from the image's background colour, 1 elsewhere. The background is the colour of the
/// corner pixels when all four agree (within 0.1 per channel); otherwise every weight is 1.
/// Small objects on a plain background are a few percent of the pixels, and plain MSE lets a
/// VQ-VAE settle on the background alone; the weight keeps them in the loss.
pub fn pixel_weights(px: &[f32], size: usize, w: f32) -> Vec<f32> {
    let plane = size * size;
    let at = |c: usize, i: usize| px[c * plane + i];
    let corners = [0, size - 1, plane - size, plane - 1];
    let bg: Vec<f32> = (0..3).map(|c| at(c, 0)).collect();
    let plain = corners.iter().all(|&i| (0..3).all(|c| (at(c, i) - bg[c]).abs() <= 0.1));
    (0..plane)
        .map(|i| if plain && (0..3).any(|c| (at(c, i) - bg[c]).abs() > 0.1) { w } else { 1.0 })
        .collect()
}

fn batch_tensor<B: Backend>(pixels: &[&Vec<f32>], size: usize, device: &B::Device) -> Tensor<B, 4> {
    let data: Vec<f32> = pixels.iter().flat_map(|p| p.iter().copied()).collect();
    Tensor::from_data(TensorData::new(data, [pixels.len(), 3, size, size]), device)
}

fn host(t: Tensor<impl Backend, 1, burn::tensor::Int>) -> Vec<usize> {
    t.into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .expect("i64 after convert")
        .into_iter()
        .map(|x| x as usize)
        .collect()
}

/// `exp(entropy)` of a histogram (the effective number of codes in use).
pub fn perplexity(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let h: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.ln()
        })
        .sum();
    h.exp()
}

/// Code histograms per group of `indices` (as [`Mgvq::quantize`] returns them).
fn count_codes(counts: &mut [Vec<u64>], indices: Vec<Tensor<impl Backend, 1, burn::tensor::Int>>) {
    for (g, idx) in indices.into_iter().enumerate() {
        for i in host(idx) {
            counts[g][i] += 1;
        }
    }
}

/// Trains the tokenizer and writes its directory.
pub fn train<B: AutodiffBackend>(r: &TokenizerRun, device: &B::Device) -> Result<TokenizerSummary> {
    r.config.validate()?;
    if r.images.is_empty() {
        bail!("no training images");
    }
    if r.batch == 0 || r.steps == 0 || r.restart_every == 0 {
        bail!("--batch, --steps and --restart-every must be at least 1");
    }
    if !(r.lr.is_finite() && r.lr > 0.0) {
        bail!("--lr must be a positive number, got {}", r.lr);
    }
    let c = &r.config;
    let size = c.image_size;
    std::fs::create_dir_all(&r.out).with_context(|| format!("cannot create {}", r.out.display()))?;
    let t0 = Instant::now();
    let train_px = load_pixels(&r.images, size, r.progress)?;
    let val_px = load_pixels(&r.val_images, size, false)?;
    let vb = Loader::<B>::init(device);
    let mut model = VqVae::load(&vb, c, &r.decoder)?;
    let names = vb.names();
    let mut moments = Moments::<B::InnerBackend>::default();
    let adamw = AdamW { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.0 };
    let schedule = WarmupCosine { base: r.lr, warmup: r.warmup, total: r.steps };
    let (groups, per, gd) = (c.groups, c.codes_per_group(), c.group_dim());
    let mut window = vec![vec![0u64; per]; groups];
    let mut rng = StdRng::seed_from_u64(r.seed);
    let metrics_path = r.out.join("metrics.jsonl");
    let mut metrics = std::fs::File::create(&metrics_path)
        .with_context(|| format!("cannot create {}", metrics_path.display()))?;
    let bar = super::progress(r.steps, r.progress);
    let mut history = Vec::new();
    let mut restarted = 0usize;
    let mut last_rec = f64::NAN;
    for step in 1..=r.steps {
        let picks: Vec<&Vec<f32>> =
            (0..r.batch).map(|_| &train_px[rng.random_range(0..train_px.len())]).collect();
        let x = batch_tensor::<B>(&picks, size, device);
        let weights: Vec<f32> =
            picks.iter().flat_map(|p| pixel_weights(p, size, r.foreground_weight)).collect();
        let weights = Tensor::<B, 4>::from_data(TensorData::new(weights, [r.batch, 1, size, size]), device);
        let latent = model.encoder.latent(x.clone());
        let qz = model.encoder.quantize(latent);
        let ste = qz.z.clone() + (qz.q.clone() - qz.z.clone()).detach();
        let recon = model.decoder.forward(ste);
        let sq = (recon - x).powi_scalar(2);
        let rec = sq.clone().mean();
        let weighted = (sq * weights.clone()).sum() / (weights.sum() * 3.0);
        let codebook = (qz.q.clone() - qz.z.clone().detach()).powi_scalar(2).mean();
        let commit = (qz.z.clone() - qz.q.detach()).powi_scalar(2).mean();
        let loss = weighted + codebook.clone() + commit.clone().mul_scalar(r.beta);
        let z_host: Vec<f32> = qz.z.inner().into_data().convert::<f32>().to_vec().expect("f32 after convert");
        count_codes(&mut window, qz.indices);
        let (rec_v, cb_v, commit_v) = (
            rec.into_scalar().elem::<f64>(),
            codebook.into_scalar().elem::<f64>(),
            commit.into_scalar().elem::<f64>(),
        );
        if !rec_v.is_finite() {
            bail!("the reconstruction loss is {rec_v} at step {step}: training diverged");
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let grad_norm = optim::global_norm(&model, &grads);
        let scale = optim::clip_factor(grad_norm, Some(1.0));
        let lr = schedule.lr(moments.steps);
        model = optim::step(model, grads, &names, &mut moments, adamw, lr, scale)?;
        let mut line = json!({
            "step": step, "recon_mse": rec_v, "codebook": cb_v, "commit": commit_v, "lr": lr,
            "grad_norm": grad_norm, "elapsed_s": t0.elapsed().as_secs_f64(),
        });
        if step % r.restart_every == 0 {
            let ppl: f64 = window.iter().map(|h| perplexity(h)).sum::<f64>() / groups as f64;
            let dead: Vec<Vec<usize>> =
                window.iter().map(|h| (0..per).filter(|&i| h[i] == 0).collect()).collect();
            let n_dead: usize = dead.iter().map(Vec::len).sum();
            line["perplexity"] = json!(ppl);
            line["dead_codes"] = json!(n_dead);
            if n_dead > 0 && step < r.steps {
                restarted += n_dead;
                let [b, ch, hh, ww] = [r.batch, c.latent_channels, c.latent_side(), c.latent_side()];
                let mut book = model.encoder.codebook_host()?;
                for (g, codes) in dead.iter().enumerate() {
                    for &code in codes {
                        let (bi, y, xx) =
                            (rng.random_range(0..b), rng.random_range(0..hh), rng.random_range(0..ww));
                        for d in 0..gd {
                            let z = z_host[((bi * ch + g * gd + d) * hh + y) * ww + xx];
                            book[(g * per + code) * gd + d] = z + 0.01 * (rng.random::<f32>() - 0.5);
                        }
                    }
                }
                model.encoder.set_codebook(book);
            }
            window.iter_mut().for_each(|h| h.iter_mut().for_each(|x| *x = 0));
        }
        writeln!(metrics, "{line}")?;
        history.push((step, rec_v, None));
        if step % 50 == 0 || step == r.steps {
            plot::draw_labelled(&history, &r.out.join("loss.png"), "reconstruction MSE")?;
        }
        bar.set_message(format!("recon {rec_v:.4} codebook {cb_v:.4}"));
        bar.inc(1);
        last_rec = rec_v;
    }
    bar.finish();
    let model = model.valid();
    let (recon_mse, ppl, unused) = if val_px.is_empty() {
        (last_rec, f64::NAN, 0)
    } else {
        let refs: Vec<&Vec<f32>> = val_px.iter().collect();
        let x = batch_tensor::<B::InnerBackend>(&refs, size, device);
        let q = model.encoder.quantize(model.encoder.latent(x.clone()));
        let recon = model.decoder.forward(q.q);
        let mse = (recon.clone() - x.clone()).powi_scalar(2).mean().into_scalar().elem::<f64>();
        let mut counts = vec![vec![0u64; per]; groups];
        count_codes(&mut counts, q.indices);
        let ppl = counts.iter().map(|h| perplexity(h)).sum::<f64>() / groups as f64;
        let unused = counts.iter().map(|h| h.iter().filter(|&&x| x == 0).count()).sum();
        write_grid(&x, &recon, &r.out.join("recon.png"))?;
        (mse, ppl, unused)
    };
    save(&r.out, &model, &names, c, &r.decoder)?;
    Ok(TokenizerSummary {
        steps: r.steps,
        recon_mse,
        perplexity: ppl,
        unused_codes: unused,
        restarted,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn save<B: Backend>(
    out: &Path, model: &VqVae<B>, names: &htc_shared::params::ParamNames, c: &MgvqConfig,
    d: &mgvq_decoder::Config,
) -> Result<()> {
    write_safetensors(&out.join("model.safetensors"), entries(host_params(model, names)?), false)?;
    let cfg = json!({"model_type": "mgvq", "mgvq": c, "decoder": d});
    std::fs::write(out.join("config.json"), serde_json::to_vec_pretty(&cfg)?)?;
    Ok(())
}

/// A trained tokenizer directory (or an HTC model directory, whose `mgvq.*` weights are the
/// tokenizer): the encoder, and the decoder when the directory has one (tokenizer
/// directories; HTC models carry no decoder).
pub fn load_tokenizer<B: Backend>(dir: &Path, device: &B::Device) -> Result<(Mgvq<B>, Option<Decoder<B>>)> {
    let p = dir.join("config.json");
    let raw = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let cfg: serde_json::Value =
        serde_json::from_slice(&raw).with_context(|| format!("{} is not valid JSON", p.display()))?;
    let tokenizer_dir = cfg.get("model_type").and_then(|v| v.as_str()) == Some("mgvq");
    let (mc, prefix) = if tokenizer_dir {
        (cfg.get("mgvq"), "")
    } else {
        (cfg.get("htc").and_then(|h| h.get("mgvq")).filter(|v| !v.is_null()), "mgvq")
    };
    let mc = MgvqConfig::from_json(
        mc.with_context(|| format!("{} has no MGVQ tokenizer (no `mgvq` config)", dir.display()))?,
    )
    .with_context(|| p.display().to_string())?;
    let src = WeightSource::open_dir(dir)?;
    // In f32 whatever `--dtype`, as the HTC model keeps its tokenizer (`models::htc`).
    let vb = Loader::<B>::new(&src, device).with_dtype(burn::tensor::DType::F32).pp(prefix);
    let enc =
        Mgvq::load(&vb, &mc).with_context(|| format!("loading the MGVQ weights of {}", dir.display()))?;
    let dec = match cfg.get("decoder").filter(|_| tokenizer_dir) {
        Some(d) => {
            let d: mgvq_decoder::Config = serde_json::from_value(d.clone())
                .with_context(|| format!("invalid `decoder` section in {}", p.display()))?;
            Some(Decoder::load(&vb.pp("decoder"), &d).context("loading the MGVQ decoder")?)
        }
        None => None,
    };
    Ok((enc, dec))
}

fn to_rgb(t: &[f32], size: usize, i: usize) -> RgbImage {
    let plane = size * size;
    RgbImage::from_fn(size as u32, size as u32, |x, y| {
        let at = |c: usize| {
            let v = t[i * 3 * plane + c * plane + y as usize * size + x as usize];
            ((v / 2.0 + 0.5) * 255.0).round().clamp(0.0, 255.0) as u8
        };
        image::Rgb([at(0), at(1), at(2)])
    })
}

/// The images `[b, 3, s, s]` (in [-1, 1]) decoded to RGB.
pub fn to_images<B: Backend>(t: &Tensor<B, 4>) -> Vec<RgbImage> {
    let [b, _, s, _] = t.dims();
    let data: Vec<f32> = t.clone().into_data().convert::<f32>().to_vec().expect("f32 after convert");
    (0..b).map(|i| to_rgb(&data, s, i)).collect()
}

/// Originals in the top row, reconstructions below, up to 8 columns.
pub fn write_grid<B: Backend>(orig: &Tensor<B, 4>, recon: &Tensor<B, 4>, path: &Path) -> Result<()> {
    let (a, b) = (to_images(orig), to_images(recon));
    let n = a.len().min(8);
    let s = orig.dims()[2] as u32;
    let pad = 4;
    let mut grid =
        RgbImage::from_pixel(n as u32 * (s + pad) + pad, 2 * (s + pad) + pad, image::Rgb([255, 255, 255]));
    for i in 0..n {
        let x = pad + i as u32 * (s + pad);
        image::imageops::replace(&mut grid, &a[i], x as i64, pad as i64);
        image::imageops::replace(&mut grid, &b[i], x as i64, (2 * pad + s) as i64);
    }
    grid.save(path).with_context(|| format!("cannot write {}", path.display()))
}
