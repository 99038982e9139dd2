//! LLaVA's conversation format, the parts training and evaluation both read: record ids and
//! the `<image>` placeholder of the first question.

/// A record's id as text (`#N` by position when it has none).
pub fn record_id(v: &serde_json::Value, index: usize) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => format!("#{index}"),
        other => other.to_string(),
    }
}

/// The question with the `<image>` placeholder (and the newline next to it) removed.
pub fn strip_placeholder(q: &str) -> String {
    q.replace("<image>\n", "").replace("\n<image>", "").replace("<image>", "").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_placeholders() {
        assert_eq!(record_id(&serde_json::json!("a"), 3), "a");
        assert_eq!(record_id(&serde_json::json!(7), 3), "7");
        assert_eq!(record_id(&serde_json::Value::Null, 3), "#3");
        assert_eq!(strip_placeholder("<image>\nWhat?"), "What?");
        assert_eq!(strip_placeholder("What?\n<image>"), "What?");
        assert_eq!(strip_placeholder(" What? "), "What?");
    }
}
