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

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A model directory; `None` gives the randomly initialised HTC demo model.
    pub model: Option<PathBuf>,
    /// Jobs waiting for the model; more are answered `busy`.
    pub queue: usize,
    /// Compressed images kept.
    pub cache_capacity: usize,
    /// Use client MGVQ codes without recomputing them.
    pub trust_client_codes: bool,
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
