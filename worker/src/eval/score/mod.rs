//! Benchmark scoring (`htc score`): LLaVA answer files scored against each benchmark's own
//! released annotations, by the rules of its official scorer (docs/evaluation.md lists them
//! and the quirks kept). One file per benchmark, each a `score(&Predictions, &Path)`; this
//! module owns the answer-file reader, the report and its table. Nothing here runs a model.

pub mod gqa;
pub mod mmbench;
pub mod mme;
pub mod pope;
mod pytext;
pub mod seed;
pub mod shapes;
pub mod sqa;
pub mod vqav2;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

/// A benchmark `htc score` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Benchmark {
    /// VQAv2 (VQA accuracy on val-format annotations).
    Vqav2,
    /// GQA testdev-balanced (exact match).
    Gqa,
    /// POPE (F1 averaged over adversarial, popular, random).
    Pope,
    /// MME (perception score, 0–2000).
    Mme,
    /// ScienceQA test (accuracy on image questions).
    Sqa,
    /// SEED-Bench (accuracy over all questions).
    Seed,
    /// MMBench dev (circular accuracy).
    Mmbench,
    /// ShapesVQA, the project's own data (exact match; per family and kind).
    Shapes,
}

impl Benchmark {
    pub const ALL: [Benchmark; 8] = [
        Benchmark::Vqav2,
        Benchmark::Gqa,
        Benchmark::Pope,
        Benchmark::Mme,
        Benchmark::Sqa,
        Benchmark::Seed,
        Benchmark::Mmbench,
        Benchmark::Shapes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Vqav2 => "vqav2",
            Benchmark::Gqa => "gqa",
            Benchmark::Pope => "pope",
            Benchmark::Mme => "mme",
            Benchmark::Sqa => "sqa",
            Benchmark::Seed => "seed",
            Benchmark::Mmbench => "mmbench",
            Benchmark::Shapes => "shapes",
        }
    }

    pub fn from_name(s: &str) -> Option<Benchmark> {
        Benchmark::ALL.into_iter().find(|b| b.name() == s)
    }

    /// What the headline score is, in its units.
    pub fn headline(self) -> &'static str {
        match self {
            Benchmark::Vqav2 => "VQA accuracy, %",
            Benchmark::Gqa => "accuracy (balanced), %",
            Benchmark::Pope => "F1 averaged over categories, %",
            Benchmark::Mme => "perception score (0-2000)",
            Benchmark::Sqa => "IMG-Accuracy, %",
            Benchmark::Seed => "accuracy, %",
            Benchmark::Mmbench => "circular accuracy, %",
            Benchmark::Shapes => "exact match, %",
        }
    }
}

impl fmt::Display for Benchmark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A benchmark's result: the unrounded headline score, the per-category metrics, and notes
/// on what the scorer met on the way (missing or unmatched predictions).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub benchmark: Benchmark,
    pub score: f64,
    pub metrics: Map<String, Value>,
    pub notes: Vec<String>,
}

impl Report {
    /// `{"benchmark", "score", "metrics"}`, what `htc score --json` prints.
    pub fn to_json(&self) -> Value {
        json!({"benchmark": self.benchmark.name(), "score": self.score, "metrics": self.metrics})
    }

    /// A readable table: the headline, then every metric, nested ones indented.
    pub fn table(&self) -> String {
        let mut s =
            format!("{:<34} {:>10.4}   ({})\n", self.benchmark.name(), self.score, self.benchmark.headline());
        fn walk(s: &mut String, m: &Map<String, Value>, depth: usize) {
            for (k, v) in m {
                let name = format!("{}{}", "  ".repeat(depth + 1), k);
                match v {
                    Value::Object(inner) => {
                        s.push_str(&format!("{name}\n"));
                        walk(s, inner, depth + 1);
                    }
                    Value::Number(n) if n.is_f64() => {
                        s.push_str(&format!("{name:<34} {:>10.4}\n", n.as_f64().unwrap_or(f64::NAN)))
                    }
                    other => s.push_str(&format!("{name:<34} {:>10}\n", other.to_string())),
                }
            }
        }
        walk(&mut s, &self.metrics, 0);
        s
    }
}

