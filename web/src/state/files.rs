//! The image files the page accepts, and the size large photos are scaled down to.

/// Image files the page accepts before sending: its type and size, checked in the page so
/// the user hears at once (the worker checks again).
pub fn check_image_file(mime: &str, bytes: usize, max_bytes: usize) -> Result<(), String> {
    const TYPES: [&str; 5] = ["image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp"];
    if !TYPES.contains(&mime) {
        let shown = if mime.is_empty() { "unknown type" } else { mime };
        return Err(format!("not an image the worker reads ({shown}); use PNG, JPEG, WebP, GIF or BMP"));
    }
    if bytes == 0 {
        return Err("the file is empty".into());
    }
    if bytes > max_bytes {
        return Err(format!(
            "the image is {:.1} MB, over the {:.0} MB limit",
            bytes as f64 / 1e6,
            max_bytes as f64 / 1e6
        ));
    }
    Ok(())
}

/// The size a large photo is scaled down to before upload (its longer side at most
/// `max_side`), or `None` if it is small enough.
pub fn downscaled(width: u32, height: u32, max_side: u32) -> Option<(u32, u32)> {
    let long = width.max(height);
    if long <= max_side || long == 0 {
        return None;
    }
    let s = max_side as f64 / long as f64;
    Some((((width as f64 * s).round() as u32).max(1), ((height as f64 * s).round() as u32).max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_files_are_checked_by_type_and_size_and_large_photos_scaled() {
        assert!(check_image_file("image/png", 10, 100).is_ok());
        assert!(check_image_file("text/plain", 10, 100).unwrap_err().contains("text/plain"));
        assert!(check_image_file("", 10, 100).unwrap_err().contains("unknown type"));
        assert!(check_image_file("image/jpeg", 0, 100).unwrap_err().contains("empty"));
        assert!(check_image_file("image/jpeg", 30_000_000, 12_000_000).unwrap_err().contains("30.0 MB"));
        assert_eq!(downscaled(4000, 3000, 1024), Some((1024, 768)));
        assert_eq!(downscaled(300, 5000, 1000), Some((60, 1000)));
        assert_eq!(downscaled(336, 336, 1024), None);
    }
}
