//! The attention maps the worker sends, checked and reduced to what the page draws.

/// Which layers the attention view shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerPick {
    Mean,
    Layer(usize),
}

/// `<voco>`'s attention over the anchors and patches, per layer, as the worker sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionMaps {
    pub n_discrete: usize,
    pub n_visual: usize,
    pub layers: Vec<Vec<f32>>,
}

/// One layer pick reduced to what the page draws.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionView {
    /// Attention on each anchor.
    pub anchors: Vec<f32>,
    /// Attention on all patches together.
    pub patches_total: f32,
    /// Side of the square patch grid.
    pub grid: usize,
    /// Patch attention row-major over the grid, scaled so the largest cell is 1.
    pub heat: Vec<f32>,
}

impl AttentionMaps {
    /// Checks the worker's maps: every layer covers `n_discrete + n_visual` positions and the
    /// patches form a square grid.
    pub fn new(n_discrete: usize, n_visual: usize, layers: Vec<Vec<f32>>) -> Result<Self, String> {
        let width = n_discrete + n_visual;
        if layers.is_empty() {
            return Err("no attention layers".into());
        }
        if let Some((i, l)) = layers.iter().enumerate().find(|(_, l)| l.len() != width) {
            return Err(format!("attention layer {i} has {} values, expected {width}", l.len()));
        }
        let grid = (n_visual as f64).sqrt().round() as usize;
        if grid * grid != n_visual {
            return Err(format!("{n_visual} patches do not form a square grid"));
        }
        Ok(Self { n_discrete, n_visual, layers })
    }

    /// The view of one layer, or of the mean over layers.
    pub fn view(&self, pick: LayerPick) -> AttentionView {
        let width = self.n_discrete + self.n_visual;
        let row: Vec<f32> = match pick {
            LayerPick::Layer(i) => self.layers[i.min(self.layers.len() - 1)].clone(),
            LayerPick::Mean => (0..width)
                .map(|k| self.layers.iter().map(|l| l[k]).sum::<f32>() / self.layers.len() as f32)
                .collect(),
        };
        let (anchors, patches) = row.split_at(self.n_discrete);
        let max = patches.iter().cloned().fold(0.0f32, f32::max);
        let heat = patches.iter().map(|&p| if max > 0.0 { p / max } else { 0.0 }).collect();
        AttentionView {
            anchors: anchors.to_vec(),
            patches_total: patches.iter().sum(),
            grid: (self.n_visual as f64).sqrt().round() as usize,
            heat,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_views_reduce_layers_and_check_shapes() {
        // 2 anchors + 4 patches (a 2×2 grid), 2 layers.
        let maps = AttentionMaps::new(
            2,
            4,
            vec![vec![0.1, 0.1, 0.2, 0.2, 0.2, 0.2], vec![0.3, 0.1, 0.0, 0.4, 0.1, 0.1]],
        )
        .unwrap();
        let l1 = maps.view(LayerPick::Layer(1));
        assert_eq!(l1.grid, 2);
        assert_eq!(l1.anchors, vec![0.3, 0.1]);
        assert!((l1.patches_total - 0.6).abs() < 1e-6);
        assert_eq!(l1.heat, vec![0.0, 1.0, 0.25, 0.25]);
        let mean = maps.view(LayerPick::Mean);
        assert!((mean.anchors[0] - 0.2).abs() < 1e-6);
        assert!((mean.heat[1] - 1.0).abs() < 1e-6);
        assert!((mean.heat[0] - 1.0 / 3.0).abs() < 1e-6);
        assert!(AttentionMaps::new(2, 4, vec![vec![0.0; 5]]).unwrap_err().contains("expected 6"));
        assert!(AttentionMaps::new(0, 5, vec![vec![0.0; 5]]).unwrap_err().contains("square"));
        assert!(AttentionMaps::new(0, 4, vec![]).is_err());
    }
}
