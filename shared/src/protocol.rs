//! The worker's WebSocket protocol (version [`PROTOCOL_VERSION`]), spoken at `/ws`.
//!
//! JSON **text frames** carry control messages, tagged by `"type"`. **Binary frames** carry
//! bulk data, each with a 5-byte header: one kind byte ([`BinaryKind`]) and the request id as
//! a little-endian `u32`, then the payload.
//!
//! A client:
//! 1. sends `hello` with the version it speaks; the server answers `ready` with its model card
//!    (mode, N_d, k, sizes, the MGVQ config so a browser can check its own encoder);
//! 2. sends `image` (an id it chooses, the byte length, optionally the MGVQ codes' shape and
//!    the mask layout it built), then the image bytes as a binary frame of kind 1 with the same
//!    request id, and, if it announced codes, a binary frame of kind 2 with `h*w*G` little-endian
//!    `u16` codes (row-major over positions, then groups);
//! 3. sends `ask` (its request id, the image id, the question, sampling, and optionally one of
//!    the card's `modes`, e.g. `none` to compare with all patches), and receives
//!    `token` frames, then `attention` (HTC models), then `done` with timings. A client that
//!    lists [`CAP_ATTENTION_F16`] in `hello` gets the attention maps as a binary frame of
//!    kind 3 instead ([`encode_attention_f16`]): f16 values, a quarter of the JSON's size or less;
//! 4. may send `cancel` with a request id at any time.
//!
//! Any problem is answered with `error` (a stable `code`, a human message, and the request id
//! when there is one); the connection stays open.
//!
//! An example exchange (`>` client, `<` server):
//!
//! ```text
//! > {"type":"hello","version":1,"capabilities":["mgvq-codes"]}
//! < {"type":"ready","version":1,"model":{"name":"htc-demo-random","mode":"htc",...}}
//! > {"type":"image","request_id":1,"image_id":"cat","byte_len":48213}
//! > [binary: 01 | 01 00 00 00 | 48213 bytes of PNG]
//! > {"type":"ask","request_id":2,"image_id":"cat","question":"What is this?","max_new_tokens":32}
//! < {"type":"token","request_id":2,"id":450,"text":"A"}
//! < {"type":"token","request_id":2,"id":6635,"text":" cat"}
//! < {"type":"attention","request_id":2,"n_discrete":4,"n_visual":576,"layers":[[0.02,...],...]}
//! < {"type":"done","request_id":2,"cached":false,"tokens":2,"timings":{"preprocess_ms":12.0,...}}
//! ```

use serde::{Deserialize, Serialize};

use crate::mask::MaskLayout;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Bytes before the payload of a binary frame.
pub const BINARY_HEADER_LEN: usize = 5;

/// What a binary frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BinaryKind {
    /// Encoded image bytes (PNG, JPEG, WebP, GIF, BMP).
    ImageBytes = 1,
    /// MGVQ codes, little-endian `u16`, `[h*w][G]`.
    Codes = 2,
    /// Server → client only: `<voco>`'s attention maps as f16 (see [`encode_attention_f16`]).
    AttentionF16 = 3,
}

/// The `hello` capability that asks for attention maps as [`BinaryKind::AttentionF16`] frames.
pub const CAP_ATTENTION_F16: &str = "attention-f16";

/// The shape of client-computed MGVQ codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodesShape {
    /// Latent positions, `h * w`.
    pub positions: usize,
    pub groups: usize,
}

/// Client → server control messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    Hello {
        version: u32,
        #[serde(default)]
        capabilities: Vec<String>,
    },
    Image {
        request_id: u32,
        image_id: String,
        byte_len: usize,
        #[serde(default)]
        codes: Option<CodesShape>,
        #[serde(default)]
        mask_layout: Option<MaskLayout>,
    },
    Ask {
        request_id: u32,
        image_id: String,
        /// The question, for models with a tokenizer.
        #[serde(default)]
        question: Option<String>,
        /// Raw question token ids, for models without one.
        #[serde(default)]
        prompt_ids: Option<Vec<u32>>,
        #[serde(default = "default_max_new_tokens")]
        max_new_tokens: usize,
        #[serde(default)]
        temperature: f32,
        #[serde(default = "default_top_p")]
        top_p: f32,
        #[serde(default)]
        seed: u64,
        /// Answer in this mode instead of the model's own (one of the card's `modes`): `none`
        /// (all patches) beside the compressed mode, for comparison.
        #[serde(default)]
        mode: Option<crate::config::HtcMode>,
    },
    Cancel {
        request_id: u32,
    },
}

