//! `RUN_DIR/loss.png` (plotters): training loss per step and validation loss, redrawn as a run goes.
//! Text is drawn with the font [`crate::figures`] registers.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One logged step: step, training loss, validation loss when measured.
pub type Point = (usize, f64, Option<f64>);

/// Draws the loss curve of `points` into a PNG at `path`.
pub fn draw(points: &[Point], path: &Path) -> Result<()> {
    draw_labelled(points, path, "cross-entropy")
}

/// [`draw`] with the loss named `y_desc` on the vertical axis.
pub fn draw_labelled(points: &[Point], path: &Path, y_desc: &str) -> Result<()> {
    if points.is_empty() {
        return Ok(());
    }
    crate::figures::register_font();
    let e = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let last = points.iter().map(|p| p.0).max().unwrap_or(1).max(1);
    let losses = points.iter().flat_map(|p| std::iter::once(p.1).chain(p.2)).filter(|v| v.is_finite());
    let top = losses.fold(0f64, f64::max).max(1e-6) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption("loss", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0usize..last, 0f64..top)
        .map_err(|x| e(&x))?;
    chart.configure_mesh().x_desc("step").y_desc(y_desc).draw().map_err(|x| e(&x))?;
    chart
        .draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.1)), &BLUE))
        .map_err(|x| e(&x))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
    let val: Vec<(usize, f64)> = points.iter().filter_map(|p| p.2.map(|v| (p.0, v))).collect();
    if !val.is_empty() {
        chart
            .draw_series(LineSeries::new(val.iter().copied(), RED.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label("validation")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
    }
    chart.configure_series_labels().border_style(BLACK).draw().map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