/// Scores `predictions` (a LLaVA answer file) against `annotations` (the benchmark's own
/// files: see each benchmark's module for what the path names).
pub fn score(benchmark: Benchmark, predictions: &Path, annotations: &Path) -> Result<Report> {
    let preds = Predictions::read(predictions)?;
    if !annotations.exists() {
        bail!("{}: no such file or directory (the {benchmark} annotations)", annotations.display());
    }
    let mut report = match benchmark {
        Benchmark::Vqav2 => vqav2::score(&preds, annotations),
        Benchmark::Gqa => gqa::score(&preds, annotations),
        Benchmark::Pope => pope::score(&preds, annotations),
        Benchmark::Mme => mme::score(&preds, annotations),
        Benchmark::Sqa => sqa::score(&preds, annotations),
        Benchmark::Seed => seed::score(&preds, annotations),
        Benchmark::Mmbench => mmbench::score(&preds, annotations),
        Benchmark::Shapes => shapes::score(&preds, annotations),
    }
    .with_context(|| format!("scoring {} as {benchmark}", predictions.display()))?;
    if preds.repeated > 0 {
        report.notes.push(format!(
            "{} question ids appear more than once in {}; the last line of each is scored",
            preds.repeated,
            predictions.display()
        ));
    }
    Ok(report)
}

/// A question id as the answer file stores it. The official scorers look predictions up in
/// Python dicts, where `101669` and `"101669"` are different keys; so are they here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Id {
    Int(i64),
    Str(String),
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Int(i) => write!(f, "{i}"),
            Id::Str(s) => write!(f, "\"{s}\""),
        }
    }
}

impl Id {
    /// The id a JSON `question_id` holds (an integer or a string).
    pub fn from_value(v: &Value) -> Option<Id> {
        match v {
            Value::String(s) => Some(Id::Str(s.clone())),
            Value::Number(n) => n.as_i64().map(Id::Int),
            _ => None,
        }
    }

    /// The same id with the other JSON type, for the hint when a lookup misses by type.
    fn retyped(&self) -> Option<Id> {
        match self {
            Id::Int(i) => Some(Id::Str(i.to_string())),
            Id::Str(s) => s.parse().ok().filter(|i: &i64| i.to_string() == *s).map(Id::Int),
        }
    }
}

/// One line of a LLaVA answer file.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub id: Id,
    pub text: String,
    pub prompt: Option<String>,
    /// 1-based line in the file (of the line that is scored).
    pub line: usize,
}

/// A LLaVA answer file: `{"question_id", "prompt", "text", ...}` per line. A repeated id keeps
/// its first position and its last line's content (as a Python dict built from the lines).
#[derive(Debug, Clone, Default)]
pub struct Predictions {
    pub path: PathBuf,
    /// One per id.
    pub list: Vec<Prediction>,
    /// Every line, repeats included, in file order (POPE and MME read the file this way:
    /// MME's id names an image, shared by its two questions).
    pub lines: Vec<Prediction>,
    index: HashMap<Id, usize>,
    /// Lines whose id an earlier line already had.
    pub repeated: usize,
}

impl Predictions {
    pub fn read(path: &Path) -> Result<Predictions> {
        let raw = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Predictions::parse(path, &raw)
    }

