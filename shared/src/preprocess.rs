//! Image preprocessing shared by the browser and the worker: decoding with size limits,
//! LLaVA's pad-to-square with the mean colour, bicubic resize, center crop and CLIP
//! normalisation (as `CLIPImageProcessor` plus LLaVA's `expand2square`).

use std::io::Cursor;

use image::{imageops::FilterType, DynamicImage, ImageReader, Rgb, RgbImage};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// CLIP's per-channel mean (OpenAI CLIP training statistics).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel standard deviation.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Decoding limits: protect against decompression bombs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodeLimits {
    pub max_width: u32,
    pub max_height: u32,
    pub max_alloc_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_width: 8192, max_height: 8192, max_alloc_bytes: 512 << 20 }
    }
}

/// Decodes PNG/JPEG/WebP/GIF/BMP bytes into RGB8, refusing images over the limits.
pub fn decode_image(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, Error> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::Image(format!("cannot read image: {e}")))?;
    if reader.format().is_none() {
        return Err(Error::Image("unrecognised image format (expected PNG, JPEG, WebP, GIF or BMP)".into()));
    }
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_width);
    l.max_image_height = Some(limits.max_height);
    l.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(l);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => Error::Image(format!(
            "image exceeds the limits ({}x{} pixels, {} bytes decoded)",
            limits.max_width, limits.max_height, limits.max_alloc_bytes
        )),
        other => Error::Image(format!("corrupt or unsupported image: {other}")),
    })?;
    Ok(DynamicImage::into_rgb8(img))
}

/// Settings of a CLIP-style image processor (`preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipPreprocess {
    /// Resize target of the shortest edge.
    pub shortest_edge: u32,
    /// Center crop (height, width).
    pub crop: (u32, u32),
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Pad to a square with the mean colour first (LLaVA-1.5's `image_aspect_ratio = pad`).
    pub pad_to_square: bool,
}

impl ClipPreprocess {
    /// The LLaVA-1.5 pipeline for a vision tower of `image_size` pixels.
    pub fn llava(image_size: u32) -> Self {
        Self {
            shortest_edge: image_size,
            crop: (image_size, image_size),
            mean: CLIP_MEAN,
            std: CLIP_STD,
            pad_to_square: true,
        }
    }

