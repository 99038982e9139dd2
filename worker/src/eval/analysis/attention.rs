//! Where the `<voco>` token looks (`htc analyze attention`, the paper's Fig. 3 and its attention
//! analysis): for each of a set of scene images, the compressed image's `<voco>` attention
//! (the first `<voco>` token's, head-averaged, over `[v_d; V]`: the N_d anchors first, then
//! the patches) split per layer into the mass on the anchors and the mass on the patches, and
//! that mass per token (mass / count). The report gives their mean ± sample standard deviation
//! over the images, and for the first few images the attention averaged over the layers, per
//! anchor and per patch, for heatmaps. The rest of each row's mass is on BOS and `<voco>` itself.

use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use serde::Serialize;

use htc_shared::config::Fusion;

use super::{first_scenes, image_batch, load_htc, visual_spans, Loaded, Stat};
use crate::models::htc::CompressedImage;

/// Settings of `htc analyze attention`.
#[derive(Debug, Clone)]
pub struct AttentionRun {
    pub model: PathBuf,
    pub scenes: PathBuf,
    pub images: PathBuf,
    pub count: usize,
    pub heatmaps: usize,
}

/// One layer's statistics over the images (`None`: the model has no anchors).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerStats {
    pub layer: usize,
    pub anchors: Option<Stat>,
    pub patches: Option<Stat>,
    pub anchor_token: Option<Stat>,
    pub patch_token: Option<Stat>,
}

/// One image's attention averaged over the layers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Heatmap {
    pub image: String,
    pub anchors: Vec<f32>,
    pub patches: Vec<f32>,
}

/// The report `htc analyze attention` writes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttentionReport {
    pub images: usize,
    pub n_discrete: usize,
    pub n_patches: usize,
    /// The patch grid (rows, columns): square when the patch count is a square, else one row.
    pub grid: [usize; 2],
    pub layers: Vec<LayerStats>,
    pub heatmaps: Vec<Heatmap>,
}

/// One image's masses: per layer, (on the anchors, on the patches), summed over the tokens.
pub fn masses<B: Backend>(c: &CompressedImage<B>, fusion: Fusion) -> Vec<(f64, f64)> {
    let (anchors, patches) = visual_spans(&c.layout, fusion);
    c.voco_attention
        .iter()
        .map(|layer| {
            let row = &layer[0];
            let sum = |r: std::ops::Range<usize>| row[r].iter().map(|&x| x as f64).sum::<f64>();
            (sum(anchors.clone()), sum(patches.clone()))
        })
        .collect()
}

/// One image's heatmap: the first `<voco>` token's attention averaged over the layers.
pub fn heatmap<B: Backend>(image: &str, c: &CompressedImage<B>, fusion: Fusion) -> Heatmap {
    let (anchors, patches) = visual_spans(&c.layout, fusion);
    let layers = c.voco_attention.len().max(1) as f32;
    let mean = |j: usize| c.voco_attention.iter().map(|l| l[0][j]).sum::<f32>() / layers;
    Heatmap {
        image: image.to_string(),
        anchors: anchors.map(mean).collect(),
        patches: patches.map(mean).collect(),
    }
}

/// The report over compressed images (with their image names), each with `layers` layers.
pub fn report<B: Backend>(
    images: &[(&str, CompressedImage<B>)], heatmaps: usize, fusion: Fusion,
) -> Result<AttentionReport> {
    let Some((_, first)) = images.first() else { bail!("no images to analyse") };
    let (nd, np) = (first.layout.n_discrete, first.layout.n_visual);
    let per_image: Vec<Vec<(f64, f64)>> = images.iter().map(|(_, c)| masses(c, fusion)).collect();
    let layers = per_image[0].len();
    let stats = (0..layers)
        .map(|l| {
            let a: Vec<f64> = per_image.iter().map(|m| m[l].0).collect();
            let p: Vec<f64> = per_image.iter().map(|m| m[l].1).collect();
            let per = |xs: &[f64], n: usize| xs.iter().map(|x| x / n as f64).collect::<Vec<f64>>();
            LayerStats {
                layer: l,
                anchors: Stat::of(&a).filter(|_| nd > 0),
                patches: Stat::of(&p).filter(|_| np > 0),
                anchor_token: Stat::of(&per(&a, nd)).filter(|_| nd > 0),
                patch_token: Stat::of(&per(&p, np)).filter(|_| np > 0),
            }
        })
        .collect();
    let g = (np as f64).sqrt().round() as usize;
    let grid = if g * g == np { [g, g] } else { [1, np] };
    Ok(AttentionReport {
        images: images.len(),
        n_discrete: nd,
        n_patches: np,
        grid,
        layers: stats,
        heatmaps: images.iter().take(heatmaps).map(|(name, c)| heatmap(name, c, fusion)).collect(),
    })
}

/// Checks that `loaded` has a `<voco>` token to analyse.
pub fn check_voco<B: Backend>(loaded: &Loaded<B>, model: &std::path::Path) -> Result<()> {
    if loaded.model.layout(0).n_voco == 0 {
        let mode = serde_json::to_value(loaded.model.config.mode)?;
        bail!(
            "{} is a model of mode {}, which has no <voco> token: no <voco> attention to analyse \
             (modes voco, htc and discrete have one)",
            model.display(),
            mode.as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// Compresses the first `count` scene images and reports their `<voco>` attention.
pub fn run<B: Backend>(r: &AttentionRun, device: &B::Device) -> Result<AttentionReport> {
    let scenes = first_scenes(&r.scenes, r.count)?;
    let loaded = load_htc::<B>(&r.model, device)?.tuned(crate::backend::row_split());
    check_voco(&loaded, &r.model)?;
    let mut compressed = Vec::with_capacity(scenes.len());
    for (name, _) in &scenes {
        let img = image_batch(&loaded, &r.images, &[name.as_str()], device)?;
        compressed.push((name.as_str(), loaded.model.compress(&img)?));
    }
    report(&compressed, r.heatmaps, loaded.model.config.fusion)
}
