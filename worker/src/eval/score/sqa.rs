//! ScienceQA: the answer's option letter (LLaVA's `eval_science_qa.py`: the bare letter,
//! `X. ` at the start, or exactly one `The answer is X.`) against the problem's answer, over
//! the test split; the headline is the accuracy on image questions, those whose prediction's
//! `prompt` holds `<image>` (so a missing prediction is not an image question, as in the
//! official scorer).
//!
//! `annotations`: a folder with `problems.json` and `pid_splits.json`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::LazyLock;

use anyhow::{bail, Result};
use regex::Regex;
use serde::Deserialize;
use serde_json::{json, Map};

use super::{pct, read_json, Benchmark, Id, Lookup, Predictions, Report};

#[derive(Deserialize)]
struct Problem {
    choices: Vec<serde_json::Value>,
    answer: usize,
}

const OPTIONS: [char; 5] = ['A', 'B', 'C', 'D', 'E'];

static ANSWER_IS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"The answer is ([A-Z]).").expect("a valid pattern"));

/// The letter an answer gives, or `None` ("FAILED").
pub fn letter(text: &str) -> Option<char> {
    let mut chars = text.chars();
    let first = chars.next();
    if let Some(c) = first.filter(|c| OPTIONS.contains(c) && text.len() == c.len_utf8()) {
        return Some(c);
    }
    let rest: String = text.chars().skip(1).take(2).collect();
    if text.chars().count() >= 3 && first.is_some_and(|c| OPTIONS.contains(&c)) && rest == ". " {
        return first;
    }
    let hits: Vec<char> =
        ANSWER_IS.captures_iter(text).filter_map(|c| c.get(1)?.as_str().chars().next()).collect();
    match hits[..] {
        [one] => Some(one),
        _ => None,
    }
}

pub fn score(preds: &Predictions, annotations: &Path) -> Result<Report> {
    let problems_path = annotations.join("problems.json");
    let splits_path = annotations.join("pid_splits.json");
    let problems: HashMap<String, Problem> = read_json(&problems_path)?;
    let splits: HashMap<String, Vec<String>> = read_json(&splits_path)?;
    let Some(test) = splits.get("test") else { bail!("{}: no `test` split", splits_path.display()) };
    let mut lookup = Lookup::default();
    let (mut correct, mut img_correct, mut img_total) = (0usize, 0usize, 0usize);
    for pid in test {
        let Some(problem) = problems.get(pid) else {
            bail!("{}: test problem `{pid}` is not in {}", splits_path.display(), problems_path.display());
        };
        let (text, image) = match lookup.get(preds, &Id::Str(pid.clone())) {
            Some(p) => (p.text.as_str(), p.prompt.as_deref().is_some_and(|q| q.contains("<image>"))),
            None => ("FAILED", false),
        };
        let index = letter(text)
            .and_then(|l| OPTIONS.iter().position(|&o| o == l))
            .filter(|&i| i < problem.choices.len());
        let ok = index == Some(problem.answer);
        correct += usize::from(ok);
        img_total += usize::from(image);
        img_correct += usize::from(ok && image);
    }
    if test.is_empty() {
        bail!("{}: the test split is empty", splits_path.display());
    }
    if img_total == 0 {
        bail!(
            "no answered test problem is an image question: IMG-Accuracy is the accuracy over \
             predictions whose `prompt` holds `<image>` (write image questions' prompts as \
             \"<image>\\n\" + question, as `htc eval --benchmark sqa` does)"
        );
    }
    let mut metrics = Map::new();
    metrics.insert("accuracy".into(), json!(pct(correct as f64, test.len() as f64)));
    metrics.insert("img_accuracy".into(), json!(pct(img_correct as f64, img_total as f64)));
    metrics.insert("total".into(), json!(test.len()));
    metrics.insert("correct".into(), json!(correct));
    metrics.insert("img_total".into(), json!(img_total));
    metrics.insert("img_correct".into(), json!(img_correct));
    metrics.insert("missing".into(), json!(lookup.missing.len()));
    let mut notes = lookup.notes(preds, "wrong and not an image question");
    notes.retain(|n| !n.contains("do not have"));
    let extra =
        lookup.extra(preds).iter().filter(|id| !matches!(id, Id::Str(s) if problems.contains_key(s))).count();
    if extra > 0 {
        notes.push(format!(
            "{extra} predictions are for problems problems.json does not have; they are ignored"
        ));
    }
    metrics.insert("extra".into(), json!(extra));
    Ok(Report { benchmark: Benchmark::Sqa, score: pct(img_correct as f64, img_total as f64), metrics, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_as_the_official_rules_read_them() {
        for (t, want) in [
            ("B", Some('B')),
            ("B. text", Some('B')),
            ("The answer is B.", Some('B')),
            ("The answer is B, because", Some('B')),
            ("E", Some('E')),
            ("The answer is B", None),
            ("B.", None),
            ("(B)", None),
            ("b", None),
            (" B", None),
            ("B) text", None),
            ("The answer is A. The answer is B.", None),
            ("The answer is B\n", None),
            ("F", None),
            ("The answer is F.", Some('F')),
        ] {
            assert_eq!(letter(t), want, "{t:?}");
        }
    }
}
