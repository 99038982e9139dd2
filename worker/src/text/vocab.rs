//! Word-level tokenizers for the closed vocabularies of data sets the project makes
//! (ShapesVQA): every word of the conversations and of the vicuna_v1 chat template gets an id,
//! after `<unk>` (0), `<s>` (1) and `</s>` (2). Words are split at whitespace, punctuation is
//! its own token, and a plural whose singular is also a word is split into the singular and
//! `s`, so "star?", "stars" and "star" all carry the token `star` (a model learns one meaning
//! for it, not three). The tokenizer is described in the `tokenizers` JSON format, parsed and
//! saved by that crate.

use std::collections::BTreeSet;

use anyhow::{anyhow, Result};
use serde_json::json;
use std::str::FromStr;

use tokenizers::Tokenizer;

use super::VICUNA_SYSTEM;

/// The special tokens, in id order.
pub const SPECIALS: [&str; 3] = ["<unk>", "<s>", "</s>"];

/// The pre-tokenizer: whitespace, then punctuation, then the plurals of `singulars`.
fn pre_tokenizer(singulars: &[String]) -> serde_json::Value {
    let mut steps =
        vec![json!({"type": "WhitespaceSplit"}), json!({"type": "Punctuation", "behavior": "Isolated"})];
    if !singulars.is_empty() {
        // One lookbehind per singular (onig needs each alternative's length fixed).
        let pattern = format!("(?<={})s$", singulars.join("|"));
        steps.push(
            json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false}),
        );
    }
    json!({"type": "Sequence", "pretokenizers": steps})
}

/// A word-level tokenizer over the words of `texts` and of the chat template (see the module
/// comment for how text is split); other words become `<unk>`.
pub fn word_level<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Tokenizer> {
    let split = Tokenizer::from_str(
        &json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": pre_tokenizer(&[]), "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"<unk>": 0}, "unk_token": "<unk>"},
        })
        .to_string(),
    )
    .map_err(|e| anyhow!("cannot build the word splitter: {e}"))?;
    let mut words: BTreeSet<String> = BTreeSet::new();
    for t in texts.into_iter().chain([VICUNA_SYSTEM, "USER: ASSISTANT:"]) {
        for w in t.split_whitespace().filter(|w| !SPECIALS.contains(w)) {
            let pieces = split.encode(w, false).map_err(|e| anyhow!("cannot split `{w}`: {e}"))?;
            let offsets = pieces.get_offsets();
            words.extend(offsets.iter().map(|&(a, b)| w[a..b].to_string()));
        }
    }
    // Plurals: a word that is another word (of 3 letters or more) plus "s".
    let singulars: Vec<String> = words
        .iter()
        .filter_map(|w| w.strip_suffix('s'))
        .filter(|s| s.len() >= 3 && words.contains(*s) && s.chars().all(|c| c.is_ascii_alphabetic()))
        .map(str::to_string)
        .collect();
    for s in &singulars {
        words.remove(&format!("{s}s"));
    }
    if !singulars.is_empty() {
        words.insert("s".into());
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
        "normalizer": null, "pre_tokenizer": pre_tokenizer(&singulars), "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    doc.to_string().parse::<Tokenizer>().map_err(|e| anyhow!("cannot build the word-level tokenizer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punctuation_and_plurals_share_the_word_token() {
        let tok = word_level([
            "How many stars are there?",
            "What color is the star?",
            "large red solid star ; small blue outline circle",
            "yes no 0 1 Is there a blue circle?",
        ])
        .unwrap();
        let ids = |t: &str| tok.encode(t, false).unwrap().get_ids().to_vec();
        let star = tok.token_to_id("star").unwrap();
        let s = tok.token_to_id("s").unwrap();
        let q = tok.token_to_id("?").unwrap();
        assert_eq!(ids("stars?"), vec![star, s, q]);
        assert_eq!(ids("star?"), vec![star, q]);
        assert!(tok.token_to_id("stars").is_none() && tok.token_to_id("star?").is_none());
        // A word ending in s whose stem is not a word stays whole; only the data's plurals
        // are split ("circles" does not occur in these texts: it is one unknown word).
        assert_eq!(ids("yes"), vec![tok.token_to_id("yes").unwrap()]);
        assert_eq!(ids("is"), vec![tok.token_to_id("is").unwrap()]);
        assert_eq!(ids("circles"), vec![0]);
        // Nothing in the data is unknown.
        for t in [
            "How many stars are there?",
            "Is there a blue circle?",
            "large red solid star ; small blue outline circle",
        ] {
            assert!(!ids(t).contains(&0), "{t}: {:?}", ids(t));
        }
        // Answers decode to themselves.
        for a in ["star", "yes", "0", "large red solid star ; small blue outline circle"] {
            assert_eq!(tok.decode(&ids(a), true).unwrap(), a);
        }
    }
}
