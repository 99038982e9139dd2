//! Chat templates: vicuna_v1 for LLaVA, the model's own Jinja template (HF
//! `tokenizer_config.json` or GGUF metadata) otherwise, or none.

use anyhow::{Context, Result};

/// LLaVA-1.5's vicuna_v1 system prompt.
pub const VICUNA_SYSTEM: &str = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// How a question becomes a prompt.
#[derive(Debug, Clone)]
pub enum Template {
    /// `system USER: <image>\nQ ASSISTANT:` (LLaVA-1.5).
    VicunaV1,
    /// vicuna_v1's turns without its system prompt: `USER: <image>\nQ ASSISTANT:` (models
    /// trained from scratch on a closed vocabulary, where the system prompt is only a long
    /// constant that dilutes the one `<voco>` token among the keys the text attends to).
    UserAssistant,
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
            Template::UserAssistant => Ok(format!("USER: {q} ASSISTANT:")),
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
    /// A later turn of a conversation (after an answer and its EOS): `USER: q ASSISTANT:` for
    /// vicuna_v1, the question as is for plain prompts.
    pub fn next_turn(&self, question: &str) -> Result<String> {
        match self {
            Template::VicunaV1 | Template::UserAssistant => Ok(format!("USER: {question} ASSISTANT:")),
            Template::Plain => Ok(question.to_string()),
            Template::Jinja(_) => {
                anyhow::bail!("multi-turn training supports the vicuna_v1 and plain templates")
            }
        }
    }

    pub fn adds_special_tokens(&self) -> bool {
        matches!(self, Template::Jinja(_))
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
    fn user_assistant_is_vicuna_without_the_system_prompt() {
        let p = Template::UserAssistant.render("What is this?", true, "<s>", "</s>").unwrap();
        assert_eq!(p, "USER: <image>\nWhat is this? ASSISTANT:");
        assert_eq!(Template::UserAssistant.next_turn("And?").unwrap(), "USER: And? ASSISTANT:");
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
