//! The `tokenizers` tokenizer with what a model needs around it: its chat template, its stop
//! ids, and LLaVA's image-marker splicing.

use anyhow::{anyhow, Result};
use tokenizers::Tokenizer;

use super::{Chat, Template};

/// A tokenizer plus what the model needs around it.
pub struct TextTokenizer {
    pub inner: Tokenizer,
    pub template: Template,
    pub eos_ids: Vec<u32>,
}

impl TextTokenizer {
    pub fn from_file(path: &std::path::Path) -> Result<Tokenizer> {
        Tokenizer::from_file(path).map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))
    }

    pub fn from_json(doc: &serde_json::Value) -> Result<Tokenizer> {
        let s = serde_json::to_string(doc)?;
        s.parse::<Tokenizer>().map_err(|e| anyhow!("cannot build the tokenizer: {e}"))
    }

    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, add_special)
            .map_err(|e| anyhow!("tokenisation failed: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// Token ids for a prompt with the image marker spliced in where `<image>` appears: when
    /// `<image>` is a token of the vocabulary it is tokenised as such (llava-hf); otherwise the
    /// text is split there and `marker` inserted, as LLaVA's `tokenizer_image_token` does.
    pub fn encode_prompt(&self, text: &str, add_special: bool, marker: Option<i64>) -> Result<Vec<i64>> {
        let image_tok = self.inner.token_to_id("<image>");
        match (marker, image_tok) {
            (Some(_), Some(_)) | (None, _) => {
                Ok(self.encode(text, add_special)?.into_iter().map(i64::from).collect())
            }
            (Some(m), None) => {
                let mut out: Vec<i64> = Vec::new();
                for (i, chunk) in text.split("<image>").enumerate() {
                    if i > 0 {
                        out.push(m);
                    }
                    let mut ids = self.encode(chunk, add_special)?;
                    // Later chunks drop the BOS their own encoding added.
                    if i > 0 && ids.first().is_some_and(|&t| self.is_bos(t)) {
                        ids.remove(0);
                    }
                    out.extend(ids.into_iter().map(i64::from));
                }
                Ok(out)
            }
        }
    }

    /// Token ids of a question asked against a compressed image: BOS and the image live in
    /// the compressed prefix, so the text is the chat template without `<image>` and is
    /// tokenised without special tokens (`templated = false` uses the text as given).
    pub fn question_ids(&self, question: &str, templated: bool) -> Result<Vec<u32>> {
        let rendered =
            if templated { self.template.render(question, false, "", "")? } else { question.to_string() };
        self.encode(&rendered, false)
    }

    /// The token ids of a conversation's turns as the model reads them (after the image):
    /// per turn, its prompt (the template's first turn, with `system` if given, then its later
    /// turns) and, when the turn has one, its answer followed by EOS. The one layout of
    /// training data and of conversations the server answers; vicuna_v1-style and plain
    /// templates only.
    pub fn turn_ids(
        &self, system: Option<&str>, turns: &[(&str, Option<&str>)],
    ) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
        let eos = *self.eos_ids.first().ok_or_else(|| anyhow!("the tokenizer has no EOS token"))?;
        let mut out = Vec::with_capacity(turns.len());
        for (k, (q, a)) in turns.iter().enumerate() {
            let prompt = if k == 0 {
                self.template.render_with_system(q, false, system, "", "")?
            } else {
                self.template.next_turn(q)?
            };
            let p = self.encode(&prompt, false)?;
            let answer = match a {
                Some(a) => {
                    let a = a.trim();
                    let pa = self.encode(&format!("{prompt} {a}"), false)?;
                    // The answer as it follows the prompt; tokenised alone if the tokenizer
                    // merges across the boundary.
                    let mut ids = match pa.strip_prefix(p.as_slice()) {
                        Some(rest) => rest.to_vec(),
                        None => self.encode(&format!(" {a}"), false)?,
                    };
                    ids.push(eos);
                    ids
                }
                None => Vec::new(),
            };
            out.push((p, answer));
        }
        Ok(out)
    }

    /// Token ids of a whole conversation asked against a compressed image (as
    /// [`TextTokenizer::question_ids`] for one question): a Jinja template renders every
    /// message; otherwise the earlier exchanges and the question are laid out by
    /// [`TextTokenizer::turn_ids`], as training lays out a conversation.
    pub fn chat_ids(&self, chat: &Chat) -> Result<Vec<u32>> {
        if let Template::Jinja(_) = self.template {
            return self.encode(&self.template.render_jinja(chat, "", "")?, false);
        }
        let turns = chat_turns(chat);
        Ok(self
            .turn_ids(chat.system.as_deref(), &turns)?
            .into_iter()
            .flat_map(|(p, a)| p.into_iter().chain(a))
            .collect())
    }

    /// Token ids of a question put to a model that reads its image inside the prompt (a
    /// plain LLaVA or LLaMA; an HTC model reads it from a compressed prefix, see
    /// [`Self::question_ids`]): the chat template's one user turn with its generation prompt,
    /// or the text as given (`templated = false`), with `<image>\n` before the question when
    /// `image` (and the text lacks one). `<image>` becomes `marker` ([`Self::encode_prompt`]);
    /// `bos` and `eos` are the model's, for Jinja templates that write them. The one prompt
    /// construction of `htc ask` and the engine.
    pub fn prompt_ids(
        &self, text: &str, image: bool, templated: bool, marker: Option<i64>, bos: Option<u32>,
        eos: Option<u32>,
    ) -> Result<Vec<i64>> {
        if !templated {
            let text = if image && !text.contains("<image>") {
                format!("<image>\n{text}")
            } else {
                text.to_string()
            };
            return self.encode_prompt(&text, true, marker);
        }
        let rendered = self.template.render(text, image, &self.token_str(bos), &self.token_str(eos))?;
        // HF tokenises a rendered Jinja template without special tokens (it writes its own).
        let add_special = !self.template.adds_special_tokens();
        self.encode_prompt(&rendered, add_special, marker)
    }

    /// Token ids of a whole conversation put to a model that reads its image inside the
    /// prompt ([`Self::prompt_ids`] for one question): a Jinja template renders every message;
    /// otherwise BOS, the first turn as [`Self::prompt_ids`] lays it out, then the answer and
    /// the later turns as [`Self::turn_ids`] does. With `marker`, `<image>\n` goes before the
    /// first user message, where LLaVA-1.5 puts the image.
    pub fn chat_prompt_ids(
        &self, chat: &Chat, marker: Option<i64>, bos: Option<u32>, eos: Option<u32>,
    ) -> Result<Vec<i64>> {
        let image = marker.is_some();
        if let Template::Jinja(_) = self.template {
            let mut chat = chat.clone();
            if image {
                let first = chat.exchanges.first_mut().map(|e| &mut e.0).unwrap_or(&mut chat.question);
                *first = format!("<image>\n{first}");
            }
            let rendered = self.template.render_jinja(&chat, &self.token_str(bos), &self.token_str(eos))?;
            return self.encode_prompt(&rendered, false, marker);
        }
        let turns = chat_turns(chat);
        let laid = self.turn_ids(chat.system.as_deref(), &turns)?;
        let first = self.template.render_with_system(turns[0].0, image, chat.system.as_deref(), "", "")?;
        let mut ids = self.encode_prompt(&first, true, marker)?;
        for (k, (prompt, answer)) in laid.into_iter().enumerate() {
            if k > 0 {
                ids.extend(prompt.into_iter().map(i64::from));
            }
            ids.extend(answer.into_iter().map(i64::from));
        }
        Ok(ids)
    }

    fn is_bos(&self, id: u32) -> bool {
        matches!(
            self.inner.id_to_token(id).as_deref(),
            Some("<s>") | Some("<|begin_of_text|>") | Some("<bos>")
        )
    }

    pub fn token_str(&self, id: Option<u32>) -> String {
        id.and_then(|i| self.inner.id_to_token(i)).unwrap_or_default()
    }
}