fn default_max_new_tokens() -> usize {
    128
}
fn default_top_p() -> f32 {
    1.0
}

/// Wall-clock figures of one answer, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Timings {
    pub preprocess_ms: f64,
    pub compress_ms: f64,
    pub first_token_ms: f64,
    pub total_ms: f64,
    pub tokens_per_s: f64,
}

/// What the server says about its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub name: String,
    pub architecture: String,
    pub random_init: bool,
    pub backend: String,
    pub mode: Option<crate::config::HtcMode>,
    pub n_discrete: usize,
    pub n_voco: usize,
    pub image_size: usize,
    pub image_tokens: usize,
    pub hidden_size: usize,
    pub layers: usize,
    pub vocab_size: usize,
    pub has_tokenizer: bool,
    /// The MGVQ config, so a browser can check its own encoder against it.
    pub mgvq: Option<crate::mgvq::Config>,
    pub codebook_size: Option<usize>,
    /// The modes `ask` may name, the model's own first (e.g. `htc`, then `none`: all patches,
    /// the upper bound the compressed mode is compared with).
    #[serde(default)]
    pub modes: Vec<crate::config::HtcMode>,
    /// What the model knows, in one plain paragraph for the people who ask it (the model
    /// directory's `about.json`; a randomly initialised model says its answers are noise).
    #[serde(default)]
    pub about: Option<String>,
    /// Images to try the model with, served at their `path`, each with suggested questions.
    #[serde(default)]
    pub samples: Vec<SampleImage>,
}

/// A sample image the worker serves for its model, with questions to ask about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleImage {
    /// Its index among the card's samples, from 0.
    pub id: usize,
    /// The PNG's path on the worker: `/api/samples/<id>.png`.
    pub path: String,
    /// Questions the model was made to answer about this image.
    pub questions: Vec<String>,
}

impl SampleImage {
    /// Sample `id` with these suggested questions.
    pub fn new(id: usize, questions: Vec<String>) -> Self {
        Self { id, path: format!("/api/samples/{id}.png"), questions }
    }
}

/// Where a page gets the model's MGVQ encoder to run it itself: `GET /api/encoder` answers
/// this, and the weights are one safetensors file (the checkpoint's `mgvq.*` tensors, f32)
/// whose path carries its SHA-256, so a browser may keep it in its cache for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderManifest {
    pub config: crate::mgvq::Config,
    /// The weights' path on the worker: `/api/encoder/<sha256>.safetensors`.
    pub path: String,
    /// Lowercase hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub bytes: u64,
    /// The key prefix of the encoder's tensors in that file (`mgvq`).
    pub prefix: String,
}

/// Lowercase hex SHA-256: the digest an [`EncoderManifest`] names its weights by, computed by
/// the worker that serves them and checked by the page that fetches them.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl EncoderManifest {
    /// The manifest of a weights file with this digest.
    pub fn new(config: crate::mgvq::Config, sha256: &str, bytes: u64) -> Self {
        Self {
            config,
            path: format!("/api/encoder/{sha256}.safetensors"),
            sha256: sha256.to_string(),
            bytes,
            prefix: "mgvq".into(),
        }
    }
}

