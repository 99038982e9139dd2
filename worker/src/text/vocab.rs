//! Word-level tokenizers for the closed vocabularies of data sets the project makes
//! (ShapesVQA): every whitespace-separated word of the conversations and of the vicuna_v1
//! chat template gets an id, after `<unk>` (0), `<s>` (1) and `</s>` (2). The tokenizer is
//! described in the `tokenizers` JSON format, parsed and saved by that crate.

use std::collections::BTreeSet;

use anyhow::{anyhow, Result};
use serde_json::json;
use tokenizers::Tokenizer;

use super::VICUNA_SYSTEM;

/// The special tokens, in id order.
pub const SPECIALS: [&str; 3] = ["<unk>", "<s>", "</s>"];

/// A word-level tokenizer (split on whitespace) over the words of `texts` and of the chat
/// template; other words become `<unk>`.
pub fn word_level<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Tokenizer> {
    let mut words: BTreeSet<String> = BTreeSet::new();
    for t in texts.into_iter().chain([VICUNA_SYSTEM, "USER: ASSISTANT:"]) {
        words.extend(t.split_whitespace().filter(|w| !SPECIALS.contains(w)).map(str::to_string));
    }
    let vocab: serde_json::Map<String, serde_json::Value> =
        SPECIALS.iter().map(|s| s.to_string()).chain(words).enumerate().map(|(i, w)| (w, json!(i))).collect();
    let special = |id: usize, s: &str| {
        json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let doc = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(1, "<s>"), special(2, "</s>")],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    doc.to_string().parse::<Tokenizer>().map_err(|e| anyhow!("cannot build the word-level tokenizer: {e}"))
}
