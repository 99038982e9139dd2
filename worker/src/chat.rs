//! Text side of a model: the `tokenizers` tokenizer, chat templates (vicuna_v1 for LLaVA, the
//! model's own Jinja template otherwise) and incremental detokenisation for streaming.

use anyhow::{anyhow, Context, Result};
use tokenizers::Tokenizer;

/// LLaVA-1.5's vicuna_v1 system prompt.
pub const VICUNA_SYSTEM: &str = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// How a question becomes a prompt.
#[derive(Debug, Clone)]
pub enum Template {
    /// `system USER: <image>\nQ ASSISTANT:` (LLaVA-1.5).
    VicunaV1,
    /// An HF Jinja chat template (`tokenizer_config.json` or GGUF metadata).
    Jinja(String),
    /// No template: the prompt is used as given.
    Plain,
}

impl Template {
    /// Renders one user turn plus the generation prompt. `image` puts `<image>\n` first.
    pub fn render(&self, question: &str, image: bool, bos: &str, eos: &str) -> Result<String> {
        let q = if image { format!("<image>\n{question}") } else { question.to_string() };
        match self {
            Template::VicunaV1 => Ok(format!("{VICUNA_SYSTEM} USER: {q} ASSISTANT:")),
            Template::Plain => Ok(q),
            Template::Jinja(src) => {
                let mut env = minijinja::Environment::new();
                env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
                env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
                    Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
                });
                env.add_template("chat", src).context("the chat template does not parse")?;
                let t = env.get_template("chat")?;
                let out = t
                    .render(minijinja::context! {
                        messages => vec![minijinja::context!{ role => "user", content => q }],
                        add_generation_prompt => true,
                        bos_token => bos,
                        eos_token => eos,
                    })
                    .context("the chat template failed to render")?;
                Ok(out)
            }
        }
    }

    /// Whether the rendered text already carries its special tokens (HF tokenises chat
    /// templates with `add_special_tokens=False`).
    pub fn adds_special_tokens(&self) -> bool {
        matches!(self, Template::Jinja(_))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vicuna_prompt_matches_llava() {
        let p = Template::VicunaV1.render("What is this?", true, "<s>", "</s>").unwrap();
        assert_eq!(p, format!("{VICUNA_SYSTEM} USER: <image>\nWhat is this? ASSISTANT:"));
    }

    #[test]
    fn jinja_template_renders_chatml() {
        let t = Template::Jinja(
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}".into(),
        );
        assert_eq!(
            t.render(" hi ", false, "", "").unwrap(),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        let bad = Template::Jinja("{{ raise_exception('no system role') }}".into());
        let e = bad.render("x", false, "", "").unwrap_err();
        assert!(format!("{e:#}").contains("no system role"), "{e:#}");
    }
}
