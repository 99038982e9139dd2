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

/// A whole conversation as chat clients send it (OpenAI's `messages`): an optional system
/// prompt, the earlier exchanges (a user message and the assistant's answer), then the question
/// to answer. The image, whichever user message carried it, lives in the compressed prefix
/// before all of the text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chat {
    pub system: Option<String>,
    pub exchanges: Vec<(String, String)>,
    pub question: String,
}

/// Who says a message of a [`Chat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Chat {
    /// A conversation from messages in order: system messages first (joined by a newline),
    /// then user and assistant messages in turn (consecutive messages of one role joined by a
    /// newline), ending with a user message.
    pub fn from_messages(messages: &[(Role, String)]) -> std::result::Result<Chat, String> {
        let mut merged: Vec<(Role, String)> = Vec::new();
        for (role, text) in messages {
            match merged.last_mut() {
                Some((r, t)) if r == role => {
                    t.push('\n');
                    t.push_str(text);
                }
                _ => merged.push((*role, text.clone())),
            }
        }
        let mut it = merged.into_iter().peekable();
        let system = match it.peek() {
            Some((Role::System, _)) => it.next().map(|(_, t)| t),
            _ => None,
        };
        let (mut exchanges, mut question) = (Vec::new(), None);
        for (i, (role, text)) in it.enumerate() {
            match (role, i % 2) {
                (Role::User, 0) => question = Some(text),
                (Role::Assistant, 1) => {
                    exchanges.push((question.take().expect("a user message precedes"), text));
                }
                (Role::System, _) => {
                    return Err(
                        "a system message may only come before the conversation's first user message".into()
                    )
                }
                (Role::Assistant, _) => return Err("an assistant message must follow a user message".into()),
                (Role::User, _) => unreachable!("consecutive user messages are merged"),
            }
        }
        match question {
            Some(q) if !q.trim().is_empty() => Ok(Chat { system, exchanges, question: q }),
            Some(_) => Err("the last user message has no text".into()),
            None => Err("the conversation must end with a user message (the question to answer)".into()),
        }
    }

    /// Characters of text in the whole conversation.
    pub fn chars(&self) -> usize {
        let n = |s: &str| s.chars().count();
        self.system.as_deref().map_or(0, n)
            + self.exchanges.iter().map(|(q, a)| n(q) + n(a)).sum::<usize>()
            + n(&self.question)
    }
}

impl Template {
    /// Renders one user turn plus the generation prompt. `image` puts `<image>\n` first.
    pub fn render(&self, question: &str, image: bool, bos: &str, eos: &str) -> Result<String> {
        self.render_with_system(question, image, None, bos, eos)
    }

    /// [`Template::render`] with the conversation's own system prompt in place of the
    /// template's (vicuna_v1's), or added before the turn where the template has none.
    pub fn render_with_system(
        &self, question: &str, image: bool, system: Option<&str>, bos: &str, eos: &str,
    ) -> Result<String> {
        let q = if image { format!("<image>\n{question}") } else { question.to_string() };
        match (self, system) {
            (Template::VicunaV1, s) => Ok(format!("{} USER: {q} ASSISTANT:", s.unwrap_or(VICUNA_SYSTEM))),
            (Template::UserAssistant, None) => Ok(format!("USER: {q} ASSISTANT:")),
            (Template::UserAssistant, Some(s)) => Ok(format!("{s} USER: {q} ASSISTANT:")),
            (Template::Plain, None) => Ok(q),
            (Template::Plain, Some(s)) => Ok(format!("{s}\n{q}")),
            (Template::Jinja(_), _) => {
                let chat = Chat { system: system.map(str::to_string), exchanges: Vec::new(), question: q };
                self.render_jinja(&chat, bos, eos)
            }
        }
    }

    /// A whole conversation through an HF Jinja chat template, with the generation prompt.
    pub fn render_jinja(&self, chat: &Chat, bos: &str, eos: &str) -> Result<String> {
        let Template::Jinja(src) = self else {
            anyhow::bail!("render_jinja needs a Jinja template");
        };
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", src).context("the chat template does not parse")?;
        let t = env.get_template("chat")?;
        let mut messages = Vec::new();
        if let Some(s) = &chat.system {
            messages.push(minijinja::context! { role => "system", content => s });
        }
        for (q, a) in &chat.exchanges {
            messages.push(minijinja::context! { role => "user", content => q });
            messages.push(minijinja::context! { role => "assistant", content => a });
        }
        messages.push(minijinja::context! { role => "user", content => chat.question });
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => bos,
            eos_token => eos,
        })
        .context("the chat template failed to render")
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

    fn msgs(m: &[(Role, &str)]) -> Vec<(Role, String)> {
        m.iter().map(|(r, t)| (*r, t.to_string())).collect()
    }

    #[test]
    fn chat_from_messages() {
        let c = Chat::from_messages(&msgs(&[
            (Role::System, "Be brief."),
            (Role::User, "What color is the star?"),
            (Role::Assistant, "red"),
            (Role::User, "And its size?"),
            (Role::User, "One word."),
        ]))
        .unwrap();
        assert_eq!(c.system.as_deref(), Some("Be brief."));
        assert_eq!(c.exchanges, vec![("What color is the star?".to_string(), "red".to_string())]);
        assert_eq!(c.question, "And its size?\nOne word.");
        assert_eq!(c.chars(), 9 + 23 + 3 + 23);
        let bad = |m: &[(Role, &str)]| Chat::from_messages(&msgs(m)).unwrap_err();
        assert!(bad(&[]).contains("must end with a user message"));
        assert!(bad(&[(Role::User, "q"), (Role::Assistant, "a")]).contains("must end with a user message"));
        assert!(bad(&[(Role::Assistant, "a"), (Role::User, "q")]).contains("must follow a user message"));
        assert!(bad(&[(Role::User, "q"), (Role::System, "s"), (Role::User, "q")]).contains("system message"));
        assert!(bad(&[(Role::User, "  ")]).contains("no text"));
    }

    #[test]
    fn system_prompt_replaces_or_prefixes() {
        let s = Some("Be brief.");
        assert_eq!(
            Template::VicunaV1.render_with_system("q", false, s, "", "").unwrap(),
            "Be brief. USER: q ASSISTANT:"
        );
        assert_eq!(
            Template::UserAssistant.render_with_system("q", false, s, "", "").unwrap(),
            "Be brief. USER: q ASSISTANT:"
        );
        assert_eq!(Template::Plain.render_with_system("q", false, s, "", "").unwrap(), "Be brief.\nq");
    }

    #[test]
    fn jinja_template_renders_a_conversation() {
        let t = Template::Jinja(
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}".into(),
        );
        let chat = Chat {
            system: Some("S".into()),
            exchanges: vec![("q1".into(), "a1".into())],
            question: "q2".into(),
        };
        assert_eq!(
            t.render_jinja(&chat, "", "").unwrap(),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(Template::Plain.render_jinja(&chat, "", "").is_err());
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
