//! MME: yes/no answers per task; a task scores 100·acc + 100·acc+ (acc+: images whose two
//! questions are both right); the headline is the sum over the ten perception tasks
//! (0–2000), cognition is reported beside it. The rules are LLaVA's `convert_answer_to_mme.py`
//! (the question key recovered from the prompt) and MME's `calculation.py` (the label read
//! from the answer's first four characters, lowercased).
//!
//! As in the official script, each task's answer lines (repeats included: an image's two
//! questions share its id) are taken in answer-file order and paired two by two into images:
//! LLaVA's question file keeps an image's two questions adjacent. Ground-truth questions
//! without an answer are counted and named in the report (the official script scores only the
//! lines it is given); a task without any answer scores 0 (where the official script stops).
//!
//! `annotations`: `MME_Benchmark_release_version/` with its 14 task folders.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map};

use super::{pct, pytext, Benchmark, Id, Predictions, Report};

pub const PERCEPTION: [&str; 10] = [
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
];
pub const COGNITION: [&str; 4] =
    ["commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"];

const SINGLE_WORD: &str = "Answer the question using a single word or phrase.";
const YES_NO: &str = "Please answer yes or no.";

/// `calculation.py`'s label for an answer: "yes", "no" or "other".
pub fn label(text: &str) -> &'static str {
    let p = text.to_lowercase();
    if p == "yes" || p == "no" {
        return if p == "yes" { "yes" } else { "no" };
    }
    let head: String = p.chars().take(4).collect();
    if head.contains("yes") {
        "yes"
    } else if head.contains("no") {
        "no"
    } else {
        "other"
    }
}

/// One image: its ground-truth file's questions and answers, in file order.
struct Image {
    qa: Vec<(String, String)>,
}

/// A task's ground truth: image file name (`<stem>.txt`) to its questions.
fn read_task(root: &Path, task: &str) -> Result<BTreeMap<String, Image>> {
    let dir = root.join(task);
    let qa_dir = if dir.join("images").is_dir() { dir.join("questions_answers_YN") } else { dir.clone() };
    let entries = std::fs::read_dir(&qa_dir)
        .with_context(|| format!("cannot read {} (MME task `{task}`)", qa_dir.display()))?;
    let mut images = BTreeMap::new();
    for e in entries {
        let path = e?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        if !name.ends_with(".txt") {
            continue;
        }
        let raw =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut qa = Vec::new();
        for (n, line) in raw.lines().enumerate() {
            let fields: Vec<&str> = pytext::strip(line).split('\t').collect();
            let [q, a] = fields[..] else {
                bail!("{} line {}: not `question<TAB>answer`", path.display(), n + 1);
            };
            let a = a.to_lowercase();
            if a != "yes" && a != "no" {
                bail!("{} line {}: the answer is `{a}`, not yes or no", path.display(), n + 1);
            }
            qa.push((q.to_string(), a));
        }
        images.insert(name, Image { qa });
    }
    if images.is_empty() {
        bail!("{} holds no ground-truth .txt files", qa_dir.display());
    }
    Ok(images)
}

/// The ground-truth question a prompt stands for (`convert_answer_to_mme.py`).
fn question_key(prompt: &str, has: impl Fn(&str) -> bool) -> String {
    let mut p = prompt.to_string();
    if p.contains(SINGLE_WORD) {
        p = pytext::strip(&p.replace(SINGLE_WORD, "")).to_string();
    }
    if !p.contains(YES_NO) {
        p = format!("{p} {YES_NO}");
        if !has(&p) {
            p = p.replace(&format!(" {YES_NO}"), &format!("  {YES_NO}"));
        }
    }
    p
}

