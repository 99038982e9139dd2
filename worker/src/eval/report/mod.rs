//! `htc report`: turns the raw JSON of `scripts/experiments.sh` (under `docs/results/`) into
//! the page `docs/results.md` and its PNG figures, so that no number on the page is typed by
//! hand. Owns reading that JSON ([`input`]), the arms, groups and paper numbers ([`paper`]),
//! the statistics and claim verdicts ([`stats`]), the figures ([`plots`]) and the page's
//! text ([`page`]). A missing part of the results makes its section say "not run yet".

pub mod input;
pub mod page;
pub mod paper;
pub mod plots;
pub mod stats;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use input::{Results, Run};
use plots::{Point, Series};
use stats::{PerSeed, Summary};

/// The figures, by file name in the results directory.
pub const FIG_MODES: &str = "fig-modes.png";
pub const FIG_ND: &str = "fig-nd.png";
pub const FIG_ATTENTION: &str = "fig-attention.png";
pub const FIG_HEATMAPS: &str = "fig-heatmaps.png";
pub const FIG_KL: &str = "fig-kl.png";

/// What `htc report` did: the figures it drew (paths) and the inputs it skipped.
pub struct Written {
    pub figures: Vec<PathBuf>,
    pub warnings: Vec<String>,
}

/// Reads the results in `results`, draws the figures into it and writes the page to `out`.
pub fn write(results: &Path, out: &Path) -> Result<Written> {
    let r = Results::read(results)?;
    let mut drawn = Vec::new();
    for (name, draw) in [
        (FIG_MODES, draw_modes as fn(&Results, &Path) -> Result<bool>),
        (FIG_ND, draw_nd),
        (FIG_ATTENTION, draw_attention),
        (FIG_HEATMAPS, draw_heatmaps),
        (FIG_KL, draw_kl),
    ] {
        let path = results.join(name);
        if draw(&r, &path)? {
            drawn.push((name, path));
        }
    }
    // The page links the results directory relative to its own directory.
    let page_dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let abs = |p: &Path| std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()));
    let rel = pathdiff::diff_paths(abs(results)?, abs(page_dir)?).unwrap_or_else(|| results.to_path_buf());
    let dir = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>();
    let link = page::Links {
        dir: if dir.is_empty() { ".".to_string() } else { dir.join("/") },
        drawn: drawn.iter().map(|(n, _)| *n).collect(),
    };
    let text = page::render(&r, &link);
    std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(Written { figures: drawn.into_iter().map(|(_, p)| p).collect(), warnings: r.warnings })
}

impl Results {
    /// `f` of each seed's run of `arm` (seeds where it gives nothing are left out).
    pub fn metric(&self, arm: &str, f: impl Fn(&Run) -> Option<f64>) -> PerSeed {
        self.runs
            .get(arm)
            .map(|m| m.iter().filter_map(|(s, r)| Some((*s, f(r)?))).collect())
            .unwrap_or_default()
    }

    /// Overall accuracy per seed.
    pub fn overall(&self, arm: &str) -> PerSeed {
        self.metric(arm, |r| Some(r.eval.score))
    }

    /// Retention per seed of `f` (overall accuracy, a kind, a family) against the same
    /// seed's upper and lower bounds.
    pub fn retention(&self, arm: &str, f: impl Fn(&Run) -> Option<f64> + Copy) -> PerSeed {
        stats::retention(&self.metric(arm, f), &self.metric(paper::UPPER, f), &self.metric(paper::LOWER, f))
    }

    /// Seeds `arm` has results for.
    pub fn seeds(&self, arm: &str) -> usize {
        self.runs.get(arm).map_or(0, |m| m.len())
    }
}

/// A point at `x` from the per-seed values `v` (error bar: their std).
fn point(x: f64, v: &PerSeed) -> Option<Point> {
    let s = Summary::of_seeds(v);
    Some(Point { x, y: s.mean?, err: s.sd })
}

/// Figure (a): overall accuracy of the modes group, with the bounds as lines.
fn draw_modes(r: &Results, path: &Path) -> Result<bool> {
    let group = &paper::GROUPS[0];
    let mut items = Vec::new();
    let mut bounds = Vec::new();
    for arm in group.arms {
        let s = Summary::of_seeds(&r.overall(arm));
        let Some(m) = s.mean else { continue };
        items.push((arm.to_string(), m, s.sd));
        if *arm == paper::UPPER || *arm == paper::LOWER {
            let which = if *arm == paper::UPPER { "upper bound" } else { "lower bound" };
            bounds.push((format!("{which} ({arm})"), m));
        }
    }
    if items.is_empty() {
        return Ok(false);
    }
    plots::bars(path, "overall accuracy per mode (mean ± std over seeds)", "accuracy, %", &items, &bounds)?;
    Ok(true)
}

