//! Analyses of a trained HTC model (`htc analyze`), each writing one JSON report: [`probe`]
//! (linear probes of the frozen representations on ShapesVQA scene labels, the paper's
//! representation probing), [`attention`] (where the `<voco>` token looks: anchors against
//! patches, per layer) and [`cost`] (wall time of answering with and without the compressed
//! image). This file holds what they share: opening the model, reading scenes, loading a batch
//! of images, where the anchors and the patches sit in the prefix, and mean ± std.

pub mod attention;
pub mod cost;
pub mod probe;

use std::ops::Range;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::{backend::Backend, Tensor};
use serde::Serialize;

use htc_shared::config::Fusion;
use htc_shared::mask::MaskLayout;
use htc_shared::preprocess::ClipPreprocess;

use crate::data::{read_scenes, CellLabels};
use crate::formats::checkpoint::{AnyModel, Snapshot};
use crate::models::htc::{Htc, ImageTensors};
use crate::runtime::image::{image_tensors, read_image_file};
use crate::text::TextTokenizer;

/// An HTC checkpoint opened for analysis.
pub struct Loaded<B: Backend> {
    pub model: Htc<B>,
    pub preprocess: ClipPreprocess,
    pub tokenizer: Option<TextTokenizer>,
}

impl<B: Backend> Loaded<B> {
    /// The model tuned for inference on `threads` threads as the engine tunes it
    /// ([`Htc::with_row_split`], and the KV cache's `--kv-cache` storage).
    pub fn tuned(self, threads: usize) -> Self {
        let model = self.model.with_row_split(threads).with_kv_dtype(crate::runtime::kv_dtype());
        Self { model, ..self }
    }
}

/// Opens `dir`, which must hold an HTC checkpoint (a LLaVA config with an `htc` section).
pub fn load_htc<B: Backend>(dir: &Path, device: &B::Device) -> Result<Loaded<B>> {
    let snap = Snapshot::<B>::open(dir, device)?;
    let arch = snap.model.architecture();
    match snap.model {
        AnyModel::Htc { model, preprocess, .. } => {
            Ok(Loaded { model, preprocess, tokenizer: snap.tokenizer })
        }
        _ => bail!("{} is not an HTC checkpoint ({arch}; config.json has no `htc` section)", dir.display()),
    }
}

/// The first `count` scenes of a `<split>.scenes.json`, or all of them when it holds fewer
/// (the reports say how many they used). A file with no scenes is an error.
pub fn first_scenes(path: &Path, count: usize) -> Result<Vec<(String, CellLabels)>> {
    if count == 0 {
        bail!("the scene count for {} must be at least 1", path.display());
    }
    let mut scenes = read_scenes(path)?;
    if scenes.is_empty() {
        bail!("{} holds no scenes", path.display());
    }
    scenes.truncate(count);
    Ok(scenes)
}

/// The model's inputs for a batch of images (`root` joined with each name), one after another
/// along the batch dimension.
pub fn image_batch<B: Backend>(
    loaded: &Loaded<B>, root: &Path, names: &[&str], device: &B::Device,
) -> Result<ImageTensors<B>> {
    let mut clip = Vec::with_capacity(names.len());
    let mut mgvq = Vec::with_capacity(names.len());
    for name in names {
        let path = root.join(name);
        let img = read_image_file(&path)?;
        let t = image_tensors(&loaded.model, &loaded.preprocess, &img, device)
            .with_context(|| format!("{}", path.display()))?;
        clip.push(t.clip);
        mgvq.extend(t.mgvq);
    }
    if clip.is_empty() {
        bail!("no images in the batch");
    }
    let mgvq = if mgvq.is_empty() { None } else { Some(Tensor::cat(mgvq, 0)) };
    Ok(ImageTensors { clip: Tensor::cat(clip, 0), mgvq, codes: None })
}

/// Where the anchors and the patches sit in the visual span `<voco>` attention covers: the N_d
/// anchors first, then the patches, unless the model fuses them after the patches (under mean
/// fusion the layout has no anchor positions). Add `layout.bos as usize` for positions in the
/// whole prefix.
pub fn visual_spans(layout: &MaskLayout, fusion: Fusion) -> (Range<usize>, Range<usize>) {
    let (nd, nv) = (layout.n_discrete, layout.n_visual);
    match fusion {
        Fusion::After => (nv..nv + nd, 0..nv),
        _ => (0..nd, nd..nd + nv),
    }
}

/// A tensor's values as f32 on the host.
pub fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| anyhow!("reading a tensor back: {e:?}"))
}

/// Mean and sample standard deviation (n − 1 in the denominator; 0 for a single value).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
}

impl Stat {
    /// The statistic of `xs`; `None` when there are none.
    pub fn of(xs: &[f64]) -> Option<Self> {
        if xs.is_empty() {
            return None;
        }
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let std = if xs.len() < 2 {
            0.0
        } else {
            (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        };
        Some(Self { mean, std })
    }
}

/// Writes `report` as pretty JSON to `out`, creating its parent folders.
pub fn write_report<T: Serialize>(out: &Path, report: &T) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(out, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("cannot write {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_the_mean_and_the_sample_std() {
        let s = Stat::of(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!((s.mean - 2.5).abs() < 1e-12);
        assert!((s.std - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(Stat::of(&[7.0]), Some(Stat { mean: 7.0, std: 0.0 }));
        assert_eq!(Stat::of(&[]), None);
    }

    #[test]
    fn anchors_come_before_the_patches() {
        let layout = MaskLayout { bos: true, n_discrete: 4, n_visual: 9, n_voco: 1, n_text: 0 };
        assert_eq!(visual_spans(&layout, Fusion::Before), (0..4, 4..13));
        assert_eq!(visual_spans(&layout, Fusion::After), (9..13, 0..9));
        let layout = MaskLayout { n_discrete: 0, ..layout };
        assert_eq!(visual_spans(&layout, Fusion::Before), (0..0, 0..9));
    }
}