pub fn score(preds: &Predictions, annotations: &Path) -> Result<Report> {
    let tasks: Vec<&str> = PERCEPTION.iter().chain(COGNITION.iter()).copied().collect();
    let mut truth = HashMap::new();
    for task in &tasks {
        truth.insert(*task, read_task(annotations, task)?);
    }
    // Per task, each answer line's (is it right), in file order.
    let mut lines: HashMap<&str, Vec<bool>> = HashMap::new();
    let mut asked: HashSet<(String, String, String)> = HashSet::new();
    let mut extra = Vec::new();
    for p in &preds.lines {
        let at = || format!("{} line {}", preds.path.display(), p.line);
        let Id::Str(qid) = &p.id else {
            bail!("{}: MME's question_id is `<task>/<image file>`, not {}", at(), p.id);
        };
        let task = qid.split('/').next().unwrap_or("");
        let Some((&task, images)) = truth.get_key_value(task) else {
            extra.push(p.id.clone());
            continue;
        };
        let last = qid.rsplit('/').next().unwrap_or("");
        let file = format!("{}.txt", last.split('.').next().unwrap_or(""));
        let Some(image) = images.get(&file) else {
            bail!("{}: task `{task}` has no ground truth {file} for `{qid}`", at());
        };
        let Some(prompt) = &p.prompt else { bail!("{}: no `prompt` (MME finds the question by it)", at()) };
        let key = question_key(prompt, |k| image.qa.iter().any(|(q, _)| q == k));
        let Some((_, answer)) = image.qa.iter().find(|(q, _)| *q == key) else {
            bail!("{}: {task}/{file} has no question {key:?} (from the prompt)", at());
        };
        if p.text.contains(['\t', '\n', '\r']) {
            bail!("{}: the answer holds a tab or a line break, which MME's result files cannot carry", at());
        }
        lines.entry(task).or_default().push(label(&p.text) == answer);
        asked.insert((task.to_string(), file, key));
    }
    let mut tasks_json = Map::new();
    let (mut perception, mut cognition) = (0.0, 0.0);
    let mut missing = 0;
    let mut notes = Vec::new();
    for task in &tasks {
        for (file, image) in &truth[task] {
            missing += image
                .qa
                .iter()
                .filter(|(q, _)| !asked.contains(&(task.to_string(), file.clone(), q.clone())))
                .count();
        }
        let right = lines.get(task).map(Vec::as_slice).unwrap_or(&[]);
        if right.is_empty() {
            notes.push(format!("task `{task}` has no answers; it scores 0"));
        }
        if right.len() % 2 == 1 {
            bail!(
                "task `{task}` has {} answer lines; MME pairs an image's two questions, so it needs an even number",
                right.len()
            );
        }
        let correct = right.iter().filter(|&&r| r).count() as f64;
        let both = right.chunks(2).filter(|c| c.iter().all(|&r| r)).count() as f64;
        let (acc, acc_plus) = (pct(correct, right.len() as f64), pct(both, (right.len() / 2) as f64));
        let score = acc + acc_plus;
        if PERCEPTION.contains(task) {
            perception += score;
        } else {
            cognition += score;
        }
        tasks_json.insert(task.to_string(), json!({"acc": acc, "acc_plus": acc_plus, "score": score}));
    }
    let mut metrics = Map::new();
    metrics.insert("perception".into(), json!(perception));
    metrics.insert("cognition".into(), json!(cognition));
    metrics.insert("tasks".into(), tasks_json.into());
    metrics.insert("missing".into(), json!(missing));
    metrics.insert("extra".into(), json!(extra.len()));
    if missing > 0 {
        notes.push(format!(
            "{missing} ground-truth questions have no answer; they are left out of their task's \
             accuracy, as the official script leaves them"
        ));
    }
    if !extra.is_empty() {
        notes.push(format!(
            "{} answers name no MME task (first: {}); they are ignored",
            extra.len(),
            extra[0]
        ));
    }
    Ok(Report { benchmark: Benchmark::Mme, score: perception, metrics, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_the_first_four_characters() {
        for (t, want) in [
            ("Yes", "yes"),
            ("Yesterday", "yes"),
            ("(Yes)", "yes"),
            (" Yes", "yes"),
            ("Eyes", "yes"),
            ("Nope", "no"),
            ("None", "no"),
            ("Know", "no"),
            ("no idea", "no"),
            ("(No)", "no"),
            ("The answer is yes", "other"),
            ("I think not", "other"),
            ("Unknown", "other"),
            ("Y", "other"),
        ] {
            assert_eq!(label(t), want, "{t:?}");
        }
    }

    #[test]
    fn prompts_find_their_questions() {
        let has = |k: &str| k == "Is it red?  Please answer yes or no.";
        assert_eq!(question_key("Is it red?", has), "Is it red?  Please answer yes or no.");
        let has = |k: &str| k == "Is it red? Please answer yes or no.";
        assert_eq!(
            question_key(
                "Is it red? Please answer yes or no.\nAnswer the question using a single word or phrase.",
                has
            ),
            "Is it red? Please answer yes or no."
        );
        assert_eq!(question_key("Is it red?", has), "Is it red? Please answer yes or no.");
    }
}
