//! From an image to the tensors a model takes: CLIP pixel values (the model's image processor)
//! and, for modes that use MGVQ, MGVQ pixel values. One path for `htc ask` and the engine.

use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use image::RgbImage;

use htc_shared::preprocess::{decode_image, ClipPreprocess, DecodeLimits};

use crate::formats::WeightSource;
use crate::models::htc::{Htc, ImageTensors};

/// Reads and decodes an image file (default limits), naming the file in errors.
pub fn read_image_file(path: &Path) -> Result<RgbImage> {
    Ok(read_image_bytes(path)?.1)
}

/// [`read_image_file`] with the file's bytes (what the compressed-image cache is keyed by).
pub fn read_image_bytes(path: &Path) -> Result<(Vec<u8>, RgbImage)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    let img = decode_image(&bytes, DecodeLimits::default()).with_context(|| format!("{}", path.display()))?;
    Ok((bytes, img))
}

/// CLIP pixel values `[1, 3, s, s]` through `preprocess`, whose crop must equal the vision
/// tower's `size`.
pub fn clip_pixels<B: Backend>(
    preprocess: &ClipPreprocess, img: &RgbImage, size: usize, device: &B::Device,
) -> Result<Tensor<B, 4>> {
    let (h, w) = preprocess.crop;
    if (h as usize, w as usize) != (size, size) {
        bail!("preprocessor crop size {h}x{w} does not match the vision tower's {size}x{size}");
    }
    Ok(Tensor::from_data(TensorData::new(preprocess.apply(img), [1, 3, size, size]), device))
}

/// Ready CLIP pixel values from a safetensors file with `pixel_values` `[1, 3, s, s]` or
/// `[3, s, s]`.
pub fn pixel_values_file<B: Backend>(p: &Path, size: usize, device: &B::Device) -> Result<Tensor<B, 4>> {
    PixelValues::read(p)?.tensor(size, device)
}

/// CLIP pixel values preprocessed elsewhere, as read from a file: checked against a model's
/// image size only when a model takes them ([`PixelValues::tensor`]).
#[derive(Debug, Clone)]
pub struct PixelValues {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    /// The file they came from, for error messages.
    pub source: String,
}

impl PixelValues {
    /// Reads `pixel_values` from a safetensors file.
    pub fn read(p: &Path) -> Result<Self> {
        let src = WeightSource::open_files(&[p.to_path_buf()])?;
        let t = src
            .read("pixel_values")
            .with_context(|| format!("{} has no `pixel_values` tensor", p.display()))?;
        Ok(Self { shape: t.shape, data: t.data, source: p.display().to_string() })
    }

    /// The values as `[1, 3, size, size]`, if they have that shape (or `[3, size, size]`).
    pub fn tensor<B: Backend>(&self, size: usize, device: &B::Device) -> Result<Tensor<B, 4>> {
        let ok = match self.shape.as_slice() {
            [1, 3, h, w] | [3, h, w] => *h == size && *w == size,
            _ => false,
        };
        if !ok {
            bail!(
                "pixel_values in {} has shape {:?}; the model expects [1, 3, {size}, {size}]",
                self.source,
                self.shape
            );
        }
        Ok(Tensor::from_data(TensorData::new(self.data.clone(), [1, 3, size, size]), device))
    }
}

/// MGVQ pixel values `[1, 3, s, s]` in [-1, 1], in the tokenizer's dtype
/// ([`htc_shared::mgvq::Mgvq::pixels_of`]), when the model's mode uses MGVQ.
pub fn mgvq_pixels<B: Backend>(model: &Htc<B>, img: &RgbImage) -> Option<Tensor<B, 4>> {
    model.mgvq.as_ref().filter(|_| model.config.uses_discrete()).map(|m| m.pixels_of(img))
}

/// Both inputs of an HTC model for a decoded image.
pub fn image_tensors<B: Backend>(
    model: &Htc<B>, preprocess: &ClipPreprocess, img: &RgbImage, device: &B::Device,
) -> Result<ImageTensors<B>> {
    let size = model.llava.vision.image_size();
    Ok(ImageTensors {
        clip: clip_pixels(preprocess, img, size, device)?,
        mgvq: mgvq_pixels(model, img),
        codes: None,
    })
}
