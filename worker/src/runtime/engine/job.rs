//! What the engine is given: its setup, and the questions it answers (an image when the model
//! takes one, the question, sampling, a cancel flag and where replies go).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use image::RgbImage;
use tokio::sync::mpsc::UnboundedSender;

use htc_shared::protocol::{ErrorCode, ProtocolError, ServerMessage};

use crate::runtime::image::PixelValues;
use crate::runtime::sampling::Sampling;

/// Which client MGVQ codes are checked. Codes are part of a compressed image's cache key, so
/// unchecked codes shape only the answers of whoever sent them; checking costs the worker the
/// encoder it would otherwise skip.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum VerifyCodes {
    /// Use every client's codes as sent.
    #[default]
    Off,
    /// Check this fraction of the images (chosen by the image's cache key, so an image is
    /// always checked or never).
    Sample(f64),
    /// Check every image's codes.
    All,
}

impl VerifyCodes {
    /// Relative tolerance of a near-tie: a sent code whose squared distance to the latent is
    /// within 0.1% of the nearest code's is accepted (two devices' arithmetic round such
    /// positions either way).
    pub const NEAR_TIE: f32 = 1e-3;

    /// Whether the image with cache key `key` is checked.
    pub fn checks(self, key: &[u8; 32]) -> bool {
        match self {
            VerifyCodes::Off => false,
            VerifyCodes::All => true,
            VerifyCodes::Sample(p) => {
                let x = u64::from_le_bytes(key[..8].try_into().expect("8 bytes"));
                (x as f64) < p * (u64::MAX as f64)
            }
        }
    }
}

impl std::str::FromStr for VerifyCodes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(VerifyCodes::Off),
            "all" => Ok(VerifyCodes::All),
            _ => {
                let p = s
                    .strip_prefix("sample:")
                    .ok_or_else(|| format!("`{s}`: expected off, all or sample:P"))?;
                let p: f64 = p.parse().map_err(|_| format!("`{s}`: P must be a number in [0, 1]"))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!("`{s}`: P must be in [0, 1]"));
                }
                Ok(VerifyCodes::Sample(p))
            }
        }
    }
}

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A model directory; `None` gives the randomly initialised HTC demo model.
    pub model: Option<PathBuf>,
    /// Jobs waiting for the model; more are answered `busy`.
    pub queue: usize,
    /// Compressed images kept.
    pub cache_capacity: usize,
    /// Which client MGVQ codes the worker checks against its own encoder before using them
    /// (unchecked codes are used as sent; see [`VerifyCodes`]).
    pub verify_client_codes: VerifyCodes,
    /// Answers decoded together, one token each per batched step.
    pub max_batch: usize,
    /// New images compressed together in one batch, at most.
    pub max_compress_batch: usize,
    /// Answer in this mode instead of the checkpoint's own (an ablation; see `Htc::with_mode`).
    pub mode: Option<htc_shared::config::HtcMode>,
    /// Refuse a model that takes no images (a plain LLaMA): for front ends that only ask
    /// about images (the server, `htc eval`).
    pub require_images: bool,
}

/// An image as a front end hands it over.
#[derive(Clone)]
pub enum ImageData {
    /// A decoded image, preprocessed as the model's image processor does.
    Decoded(Arc<RgbImage>),
    /// CLIP pixel values preprocessed elsewhere (`htc ask --pixel-values`), checked against the
    /// model's image size when admitted; refused by modes that run MGVQ on the image itself.
    PixelValues(Arc<PixelValues>),
}

impl From<RgbImage> for ImageData {
    fn from(img: RgbImage) -> Self {
        ImageData::Decoded(Arc::new(img))
    }
}

/// An uploaded image, decoded and hashed.
#[derive(Clone)]
pub struct UploadedImage {
    pub image: ImageData,
    /// Client MGVQ codes `[h*w][G]`, already checked for shape and range.
    pub codes: Option<Arc<Vec<Vec<u16>>>>,
    /// SHA-256 of (model id, image bytes).
    pub key: [u8; 32],
}

