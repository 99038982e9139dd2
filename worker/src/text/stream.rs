//! Incremental detokenisation for streaming answers.

use anyhow::{anyhow, Result};
use tokenizers::Tokenizer;

/// Turns a growing id sequence into text deltas without splitting multi-byte characters.
pub struct StreamDecoder {
    ids: Vec<u32>,
    emitted: usize,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self { ids: Vec::new(), emitted: 0 }
    }

    /// Adds a token and returns the new text, if any is complete.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tok.decode(&self.ids, true).map_err(|e| anyhow!("detokenisation failed: {e}"))?;
        if text.ends_with('\u{FFFD}') || text.len() <= self.emitted || !text.is_char_boundary(self.emitted) {
            return Ok(None);
        }
        let delta = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(Some(delta))
    }
}
