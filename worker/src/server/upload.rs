//! Uploaded images, for both front ends: size limits, decoding off the async runtime (with the
//! decompression-bomb limits), and the content hash that keys the compressed-image cache.

use std::sync::Arc;

use htc_shared::preprocess::{decode_image, DecodeLimits};
use htc_shared::protocol::{ErrorCode, ProtocolError};

use super::ServeArgs;
use crate::runtime::engine::{Engine, UploadedImage};

/// Decodes `bytes` into an [`UploadedImage`] (with already checked client `codes`), refusing
/// images over the server's byte limit (`frame_too_large`) and side limits (`bad_image`).
pub async fn decode_upload(
    engine: &Engine, args: &ServeArgs, bytes: Vec<u8>, codes: Option<Vec<Vec<u16>>>,
) -> Result<UploadedImage, ProtocolError> {
    if bytes.is_empty() {
        return Err(ProtocolError::new(ErrorCode::BadImage, "empty image"));
    }
    if bytes.len() > args.max_image_bytes {
        return Err(ProtocolError::new(
            ErrorCode::FrameTooLarge,
            format!("image of {} bytes exceeds the limit of {} bytes", bytes.len(), args.max_image_bytes),
        ));
    }
    let side = args.max_image_side;
    let limits = DecodeLimits {
        max_width: side,
        max_height: side,
        max_alloc_bytes: (side as u64) * (side as u64) * 4,
    };
    let key = engine.image_key(&bytes, codes.as_deref());
    match tokio::task::spawn_blocking(move || decode_image(&bytes, limits)).await {
        Ok(Ok(img)) => Ok(UploadedImage { image: img.into(), codes: codes.map(Arc::new), key }),
        Ok(Err(e)) => Err(ProtocolError::new(ErrorCode::BadImage, e.to_string())),
        Err(e) => Err(ProtocolError::new(ErrorCode::Internal, format!("image decoding failed: {e}"))),
    }
}