/// The question of an `ask`.
#[derive(Debug, Clone)]
pub enum Question {
    /// Text laid out by the model's chat template.
    Text(String),
    /// Text tokenised exactly as given, without the chat template (`htc ask --no-template`).
    Plain(String),
    /// Token ids as given. For a model that reads its image from a compressed prefix (HTC) they
    /// are the text after it; for a plain LLaVA they are the whole prompt, the image token id
    /// (llava-hf: the config's `image_token_index`; liuhaotian: -200) marking the image.
    Ids(Vec<i64>),
    /// A whole conversation (the OpenAI endpoint's `messages`), laid out by the model's chat
    /// template.
    Chat(crate::text::Chat),
}

impl Question {
    /// One of `text` or `ids`, non-empty and at most `max_len` characters (or ids): the one
    /// admission check of a question, for every front end. Vocabulary ranges are checked by
    /// the model when the engine admits it.
    pub fn new(text: Option<String>, ids: Option<Vec<u32>>, max_len: usize) -> Result<Self, ProtocolError> {
        let bad = |m: String| ProtocolError::new(ErrorCode::BadRequest, m);
        match (text, ids) {
            (Some(q), None) => {
                let n = q.chars().count();
                if n == 0 || n > max_len {
                    return Err(bad(format!("question of {n} characters is outside 1..={max_len}")));
                }
                Ok(Question::Text(q))
            }
            (None, Some(ids)) if !ids.is_empty() && ids.len() <= max_len => {
                Ok(Question::Ids(ids.into_iter().map(i64::from).collect()))
            }
            _ => Err(bad("give exactly one of `question` or `prompt_ids` (non-empty)".into())),
        }
    }

    /// A conversation of at most `max_len` characters in all.
    pub fn chat(chat: crate::text::Chat, max_len: usize) -> Result<Self, ProtocolError> {
        let n = chat.chars();
        if n > max_len {
            return Err(ProtocolError::new(
                ErrorCode::BadRequest,
                format!("the conversation has {n} characters of text, more than the {max_len} allowed"),
            ));
        }
        Ok(Question::Chat(chat))
    }
}

/// One question to answer.
pub struct Job {
    pub request_id: u32,
    /// The image asked about; `None` for a text-only question (a plain LLaMA or LLaVA).
    pub image: Option<UploadedImage>,
    pub question: Question,
    pub sampling: Sampling,
    /// Another of the model's modes (the card's `modes`) to answer in; `None`: its own.
    pub mode: Option<htc_shared::config::HtcMode>,
    pub cancel: Arc<AtomicBool>,
    pub reply: UnboundedSender<ServerMessage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_settings_parse_and_sample_their_fraction_by_key() {
        assert_eq!("off".parse::<VerifyCodes>(), Ok(VerifyCodes::Off));
        assert_eq!("all".parse::<VerifyCodes>(), Ok(VerifyCodes::All));
        assert_eq!("sample:0.25".parse::<VerifyCodes>(), Ok(VerifyCodes::Sample(0.25)));
        for bad in ["some", "sample:", "sample:x", "sample:1.5", "sample:-0.1"] {
            assert!(bad.parse::<VerifyCodes>().is_err(), "{bad}");
        }
        use sha2::Digest;
        let keys: Vec<[u8; 32]> =
            (0..20_000u32).map(|i| sha2::Sha256::digest(i.to_le_bytes()).into()).collect();
        for p in [0.0, 0.1, 0.5, 1.0] {
            let n = keys.iter().filter(|k| VerifyCodes::Sample(p).checks(k)).count();
            let rate = n as f64 / keys.len() as f64;
            // Binomial standard deviation at 20,000 keys is at most 0.0036: four of them.
            assert!((rate - p).abs() <= 0.015, "sample:{p} checked {rate}");
        }
        assert!(keys.iter().all(|k| VerifyCodes::All.checks(k) && !VerifyCodes::Off.checks(k)));
        assert_eq!(
            VerifyCodes::Sample(0.5).checks(&keys[7]),
            VerifyCodes::Sample(0.5).checks(&keys[7]),
            "stable per image"
        );
    }
}
