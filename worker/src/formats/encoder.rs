//! The MGVQ encoder's weights as one in-memory safetensors file for pages that run the encoder
//! themselves: the checkpoint's `mgvq.*` tensors (encoder, `quant_conv`, codebook) as f32,
//! named by their SHA-256.

use std::path::Path;

use anyhow::{Context, Result};
use htc_shared::protocol::sha256_hex;

use super::WeightSource;

/// The encoder's weights file and its digest.
pub struct EncoderFile {
    pub bytes: Vec<u8>,
    /// Lowercase hex SHA-256 of `bytes`.
    pub sha256: String,
}

/// The `mgvq.*` tensors of the snapshot in `dir` as one f32 safetensors file (keys kept), or
/// `None` when the checkpoint has none.
pub fn encoder_file(dir: &Path) -> Result<Option<EncoderFile>> {
    let src = WeightSource::open_dir(dir)?;
    let mut names: Vec<String> = src.names().into_iter().filter(|n| n.starts_with("mgvq.")).collect();
    if names.is_empty() {
        return Ok(None);
    }
    names.sort();
    let tensors = names
        .iter()
        .map(|n| {
            let t = src.read(n)?;
            let raw: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            Ok((n.clone(), t.shape, raw))
        })
        .collect::<Result<Vec<_>>>()?;
    let views = tensors
        .iter()
        .map(|(n, shape, raw)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), raw)
                .with_context(|| format!("tensor `{n}`"))?;
            Ok((n.clone(), v))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, None).context("writing the encoder weights")?;
    let sha256 = sha256_hex(&bytes);
    Ok(Some(EncoderFile { bytes, sha256 }))
}
