//! The report's figures (plotters, PNG, 800×480): bars with error bars, curves with error
//! bars, and `<voco>`'s attention heatmaps. Text uses the compiled-in font of
//! `train::plot`, so no system fonts are needed.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::input::Heatmap;

const SIZE: (u32, u32) = (800, 480);

/// Colours of successive series.
pub const COLORS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), BLACK];

/// A value with its error bar (± one std), when it has one.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub err: Option<f64>,
}

/// One line of a curve plot.
pub struct Series {
    pub label: String,
    pub points: Vec<Point>,
}

/// How a drawing error reads: the file and plotters' message.
fn failed(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> anyhow::Error + '_ {
    move |e| anyhow!("cannot draw {}: {e}", path.display())
}

/// The label of the category at `x` (categories sit at 0, 1, 2, …), empty between them.
fn category(labels: &[String], x: f64) -> String {
    let i = x.round();
    match (i - x).abs() < 1e-6 && i >= 0.0 {
        true => labels.get(i as usize).cloned().unwrap_or_default(),
        false => String::new(),
    }
}

/// A y range holding every value and error bar of `ys`, from 0 when `from_zero`.
fn y_range(ys: impl Iterator<Item = (f64, Option<f64>)>, from_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (y, e) in ys {
        let e = e.unwrap_or(0.0);
        lo = lo.min(y - e);
        hi = hi.max(y + e);
    }
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.1).max(1e-3);
    let lo = if from_zero { 0f64.min(lo) } else { (lo - pad).max(0.0) };
    (lo, hi + pad)
}

