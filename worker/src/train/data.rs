//! Training data in LLaVA's conversation format: a JSON list of
//! `{"id", "image", "conversations": [{"from": "human", "value": "<image>\n…"},
//! {"from": "gpt", "value": "…"}, …]}` with images relative to an image folder. Every `gpt`
//! turn is a target: its tokens and the EOS that closes it are labelled, everything else is
//! `IGNORE` — unless `train_on_inputs`, where the questions' tokens are targets too (all
//! but the very first text token, which nothing precedes). The first question is rendered exactly as `htc ask` renders it; later turns follow
//! as `USER: q ASSISTANT:` after the EOS, as in LLaVA's vicuna_v1 conversations.
//!
//! A record that cannot be used is skipped with its reason and counted; `strict` turns the
//! first such record into an error naming it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::objective::IGNORE;
use crate::data::llava::{record_id, strip_placeholder};
use crate::text::TextTokenizer;

#[derive(Deserialize)]
struct RawTurn {
    from: String,
    value: String,
}

#[derive(Deserialize)]
struct RawRecord {
    #[serde(default)]
    id: serde_json::Value,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    conversations: Vec<RawTurn>,
}

/// One usable training example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub id: String,
    pub image: PathBuf,
    pub ids: Vec<u32>,
    pub labels: Vec<i64>,
}

/// Why a record was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    NoImage,
    MissingImage,
    UnreadableImage,
    NoImagePlaceholder,
    BadTurns,
    NoAnswer,
    TooLong,
}

impl Skip {
    pub fn describe(self) -> &'static str {
        match self {
            Skip::NoImage => "no `image` field",
            Skip::MissingImage => "image file not found",
            Skip::UnreadableImage => "image file not readable as an image",
            Skip::NoImagePlaceholder => "first human turn has no `<image>` placeholder",
            Skip::BadTurns => "turns do not alternate human/gpt starting with human",
            Skip::NoAnswer => "no gpt turn (nothing to learn)",
            Skip::TooLong => "text longer than the model's context after the image prefix",
        }
    }
}

/// The usable examples of a data file and the records skipped, by reason.
#[derive(Debug, Default)]
pub struct Dataset {
    pub examples: Vec<Example>,
    pub skipped: BTreeMap<Skip, Vec<String>>,
}

impl Dataset {
    pub fn skipped_count(&self) -> usize {
        self.skipped.values().map(Vec::len).sum()
    }

    /// One line per reason: `3 records skipped: 2 image file not found (a, b); 1 …`.
    pub fn skip_summary(&self) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .skipped
            .iter()
            .map(|(why, ids)| {
                let shown: Vec<&str> = ids.iter().take(5).map(String::as_str).collect();
                let more =
                    if ids.len() > 5 { format!(", … {} more", ids.len() - 5) } else { String::new() };
                format!("{} {} ({}{more})", ids.len(), why.describe(), shown.join(", "))
            })
            .collect();
        Some(format!("{} records skipped: {}", self.skipped_count(), parts.join("; ")))
    }
}

/// Settings for reading a data file.
pub struct DataOptions<'a> {
    pub tokenizer: &'a TextTokenizer,
    /// The most text tokens an example may have (the context minus the image prefix).
    pub max_text: usize,
    /// Fail on the first unusable record instead of skipping it.
    pub strict: bool,
    /// Label the questions' tokens too (language modelling on the whole conversation), not
    /// only the answers.
    pub train_on_inputs: bool,
}

/// Reads `data`, resolving images under `images`.
pub fn load(data: &Path, images: &Path, opts: &DataOptions<'_>) -> Result<Dataset> {
    let raw = std::fs::read(data).with_context(|| format!("cannot read training data {}", data.display()))?;
    let records: Vec<RawRecord> = serde_json::from_slice(&raw)
        .with_context(|| format!("{} is not a JSON list of LLaVA conversation records", data.display()))?;
    if records.is_empty() {
        bail!("{} has no records", data.display());
    }
    let mut set = Dataset::default();
    for (i, r) in records.iter().enumerate() {
        let id = record_id(&r.id, i);
        match example(r, &id, images, opts) {
            Ok(e) => set.examples.push(e),
            Err(why) if opts.strict => {
                bail!("record `{id}` (#{i}) in {}: {}", data.display(), why.describe())
            }
            Err(why) => set.skipped.entry(why).or_default().push(id),
        }
    }
    if set.examples.is_empty() {
        bail!("{} has no usable record. {}", data.display(), set.skip_summary().unwrap_or_default());
    }
    Ok(set)
}

fn example(r: &RawRecord, id: &str, images: &Path, opts: &DataOptions<'_>) -> Result<Example, Skip> {
    let image = images.join(r.image.as_deref().ok_or(Skip::NoImage)?);
    if !image.is_file() {
        return Err(Skip::MissingImage);
    }
    image::ImageReader::open(&image)
        .and_then(|r| r.with_guessed_format())
        .map_err(|_| Skip::UnreadableImage)?
        .into_dimensions()
        .map_err(|_| Skip::UnreadableImage)?;
    let turns = &r.conversations;
    for (k, t) in turns.iter().enumerate() {
        let want = if k % 2 == 0 { "human" } else { "gpt" };
        if t.from != want {
            return Err(Skip::BadTurns);
        }
    }
    if turns.len() < 2 {
        return Err(Skip::NoAnswer);
    }
    if !turns[0].value.contains("<image>") {
        return Err(Skip::NoImagePlaceholder);
    }
    let (ids, labels) = tokenize(turns, opts.tokenizer, opts.train_on_inputs).map_err(|_| Skip::BadTurns)?;
    if ids.len() > opts.max_text {
        return Err(Skip::TooLong);
    }
    Ok(Example { id: id.to_string(), image, ids, labels })
}