    pub fn parse(path: &Path, raw: &str) -> Result<Predictions> {
        let mut p = Predictions { path: path.to_path_buf(), ..Default::default() };
        for (n, line) in raw.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("{} line {}", path.display(), n + 1);
            let v: Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
            let Value::Object(o) = v else { bail!("{}: not a JSON object", at()) };
            let id = match o.get("question_id") {
                Some(Value::String(s)) => Id::Str(s.clone()),
                Some(Value::Number(x)) if x.as_i64().is_some() => Id::Int(x.as_i64().unwrap_or_default()),
                Some(other) => bail!("{}: `question_id` must be an integer or a string, not {other}", at()),
                None => bail!("{}: no `question_id`", at()),
            };
            let text = match o.get("text") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => bail!("{}: `text` must be a string, not {other}", at()),
                None => bail!("{}: no `text` (the model's answer)", at()),
            };
            let prompt = match o.get("prompt") {
                Some(Value::String(s)) => Some(s.clone()),
                None | Some(Value::Null) => None,
                Some(other) => bail!("{}: `prompt` must be a string, not {other}", at()),
            };
            let pred = Prediction { id: id.clone(), text, prompt, line: n + 1 };
            p.lines.push(pred.clone());
            match p.index.get(&id) {
                Some(&i) => {
                    p.list[i] = pred;
                    p.repeated += 1;
                }
                None => {
                    p.index.insert(id, p.list.len());
                    p.list.push(pred);
                }
            }
        }
        if p.list.is_empty() {
            bail!("{} has no predictions", path.display());
        }
        Ok(p)
    }

    pub fn get(&self, id: &Id) -> Option<&Prediction> {
        self.index.get(id).map(|&i| &self.list[i])
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// Counts what a scorer met while looking predictions up: annotated questions without one
/// (and how many of those exist under the other JSON type), and predictions for questions
/// the annotations do not have.
#[derive(Debug, Default)]
pub(crate) struct Lookup {
    pub missing: Vec<Id>,
    pub retyped: usize,
    pub used: std::collections::HashSet<Id>,
}

impl Lookup {
    pub fn get<'a>(&mut self, preds: &'a Predictions, id: &Id) -> Option<&'a Prediction> {
        let hit = preds.get(id);
        if hit.is_some() {
            self.used.insert(id.clone());
        } else {
            if id.retyped().is_some_and(|r| preds.get(&r).is_some()) {
                self.retyped += 1;
            }
            self.missing.push(id.clone());
        }
        hit
    }

    /// Predictions never looked up.
    pub fn extra(&self, preds: &Predictions) -> Vec<Id> {
        preds.list.iter().filter(|p| !self.used.contains(&p.id)).map(|p| p.id.clone()).collect()
    }

    /// Notes on the missing and extra predictions, saying how each is counted.
    pub fn notes(&self, preds: &Predictions, missing_counted_as: &str) -> Vec<String> {
        let mut notes = Vec::new();
        let list = |ids: &[Id]| {
            let shown: Vec<String> = ids.iter().take(5).map(|i| i.to_string()).collect();
            format!("{}{}", shown.join(", "), if ids.len() > 5 { ", ..." } else { "" })
        };
        if !self.missing.is_empty() {
            notes.push(format!(
                "{} annotated questions have no prediction in {} ({}); each is counted {missing_counted_as}",
                self.missing.len(),
                preds.path.display(),
                list(&self.missing)
            ));
        }
        if self.retyped > 0 {
            notes.push(format!(
                "{} of them have a prediction whose question_id has the other JSON type (a string \
                 for an integer or the reverse), which the official scorer does not match either",
                self.retyped
            ));
        }
        let extra = self.extra(preds);
        if !extra.is_empty() {
            notes.push(format!(
                "{} predictions are for questions the annotations do not have ({}); they are ignored",
                extra.len(),
                list(&extra)
            ));
        }
        notes
    }
}

/// Per category, the sum of the questions' results (1 right, 0 wrong, or VQA's partial
/// credit) and their count.
pub(crate) type Tally = std::collections::BTreeMap<String, (f64, f64)>;

/// Adds one question's `result` to `key`'s sum and count.
pub(crate) fn tally(map: &mut Tally, key: &str, result: f64) {
    let e = map.entry(key.to_string()).or_default();
    e.0 += result;
    e.1 += 1.0;
}

/// `100 * correct / total` (0 for an empty set).
pub(crate) fn pct(correct: f64, total: f64) -> f64 {
    if total == 0.0 {
        0.0
    } else {
        100.0 * correct / total
    }
}