/// Bars of `items` (label, mean, std) with error bars, and horizontal reference lines
/// `bounds` (label, value) across the chart.
pub fn bars(
    path: &Path, title: &str, y_desc: &str, items: &[(String, f64, Option<f64>)], bounds: &[(String, f64)],
) -> Result<()> {
    crate::figures::register_font();
    let e = failed(path);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let labels: Vec<String> = items.iter().map(|i| i.0.clone()).collect();
    let n = items.len().max(1) as f64;
    let top =
        items.iter().map(|i| i.1 + i.2.unwrap_or(0.0)).chain(bounds.iter().map(|b| b.1)).fold(0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(-0.5f64..n - 0.5, 0f64..(top * 1.1).max(1.0))
        .map_err(|x| e(&x))?;
    let label_of = |x: &f64| category(&labels, *x);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(items.len() + 1)
        .x_label_formatter(&label_of)
        .y_desc(y_desc)
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(items.iter().enumerate().map(|(i, (_, m, _))| {
            let x = i as f64;
            Rectangle::new([(x - 0.35, 0.0), (x + 0.35, *m)], COLORS[0].mix(0.7).filled())
        }))
        .map_err(|x| e(&x))?;
    chart
        .draw_series(items.iter().enumerate().filter_map(|(i, (_, m, s))| {
            s.map(|s| ErrorBar::new_vertical(i as f64, m - s, *m, m + s, BLACK.stroke_width(2), 12))
        }))
        .map_err(|x| e(&x))?;
    for (k, (label, v)) in bounds.iter().enumerate() {
        let color = COLORS[(k + 1) % COLORS.len()];
        chart
            .draw_series(LineSeries::new([(-0.5, *v), (n - 0.5, *v)], color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    if !bounds.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// Lines of `series` with points and error bars. With `categories`, the points' x are
/// category indices (0, 1, …) labelled by them; otherwise x is numeric.
pub fn curves(
    path: &Path, title: &str, x_desc: &str, y_desc: &str, series: &[Series], categories: Option<&[String]>,
) -> Result<()> {
    crate::figures::register_font();
    let e = failed(path);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let xs = || series.iter().flat_map(|s| s.points.iter().map(|p| p.x));
    let (x0, x1) = match categories {
        Some(c) => (-0.5, c.len().max(1) as f64 - 0.5),
        None => (xs().fold(f64::INFINITY, f64::min) - 0.5, xs().fold(f64::NEG_INFINITY, f64::max) + 0.5),
    };
    let (x0, x1) = if x0.is_finite() && x1.is_finite() { (x0, x1) } else { (0.0, 1.0) };
    let (y0, y1) = y_range(series.iter().flat_map(|s| s.points.iter().map(|p| (p.y, p.err))), false);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|x| e(&x))?;
    let labels: Vec<String> = categories.map(<[String]>::to_vec).unwrap_or_default();
    let by_category = |x: &f64| category(&labels, *x);
    let numeric = |x: &f64| match (x.round() - x).abs() < 1e-6 {
        true => format!("{x:.0}"),
        false => String::new(),
    };
    let span = (x1 - x0).round() as usize;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(span + 1)
        .x_label_formatter(if categories.is_some() { &by_category } else { &numeric })
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(|x| e(&x))?;
    for (k, s) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.x, p.y)).collect();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(|x| e(&x))?;
        chart
            .draw_series(s.points.iter().filter_map(|p| {
                p.err.map(|d| ErrorBar::new_vertical(p.x, p.y - d, p.y, p.y + d, color.stroke_width(1), 10))
            }))
            .map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// White for 0 to dark blue for `max`.
fn shade(v: f64, max: f64) -> RGBColor {
    let t = if max > 0.0 { (v / max).clamp(0.0, 1.0) } else { 0.0 };
    let mix = |white: f64, dark: f64| (white + (dark - white) * t).round() as u8;
    RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}

/// One panel per image: a row of anchor cells over the patch grid (`grid` = rows × columns),
/// each cell shaded by `<voco>`'s attention to it (scaled to the image's largest value) and
/// labelled with it.
pub fn heatmaps(path: &Path, title: &str, grid: [usize; 2], maps: &[&Heatmap]) -> Result<()> {
    crate::figures::register_font();
    let e = failed(path);
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(|x| e(&x))?;
    let panels = root.split_evenly((1, maps.len().max(1)));
    for (panel, map) in panels.iter().zip(maps) {
        heatmap_panel(panel, grid, map).map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// A drawing error of the bitmap backend.
type DrawError<'a> = DrawingAreaErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>;

fn heatmap_panel<'a>(
    area: &DrawingArea<BitMapBackend<'a>, Shift>, [rows, cols]: [usize; 2], map: &Heatmap,
) -> Result<(), DrawError<'a>> {
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    let max = map.anchors.iter().chain(&map.patches).copied().fold(0f64, f64::max);
    let across = cols.max(map.anchors.len()).max(1) as i32;
    // The anchor row, a gap of half a cell, then the grid; 60 px for the labels.
    let cell = ((w - 16) / across).min(((h - 60) * 2) / (2 * rows as i32 + 3)).max(4);
    let left = (w - cell * across) / 2;
    let font = ("sans-serif", 13).into_font();
    let name = Path::new(&map.image).file_name().map(|n| n.to_string_lossy().into_owned());
    area.draw(&Text::new(name.unwrap_or_else(|| map.image.clone()), (left, 4), font.clone()))?;
    let draw_cell = |x: i32, y: i32, v: f64| -> Result<(), _> {
        let color = shade(v, max);
        area.draw(&Rectangle::new([(x, y), (x + cell - 2, y + cell - 2)], color.filled()))?;
        let ink = if max > 0.0 && v / max > 0.55 { WHITE } else { BLACK };
        area.draw(&Text::new(format!("{v:.2}"), (x + 4, y + cell / 2 - 6), font.clone().color(&ink)))
    };
    let top = 24;
    area.draw(&Text::new("anchors", (left, top), font.clone()))?;
    for (i, v) in map.anchors.iter().enumerate() {
        draw_cell(left + i as i32 * cell, top + 18, *v)?;
    }
    let grid_top = top + 18 + cell + cell / 2;
    area.draw(&Text::new("patches", (left, grid_top - 18), font.clone()))?;
    for (i, v) in map.patches.iter().enumerate() {
        let (r, c) = ((i / cols.max(1)) as i32, (i % cols.max(1)) as i32);
        draw_cell(left + c * cell, grid_top + r * cell, *v)?;
    }
    Ok(())
}