/// Token ids and labels of a conversation (pairs of human, gpt turns; a trailing question
/// without an answer is dropped), laid out by [`TextTokenizer::turn_ids`]: the answers and
/// their EOS are targets, and with `on_inputs` every question token after the first text token.
fn tokenize(turns: &[RawTurn], tok: &TextTokenizer, on_inputs: bool) -> Result<(Vec<u32>, Vec<i64>)> {
    let questions: Vec<String> =
        turns.chunks_exact(2).map(|pair| strip_placeholder(&pair[0].value)).collect();
    let pairs: Vec<(&str, Option<&str>)> = questions
        .iter()
        .zip(turns.chunks_exact(2))
        .map(|(q, pair)| (q.as_str(), Some(pair[1].value.as_str())))
        .collect();
    let (mut ids, mut labels) = (Vec::new(), Vec::new());
    for (p, a) in tok.turn_ids(None, &pairs)? {
        if on_inputs {
            let first = ids.is_empty();
            labels
                .extend(p.iter().enumerate().map(|(j, &t)| if first && j == 0 { IGNORE } else { t as i64 }));
        } else {
            labels.extend(std::iter::repeat_n(IGNORE, p.len()));
        }
        labels.extend(a.iter().map(|&t| t as i64));
        ids.extend(p);
        ids.extend(a);
    }
    Ok((ids, labels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::{vocab::word_level, Chat, Template};

    /// `(question, answer)` pairs as a record's human/gpt turns.
    fn raw_turns(turns: &[(&str, &str)]) -> Vec<RawTurn> {
        turns
            .iter()
            .flat_map(|(q, a)| {
                [
                    RawTurn { from: "human".into(), value: q.to_string() },
                    RawTurn { from: "gpt".into(), value: a.to_string() },
                ]
            })
            .collect()
    }

    /// A conversation sent to the server (the OpenAI endpoint's `messages`) is laid out exactly
    /// as training laid out the same conversation: asked the question of its last turn, the
    /// model sees the token ids it was trained to answer after.
    #[test]
    fn a_served_conversation_is_laid_out_as_training_lays_it_out() {
        let turns = [
            ("<image>\nWhat color is the star?", "red"),
            ("Is the red star small or large?", "large"),
            ("How many circles are there?", "2"),
        ];
        let words: Vec<&str> = turns.iter().flat_map(|(q, a)| [*q, *a]).collect();
        for template in [Template::UserAssistant, Template::VicunaV1] {
            let tok = TextTokenizer {
                inner: word_level(words.iter().copied()).unwrap(),
                template,
                eos_ids: vec![2],
            };
            let raw = raw_turns(&turns);
            let (trained, labels) = tokenize(&raw, &tok, false).unwrap();
            // The last answer and its EOS are what the model is to say.
            let answer = labels.iter().rev().take_while(|&&l| l != IGNORE).count();
            let chat = Chat {
                system: None,
                exchanges: turns[..2].iter().map(|(q, a)| (strip_placeholder(q), a.to_string())).collect(),
                question: turns[2].0.to_string(),
            };
            let served = tok.chat_ids(&chat).unwrap();
            assert_eq!(served, trained[..trained.len() - answer], "{:?}", tok.template);
            assert!(!served.contains(&0), "no unknown words: {served:?}");
            assert_eq!(served.iter().filter(|&&t| t == 2).count(), 2, "an EOS after each earlier answer");
        }
    }

    /// With `train_on_inputs` the questions' tokens are targets as well, except the very first
    /// text token; the ids and the answers' labels are unchanged.
    #[test]
    fn train_on_inputs_labels_the_questions_too() {
        let turns = [("<image>\nWhat color is the star?", "red"), ("How many circles are there?", "2")];
        let words: Vec<&str> = turns.iter().flat_map(|(q, a)| [*q, *a]).collect();
        let tok = TextTokenizer {
            inner: word_level(words.iter().copied()).unwrap(),
            template: Template::UserAssistant,
            eos_ids: vec![2],
        };
        let raw = raw_turns(&turns);
        let (ids, answers_only) = tokenize(&raw, &tok, false).unwrap();
        let (ids2, all) = tokenize(&raw, &tok, true).unwrap();
        assert_eq!(ids, ids2);
        assert_eq!(all[0], IGNORE, "nothing precedes the first text token");
        for (j, (&a, &b)) in answers_only.iter().zip(&all).enumerate().skip(1) {
            assert_eq!(b, ids[j] as i64, "token {j} is a target");
            if a != IGNORE {
                assert_eq!(a, b, "answer labels unchanged");
            }
        }
        let questions = answers_only.iter().filter(|&&l| l == IGNORE).count();
        assert!(questions > 10, "the answer-only labels skip the questions ({questions} tokens)");
    }
}