/// Server → client messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // a message is built, serialised and dropped; `Ready` is sent once
pub enum ServerMessage {
    Ready {
        version: u32,
        model: ModelCard,
    },
    Token {
        request_id: u32,
        id: u32,
        /// The text this token completes (empty when the model has no tokenizer or the token
        /// ends inside a multi-byte character).
        text: String,
    },
    Attention {
        request_id: u32,
        n_discrete: usize,
        n_visual: usize,
        /// Per layer, head-averaged attention of the first `<voco>` over `[v_d; V]`.
        layers: Vec<Vec<f32>>,
    },
    Done {
        request_id: u32,
        /// The image came from the compressed-image cache (no ViT, MGVQ or compression ran).
        cached: bool,
        tokens: usize,
        /// What the answer attended to: the compressed image's kept positions (BOS and the
        /// `<voco>` tokens) plus the question's (or conversation's) text tokens.
        #[serde(default)]
        prompt_tokens: usize,
        cancelled: bool,
        timings: Timings,
    },
    Error {
        request_id: Option<u32>,
        code: ErrorCode,
        message: String,
    },
}

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    UnknownMessage,
    WrongVersion,
    NotReady,
    BadFrame,
    FrameTooLarge,
    UnknownImage,
    BadImage,
    BadCodes,
    CodesMismatch,
    BadRequest,
    Busy,
    Internal,
}

/// A decoded binary frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryFrame<'a> {
    pub kind: BinaryKind,
    pub request_id: u32,
    pub payload: &'a [u8],
}

/// Why a frame, a message or a question was refused: a stable code and a message naming the
/// problem. The decoders here and the worker's engine return it; each front end maps it (an
/// `error` frame on the WebSocket, an HTTP status on the OpenAI endpoint).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// The `error` frame for this refusal.
    pub fn to_message(&self, request_id: Option<u32>) -> ServerMessage {
        ServerMessage::Error { request_id, code: self.code, message: self.message.clone() }
    }
}

/// Builds a binary frame.
pub fn encode_binary(kind: BinaryKind, request_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(BINARY_HEADER_LEN + payload.len());
    v.push(kind as u8);
    v.extend_from_slice(&request_id.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// Decodes a binary frame's header.
pub fn decode_binary(frame: &[u8]) -> Result<BinaryFrame<'_>, ProtocolError> {
    if frame.len() < BINARY_HEADER_LEN {
        return Err(ProtocolError::new(
            ErrorCode::BadFrame,
            format!("binary frame of {} bytes is shorter than its 5-byte header", frame.len()),
        ));
    }
    let kind = match frame[0] {
        1 => BinaryKind::ImageBytes,
        2 => BinaryKind::Codes,
        3 => BinaryKind::AttentionF16,
        k => {
            return Err(ProtocolError::new(
                ErrorCode::BadFrame,
                format!("unknown binary frame kind {k} (expected 1 image bytes, 2 codes or 3 attention)"),
            ))
        }
    };
    let request_id = u32::from_le_bytes([frame[1], frame[2], frame[3], frame[4]]);
    Ok(BinaryFrame { kind, request_id, payload: &frame[BINARY_HEADER_LEN..] })
}

/// The payload of a [`BinaryKind::AttentionF16`] frame: `n_discrete`, `n_visual` and the
/// number of layers as little-endian `u16`, then each layer's `n_discrete + n_visual`
/// weights as little-endian IEEE f16 (relative error at most 2^-11; weights below 2^-14 keep
/// an absolute error below 2^-25). Refuses maps whose rows do not have that length or whose
/// sizes do not fit a `u16`.
pub fn encode_attention_f16(
    n_discrete: usize, n_visual: usize, layers: &[Vec<f32>],
) -> Result<Vec<u8>, ProtocolError> {
    let row = n_discrete + n_visual;
    let fits = |n: usize| u16::try_from(n).ok();
    let (Some(d), Some(v), Some(l)) = (fits(n_discrete), fits(n_visual), fits(layers.len())) else {
        return Err(ProtocolError::new(ErrorCode::Internal, "attention maps too large for an f16 frame"));
    };
    if fits(row).is_none() || layers.iter().any(|r| r.len() != row) {
        return Err(ProtocolError::new(ErrorCode::Internal, format!("attention rows are not {row} long")));
    }
    let mut out = Vec::with_capacity(6 + layers.len() * row * 2);
    for n in [d, v, l] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    for x in layers.iter().flatten() {
        out.extend_from_slice(&half::f16::from_f32(*x).to_le_bytes());
    }
    Ok(out)
}

/// Reads a [`BinaryKind::AttentionF16`] payload: `(n_discrete, n_visual, layers)`.
pub fn decode_attention_f16(payload: &[u8]) -> Result<(usize, usize, Vec<Vec<f32>>), ProtocolError> {
    let bad = |m: String| ProtocolError::new(ErrorCode::BadFrame, m);
    if payload.len() < 6 {
        return Err(bad(format!(
            "attention frame of {} bytes is shorter than its 6-byte header",
            payload.len()
        )));
    }
    let u = |i: usize| u16::from_le_bytes([payload[i], payload[i + 1]]) as usize;
    let (d, v, l) = (u(0), u(2), u(4));
    let row = d + v;
    let want = 6 + l * row * 2;
    if payload.len() != want || row == 0 {
        return Err(bad(format!(
            "attention frame has {} bytes; {l} layers of {d}+{v} f16 weights need {want}",
            payload.len()
        )));
    }
    let values: Vec<f32> =
        payload[6..].chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
    Ok((d, v, values.chunks(row).map(<[f32]>::to_vec).collect()))
}

/// Parses a text frame into a client message, naming the problem when it is not one.
pub fn decode_client(text: &str) -> Result<ClientMessage, ProtocolError> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ProtocolError::new(ErrorCode::BadJson, format!("malformed JSON: {e}")))?;
    let ty = v
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
        .ok_or_else(|| ProtocolError::new(ErrorCode::UnknownMessage, "message has no string `type`"))?;
    if !matches!(ty.as_str(), "hello" | "image" | "ask" | "cancel") {
        return Err(ProtocolError::new(
            ErrorCode::UnknownMessage,
            format!("unknown message type `{ty}` (expected hello, image, ask or cancel)"),
        ));
    }
    serde_json::from_value(v)
        .map_err(|e| ProtocolError::new(ErrorCode::BadRequest, format!("invalid `{ty}` message: {e}")))
}

