//! Python's `str` operations where Rust's differ: the official scorers are Python, and a
//! score equal to theirs needs their whitespace (`str.split()`, `str.strip()`) and their
//! `\d` (any Unicode decimal digit). Written by hand because no crate offers Python's
//! whitespace set; each function says which Python call it stands for.

use std::sync::LazyLock;

use regex::Regex;

/// Python's `str.isspace()` for one character: Rust's `char::is_whitespace` plus the four
/// ASCII separators U+001C..U+001F, which Python counts as whitespace.
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `s.split()`.
pub fn split(s: &str) -> Vec<&str> {
    s.split(is_space).filter(|w| !w.is_empty()).collect()
}

/// `s.strip()`.
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

static DIGIT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\d$").expect("a valid pattern"));

/// Python's `\d` in a `str` pattern: a Unicode decimal digit (category Nd), as the regex
/// crate's `\d` is.
pub fn is_digit(c: char) -> bool {
    let mut buf = [0u8; 4];
    DIGIT.is_match(c.encode_utf8(&mut buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_and_digits() {
        assert_eq!(split(" a\u{1f}b\t\nc\u{a0}d  "), vec!["a", "b", "c", "d"]);
        assert_eq!(strip("\u{1c} x y \u{2003}"), "x y");
        assert!(is_digit('7') && is_digit('\u{663}'), "ASCII and Arabic-Indic three");
        assert!(!is_digit('x') && !is_digit('\u{b2}'), "superscript two is not Nd");
    }
}