/// Figure (b): accuracy against N_d.
fn draw_nd(r: &Results, path: &Path) -> Result<bool> {
    let points: Vec<Point> =
        paper::ND.iter().filter_map(|(arm, nd)| point(*nd as f64, &r.overall(arm))).collect();
    if points.len() < 2 {
        return Ok(false);
    }
    let series = [Series { label: "overall accuracy".into(), points }];
    plots::curves(path, "accuracy against the number of anchors", "N_d", "accuracy, %", &series, None)?;
    Ok(true)
}

/// Figure (e): accuracy against β.
fn draw_kl(r: &Results, path: &Path) -> Result<bool> {
    let mut labels = Vec::new();
    let mut points = Vec::new();
    for (arm, beta) in paper::KL {
        if let Some(p) = point(labels.len() as f64, &r.overall(arm)) {
            labels.push(format!("β = {beta}"));
            points.push(p);
        }
    }
    if points.len() < 2 {
        return Ok(false);
    }
    let series = [Series { label: "overall accuracy".into(), points }];
    plots::curves(path, "accuracy against the KL weight β", "β", "accuracy, %", &series, Some(&labels))?;
    Ok(true)
}

/// Per-layer attention of `<voco>` for `arm`, one [`input::MeanStd`] getter: layer →
/// (mean over seeds, error). The error is the std over seeds, or over images with one seed.
pub fn per_layer(
    r: &Results, arm: &str, get: impl Fn(&input::Layer) -> Option<input::MeanStd>,
) -> Vec<(usize, f64, Option<f64>)> {
    let Some(files) = r.attention.get(arm) else { return Vec::new() };
    let mut by_layer: std::collections::BTreeMap<usize, Vec<input::MeanStd>> = Default::default();
    for a in files.values() {
        for l in &a.layers {
            if let Some(v) = get(l) {
                by_layer.entry(l.layer).or_default().push(v);
            }
        }
    }
    by_layer
        .into_iter()
        .filter_map(|(layer, vs)| {
            let means: Vec<f64> = vs.iter().map(|v| v.mean).collect();
            let s = Summary::of(&means);
            let err = if vs.len() == 1 { vs[0].std } else { s.sd };
            Some((layer, s.mean?, err))
        })
        .collect()
}

/// Figure (c): per-token attention to anchors and to patches per layer, htc and voco.
fn draw_attention(r: &Results, path: &Path) -> Result<bool> {
    let mut series = Vec::new();
    for arm in paper::ATTENTION_ARMS {
        for (what, get) in [
            ("per anchor", (|l: &input::Layer| l.anchor_token) as fn(&input::Layer) -> _),
            ("per patch", |l: &input::Layer| l.patch_token),
        ] {
            let points: Vec<Point> =
                per_layer(r, arm, get).into_iter().map(|(x, y, err)| Point { x: x as f64, y, err }).collect();
            if !points.is_empty() {
                series.push(Series { label: format!("{arm}, {what}"), points });
            }
        }
    }
    if series.is_empty() {
        return Ok(false);
    }
    plots::curves(
        path,
        "attention mass of <voco> per token, by layer",
        "layer",
        "mass per token",
        &series,
        None,
    )?;
    Ok(true)
}

/// Figure (d): htc's `<voco>` attention on up to four images of its first seed.
fn draw_heatmaps(r: &Results, path: &Path) -> Result<bool> {
    let Some(a) = r.attention.get(paper::DEFAULT).and_then(|m| m.values().find(|a| !a.heatmaps.is_empty()))
    else {
        return Ok(false);
    };
    let grid = a.grid.unwrap_or_else(|| {
        // A square grid when the file gives none, else one row.
        let side = (a.n_patches as f64).sqrt().round() as usize;
        if side * side == a.n_patches {
            [side, side]
        } else {
            [1, a.n_patches]
        }
    });
    let maps: Vec<_> = a.heatmaps.iter().take(4).collect();
    plots::heatmaps(path, "attention of <voco> in htc: the anchors and the patch grid", grid, &maps)?;
    Ok(true)
}