    /// Reads `preprocessor_config.json` (transformers' CLIPImageProcessor keys), falling back
    /// to `self` for absent fields.
    pub fn with_json(mut self, v: &Value) -> Result<Self, Error> {
        let triple = |key: &str| -> Result<Option<[f32; 3]>, Error> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(a)) if a.len() == 3 && a.iter().all(Value::is_number) => {
                    Ok(Some([0, 1, 2].map(|i| a[i].as_f64().unwrap_or(0.0) as f32)))
                }
                Some(x) => Err(Error::Config(format!("`{key}` must be a list of 3 numbers, got {x}"))),
            }
        };
        if let Some(m) = triple("image_mean")? {
            self.mean = m;
        }
        if let Some(s) = triple("image_std")? {
            if s.iter().any(|x| *x <= 0.0) {
                return Err(Error::Config("`image_std` must be positive".into()));
            }
            self.std = s;
        }
        match v.get("size") {
            Some(Value::Object(o)) => {
                if let Some(e) = o.get("shortest_edge").and_then(Value::as_u64) {
                    self.shortest_edge = e as u32;
                } else if let (Some(h), Some(_)) = (o.get("height").and_then(Value::as_u64), o.get("width")) {
                    self.shortest_edge = h as u32;
                }
            }
            Some(Value::Number(n)) => {
                self.shortest_edge = n.as_u64().unwrap_or(self.shortest_edge as u64) as u32
            }
            _ => {}
        }
        match v.get("crop_size") {
            Some(Value::Object(o)) => {
                let h = o.get("height").and_then(Value::as_u64);
                let w = o.get("width").and_then(Value::as_u64);
                if let (Some(h), Some(w)) = (h, w) {
                    self.crop = (h as u32, w as u32);
                }
            }
            Some(Value::Number(n)) => {
                let s = n.as_u64().unwrap_or(self.crop.0 as u64) as u32;
                self.crop = (s, s);
            }
            _ => {}
        }
        if let Some(r) = v.get("resample").and_then(Value::as_u64) {
            if r != 3 {
                return Err(Error::Config(format!(
                    "unsupported resample filter {r} (only bicubic, 3, is implemented)"
                )));
            }
        }
        if self.shortest_edge == 0 || self.crop.0 == 0 || self.crop.1 == 0 {
            return Err(Error::Config("image sizes in preprocessor_config.json must be positive".into()));
        }
        Ok(self)
    }

    /// The mean colour used for padding, as LLaVA computes it: `int(x * 255)`.
    pub fn pad_colour(&self) -> Rgb<u8> {
        Rgb(self.mean.map(|m| (m * 255.0) as u8))
    }

    /// Runs the pipeline and returns CHW f32 pixel values `[3, crop.0, crop.1]`.
    pub fn apply(&self, img: &RgbImage) -> Vec<f32> {
        let img = if self.pad_to_square { expand_to_square(img, self.pad_colour()) } else { img.clone() };
        let (w, h) = img.dimensions();
        let (nw, nh) = if w <= h {
            (self.shortest_edge, ((h as u64 * self.shortest_edge as u64) / w as u64) as u32)
        } else {
            (((w as u64 * self.shortest_edge as u64) / h as u64) as u32, self.shortest_edge)
        };
        let resized = image::imageops::resize(&img, nw.max(1), nh.max(1), FilterType::CatmullRom);
        let (ch, cw) = self.crop;
        let top = (nh.saturating_sub(ch)) / 2;
        let left = (nw.saturating_sub(cw)) / 2;
        let mut out = vec![0f32; 3 * (ch * cw) as usize];
        let plane = (ch * cw) as usize;
        for y in 0..ch {
            for x in 0..cw {
                let (sx, sy) = (left + x, top + y);
                let px = if sx < nw && sy < nh { resized.get_pixel(sx, sy).0 } else { [0, 0, 0] };
                for c in 0..3 {
                    let v = px[c] as f32 / 255.0;
                    out[c * plane + (y * cw + x) as usize] = (v - self.mean[c]) / self.std[c];
                }
            }
        }
        out
    }
}

/// LLaVA's `expand2square`: paste the image centred on a square of `fill`.
pub fn expand_to_square(img: &RgbImage, fill: Rgb<u8>) -> RgbImage {
    let (w, h) = img.dimensions();
    if w == h {
        return img.clone();
    }
    let side = w.max(h);
    let mut out = RgbImage::from_pixel(side, side, fill);
    image::imageops::replace(&mut out, img, ((side - w) / 2) as i64, ((side - h) / 2) as i64);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_bytes_are_named() {
        let e = decode_image(b"definitely not an image", DecodeLimits::default()).unwrap_err();
        assert!(e.to_string().contains("unrecognised image format"), "{e}");
        let mut png = Vec::new();
        RgbImage::from_pixel(4, 4, Rgb([1, 2, 3]))
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png.truncate(png.len() - 20);
        let e = decode_image(&png, DecodeLimits::default()).unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
    }

    #[test]
    fn oversized_images_are_refused() {
        let mut png = Vec::new();
        RgbImage::from_pixel(64, 8, Rgb([1, 2, 3]))
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let limits = DecodeLimits { max_width: 32, max_height: 32, max_alloc_bytes: 1 << 20 };
        let e = decode_image(&png, limits).unwrap_err();
        assert!(e.to_string().contains("exceeds the limits"), "{e}");
    }

    #[test]
    fn square_padding_is_centred_with_mean_colour() {
        let img = RgbImage::from_pixel(4, 2, Rgb([255, 0, 0]));
        let sq = expand_to_square(&img, ClipPreprocess::llava(336).pad_colour());
        assert_eq!(sq.dimensions(), (4, 4));
        assert_eq!(sq.get_pixel(0, 0).0, [122, 116, 104]);
        assert_eq!(sq.get_pixel(0, 1).0, [255, 0, 0]);
        assert_eq!(sq.get_pixel(3, 2).0, [255, 0, 0]);
        assert_eq!(sq.get_pixel(3, 3).0, [122, 116, 104]);
    }
}
