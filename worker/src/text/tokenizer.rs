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
        let turns: Vec<(&str, Option<&str>)> = chat
            .exchanges
            .iter()
            .map(|(q, a)| (q.as_str(), Some(a.as_str())))
            .chain([(chat.question.as_str(), None)])
            .collect();
        Ok(self
            .turn_ids(chat.system.as_deref(), &turns)?
            .into_iter()
            .flat_map(|(p, a)| p.into_iter().chain(a))
            .collect())
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