/// A JSON object of percentages from (correct, total) pairs in key order.
pub(crate) fn pct_map<'a>(m: impl IntoIterator<Item = (&'a String, &'a (f64, f64))>) -> Value {
    Value::Object(m.into_iter().map(|(k, (c, t))| (k.clone(), json!(pct(*c, *t)))).collect())
}

/// Reads and parses a JSON annotation file, naming the file and the field path on error.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let raw = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let de = &mut serde_json::Deserializer::from_str(&raw);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        anyhow::anyhow!("{}: at `{at}`: {}", path.display(), e.inner())
    })
}

/// `dir/name` when `path` is a directory holding it, else `path` itself.
pub(crate) fn file_in(path: &Path, name: &str) -> PathBuf {
    if path.is_dir() {
        path.join(name)
    } else {
        path.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_file_lines_keep_types_and_the_last_repeat() {
        let raw = "{\"question_id\": 5, \"text\": \"a\", \"prompt\": \"p\"}\n\n\
                   {\"question_id\": \"5\", \"text\": \"b\"}\n{\"question_id\": 5, \"text\": \"c\"}\n";
        let p = Predictions::parse(Path::new("a.jsonl"), raw).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p.repeated, 1);
        let five = p.get(&Id::Int(5)).unwrap();
        assert_eq!((five.text.as_str(), five.line, five.prompt.as_deref()), ("c", 4, None));
        assert_eq!(p.list[0].id, Id::Int(5), "a repeat keeps its first position");
        assert_eq!(p.get(&Id::Str("5".into())).unwrap().text, "b");
    }

    #[test]
    fn bad_answer_lines_are_named() {
        let cases = [
            ("{\"question_id\": 1, \"text\": \"a\"}\nnot json\n", "a.jsonl line 2: not JSON"),
            ("[1]\n", "a.jsonl line 1: not a JSON object"),
            ("{\"text\": \"a\"}\n", "a.jsonl line 1: no `question_id`"),
            ("{\"question_id\": 1.5, \"text\": \"a\"}\n", "`question_id` must be an integer or a string"),
            ("{\"question_id\": 1}\n", "a.jsonl line 1: no `text`"),
            ("{\"question_id\": 1, \"text\": 3}\n", "`text` must be a string"),
            ("{\"question_id\": 1, \"text\": \"a\", \"prompt\": 2}\n", "`prompt` must be a string"),
            ("\n\n", "a.jsonl has no predictions"),
        ];
        for (raw, want) in cases {
            let e = format!("{:#}", Predictions::parse(Path::new("a.jsonl"), raw).unwrap_err());
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
    }

    #[test]
    fn lookups_count_missing_retyped_and_extra() {
        let raw = "{\"question_id\": \"1\", \"text\": \"a\"}\n{\"question_id\": 2, \"text\": \"b\"}\n\
                   {\"question_id\": 9, \"text\": \"c\"}\n";
        let p = Predictions::parse(Path::new("a.jsonl"), raw).unwrap();
        let mut l = Lookup::default();
        assert!(l.get(&p, &Id::Int(1)).is_none());
        assert_eq!(l.get(&p, &Id::Int(2)).unwrap().text, "b");
        assert!(l.get(&p, &Id::Int(3)).is_none());
        assert_eq!(l.missing, vec![Id::Int(1), Id::Int(3)]);
        assert_eq!(l.retyped, 1);
        assert_eq!(l.extra(&p), vec![Id::Str("1".into()), Id::Int(9)]);
        let notes = l.notes(&p, "wrong").join("\n");
        assert!(notes.contains("2 annotated questions have no prediction"), "{notes}");
        assert!(
            notes.contains("1 of them have a prediction whose question_id has the other JSON type"),
            "{notes}"
        );
        assert!(
            notes.contains("2 predictions are for questions the annotations do not have (\"1\", 9)"),
            "{notes}"
        );
    }
}