/// The stop ids of a model: its config's EOS ids plus the end-of-turn tokens of common chat
/// templates the tokenizer knows.
pub fn stop_ids(config_eos: &[u32], tok: &Tokenizer) -> Vec<u32> {
    let mut ids = config_eos.to_vec();
    for s in ["</s>", "<|im_end|>", "<|eot_id|>"] {
        if let Some(i) = tok.token_to_id(s) {
            if !ids.contains(&i) {
                ids.push(i);
            }
        }
    }
    ids
}

/// A conversation's turns in order: each earlier exchange with its answer, then the question.
fn chat_turns(chat: &Chat) -> Vec<(&str, Option<&str>)> {
    chat.exchanges
        .iter()
        .map(|(q, a)| (q.as_str(), Some(a.as_str())))
        .chain([(chat.question.as_str(), None)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::vocab::word_level;

    /// A conversation of one question is laid out as that question alone; with earlier
    /// exchanges the image goes with the first question and the rest follows as
    /// [`TextTokenizer::chat_ids`] lays it out.
    #[test]
    fn a_conversation_puts_the_image_in_its_first_question() {
        let marker = -200;
        let tok = TextTokenizer {
            inner: word_level(["What color is the star?", "red", "And its size?"]).unwrap(),
            template: Template::VicunaV1,
            eos_ids: vec![2],
        };
        let q = "What color is the star?";
        let one = tok.prompt_ids(q, true, true, Some(marker), None, None).unwrap();
        assert_eq!(one.iter().filter(|&&i| i == marker).count(), 1, "{one:?}");
        let user = tok.encode("USER:", false).unwrap()[0] as i64;
        let at = one.iter().position(|&i| i == marker).unwrap();
        assert_eq!(one[at - 1], user, "the image follows `USER:`: {one:?}");
        assert!(!one.contains(&0), "no unknown words: {one:?}");
        let alone = Chat { system: None, exchanges: vec![], question: q.into() };
        assert_eq!(tok.chat_prompt_ids(&alone, Some(marker), None, None).unwrap(), one);
        let chat = Chat {
            system: None,
            exchanges: vec![(q.into(), "red".into())],
            question: "And its size?".into(),
        };
        let ids = tok.chat_prompt_ids(&chat, Some(marker), None, None).unwrap();
        assert!(ids.starts_with(&one), "{ids:?}");
        let (whole, first) = (tok.chat_ids(&chat).unwrap(), tok.chat_ids(&alone).unwrap());
        let rest: Vec<i64> = whole[first.len()..].iter().map(|&i| i64::from(i)).collect();
        assert_eq!(ids[one.len()..], rest[..]);
        // Without an image the conversation has no marker.
        let text = tok.chat_prompt_ids(&chat, None, None, None).unwrap();
        assert!(!text.contains(&marker));
        assert_eq!(text.len() + 1, ids.len());
    }
}