/// Decodes `[h*w][G]` little-endian `u16` codes, checking shape and range.
pub fn decode_codes(
    payload: &[u8], shape: CodesShape, codes_per_group: usize,
) -> Result<Vec<Vec<u16>>, ProtocolError> {
    let want = shape.positions * shape.groups * 2;
    if payload.len() != want {
        return Err(ProtocolError::new(
            ErrorCode::BadCodes,
            format!(
                "codes frame has {} bytes; {}x{} u16 codes need {want}",
                payload.len(),
                shape.positions,
                shape.groups
            ),
        ));
    }
    let flat: Vec<u16> = payload.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
    if let Some((i, c)) = flat.iter().enumerate().find(|(_, &c)| c as usize >= codes_per_group) {
        return Err(ProtocolError::new(ErrorCode::BadCodes, format!("code {c} at position {} group {} is out of range (codebook has {codes_per_group} codes per group)", i / shape.groups.max(1), i % shape.groups.max(1))));
    }
    Ok(flat.chunks(shape.groups.max(1)).map(<[u16]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn binary_frames_round_trip() {
        let f = encode_binary(BinaryKind::Codes, 0xDEADBEEF, &[1, 2, 3]);
        let d = decode_binary(&f).unwrap();
        assert_eq!((d.kind, d.request_id, d.payload), (BinaryKind::Codes, 0xDEADBEEF, &[1u8, 2, 3][..]));
        assert_eq!(decode_binary(&[1, 0]).unwrap_err().code, ErrorCode::BadFrame);
        assert!(decode_binary(&[9, 0, 0, 0, 0]).unwrap_err().message.contains("unknown binary frame kind 9"));
    }

    #[test]
    fn client_messages_parse_and_bad_ones_are_named() {
        let m = decode_client(r#"{"type":"ask","request_id":3,"image_id":"a","question":"hi"}"#).unwrap();
        assert!(matches!(m, ClientMessage::Ask { request_id: 3, max_new_tokens: 128, .. }));
        assert_eq!(decode_client("{nope").unwrap_err().code, ErrorCode::BadJson);
        let e = decode_client(r#"{"type":"dance"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownMessage);
        assert!(e.message.contains("`dance`"));
        let e = decode_client(r#"{"type":"ask","request_id":"x"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    /// A card from a server without `about` and `samples` reads as saying nothing extra, and a
    /// card with them round-trips.
    #[test]
    fn cards_with_and_without_about_and_samples_interoperate() {
        let old = serde_json::json!({
            "name": "m", "architecture": "htc", "random_init": false, "backend": "candle", "mode": "htc",
            "n_discrete": 4, "n_voco": 1, "image_size": 168, "image_tokens": 9, "hidden_size": 192,
            "layers": 4, "vocab_size": 86, "has_tokenizer": true, "mgvq": null, "codebook_size": null,
        });
        let card: ModelCard = serde_json::from_value(old.clone()).unwrap();
        assert_eq!((card.about.as_deref(), card.samples.len()), (None, 0));
        let mut card = card;
        card.about = Some("Shapes.".into());
        card.samples = vec![SampleImage::new(3, vec!["What color is the star?".into()])];
        assert_eq!(card.samples[0].path, "/api/samples/3.png");
        let v = serde_json::to_value(&card).unwrap();
        assert_eq!(v["samples"][0]["questions"][0], "What color is the star?");
        assert_eq!(serde_json::from_value::<ModelCard>(v).unwrap(), card);
    }

    #[test]
    fn codes_are_checked_for_shape_and_range() {
        let shape = CodesShape { positions: 2, groups: 2 };
        let ok: Vec<u8> = [1u16, 2, 3, 4].iter().flat_map(|c| c.to_le_bytes()).collect();
        assert_eq!(decode_codes(&ok, shape, 8).unwrap(), vec![vec![1, 2], vec![3, 4]]);
        assert_eq!(decode_codes(&ok[..6], shape, 8).unwrap_err().code, ErrorCode::BadCodes);
        let e = decode_codes(&ok, shape, 4).unwrap_err();
        assert!(e.message.contains("code 4 at position 1 group 1 is out of range"), "{}", e.message);
    }

    proptest! {
        // The decoders are total: arbitrary input gives a value or an error, never a panic.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), text in ".{0,80}", groups in 0usize..4, pos in 0usize..4) {
            let _ = decode_binary(&bytes);
            let _ = decode_client(&text);
            let _ = decode_client(&String::from_utf8_lossy(&bytes));
            let _ = decode_codes(&bytes, CodesShape { positions: pos, groups }, 3);
        }

        #[test]
        fn json_shaped_garbage_is_refused_cleanly(ty in "[a-z]{0,8}", id in any::<i64>(), extra in "[a-z]{1,6}") {
            let s = format!(r#"{{"type":"{ty}","request_id":{id},"{extra}":1}}"#);
            match decode_client(&s) {
                Ok(ClientMessage::Cancel { request_id }) => prop_assert_eq!(request_id as i64, id),
                Ok(_) => {}
                Err(e) => prop_assert!(!e.message.is_empty()),
            }
        }
    }

    #[test]
    fn attention_f16_frames_round_trip_within_f16_precision_and_refuse_bad_lengths() {
        let layers = vec![vec![0.5f32, 0.25, 1e-6, 0.123_456], vec![0.0, 1.0, 0.333_333, 0.01]];
        let payload = encode_attention_f16(1, 3, &layers).unwrap();
        assert_eq!(payload.len(), 6 + 2 * 4 * 2);
        let (d, v, back) = decode_attention_f16(&payload).unwrap();
        assert_eq!((d, v, back.len()), (1, 3, 2));
        for (a, b) in back.iter().flatten().zip(layers.iter().flatten()) {
            assert!((a - b).abs() <= b.abs() * 2f32.powi(-11) + 2f32.powi(-25), "{a} vs {b}");
        }
        assert!(encode_attention_f16(1, 2, &layers).is_err(), "rows of the wrong length");
        let e = decode_attention_f16(&payload[..9]).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadFrame);
        assert!(e.message.contains("need 22"), "{}", e.message);
        assert!(decode_attention_f16(&[1, 0]).unwrap_err().message.contains("6-byte header"));
        let frame = encode_binary(BinaryKind::AttentionF16, 9, &payload);
        assert_eq!(decode_binary(&frame).unwrap().kind, BinaryKind::AttentionF16);
    }
}
