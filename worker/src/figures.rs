//! What every PNG figure the worker draws with plotters shares (training loss curves, the
//! experiments' figures): the DejaVu Sans font compiled in, so that no system fonts are needed.

use std::sync::Once;

use plotters::style::FontStyle;

/// Registers the compiled-in font as plotters' "sans-serif" (once per process).
pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TTF shipped by the crate; failure would be a packaging bug.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}
