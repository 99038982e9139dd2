//! MMBench (dev): circular evaluation. Each question appears once per option rotation (TSV
//! index `i`, `i + 10⁶`, `i + 2·10⁶`, ...); it counts as right only when every rotation's
//! answer gives that row's letter. The letter is read as opencompass's `eval_mmbench.py`
//! (2023) reads it without a model: a lone option letter among the answer's words (a leading
//! "A" in a longer answer may be an article), then the letter in one of twelve wrappings
//! (`B.`, `(B)`, `:B` ...), then the one option whose text the answer contains. Where those
//! find nothing the official script asks GPT-3.5; here that answer counts as wrong, and the
//! report says how many there were.
//!
//! Predictions pass through LLaVA's xlsx conversion in the official pipeline, where a missing
//! answer, any pandas NA token (`NA`, `None`, the empty text ...) and a text Excel takes for a
//! formula (a leading `=`) become the text "nan"; the same here.
//!
//! `annotations`: the dev TSV (`mmbench_dev_20230712.tsv`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map};

use super::{pct_map, pytext, tally, Benchmark, Id, Lookup, Predictions, Report, Tally};

/// The strings pandas reads as a missing value (its default `na_values`).
const NA: [&str; 19] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
    "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

const MAIN: i64 = 1_000_000;

/// Whether pandas reads the cell `s` as missing.
pub fn is_na(s: &str) -> bool {
    NA.contains(&s)
}

/// The prediction text as the official pipeline sees it after LLaVA's xlsx conversion: NA
/// tokens, and text that Excel takes for a formula (a leading `=`), come back as "nan".
fn through_xlsx(text: &str) -> &str {
    if is_na(text) || text.starts_with('=') {
        "nan"
    } else {
        text
    }
}

struct Row {
    index: i64,
    options: Vec<(char, String)>,
    answer: String,
    category: String,
    l2: String,
}

/// The MMBench TSV as pandas' `read_csv(sep='\t')` reads it (a header line, quoted fields
/// allowed): its columns by name and its records with their file lines. The scorer and
/// `htc eval --benchmark mmbench` both read it through this.
pub struct Tsv {
    pub path: std::path::PathBuf,
    headers: csv::StringRecord,
    /// Each record with its 1-based line in the file.
    pub records: Vec<(usize, csv::StringRecord)>,
}

impl Tsv {
    pub fn read(path: &Path) -> Result<Tsv> {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(b'\t')
            .from_path(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let headers =
            reader.headers().with_context(|| format!("{}: no header line", path.display()))?.clone();
        let records = reader
            .records()
            .enumerate()
            .map(|(n, r)| r.map(|r| (n + 2, r)).with_context(|| format!("{} line {}", path.display(), n + 2)))
            .collect::<Result<_>>()?;
        Ok(Tsv { path: path.to_path_buf(), headers, records })
    }

    /// The column named `name`, if the header has it.
    pub fn col(&self, name: &str) -> Option<usize> {
        self.headers.iter().position(|h| h == name)
    }

    /// The column named `name`, or an error naming the file and the column.
    pub fn need(&self, name: &str) -> Result<usize> {
        self.col(name).with_context(|| format!("{}: no `{name}` column", self.path.display()))
    }

    /// The `index` cell of the record on `line` as an integer (pandas reads the column as one).
    pub fn index(&self, line: usize, cell: &str) -> Result<i64> {
        pytext::strip(cell)
            .parse()
            .with_context(|| format!("{} line {line}: index `{cell}` is not an integer", self.path.display()))
    }
}

fn read_tsv(path: &Path) -> Result<Vec<Row>> {
    let tsv = Tsv::read(path)?;
    let (index, answer, category, l2) =
        (tsv.need("index")?, tsv.need("answer")?, tsv.need("category")?, tsv.need("l2-category")?);
    let letters: Vec<(char, usize)> =
        ['A', 'B', 'C', 'D'].into_iter().filter_map(|c| Some((c, tsv.col(&c.to_string())?))).collect();
    let mut rows = Vec::new();
    for (line, record) in &tsv.records {
        let cell = |i: usize| record.get(i).unwrap_or("");
        let idx = tsv.index(*line, cell(index))?;
        let options = letters
            .iter()
            .filter(|(_, i)| !is_na(cell(*i)))
            .map(|(c, i)| (*c, cell(*i).to_string()))
            .collect();
        let text = |i: usize| if is_na(cell(i)) { "nan".to_string() } else { cell(i).to_string() };
        rows.push(Row { index: idx, options, answer: text(answer), category: text(category), l2: text(l2) });
    }
    if rows.is_empty() {
        bail!("{}: no questions", path.display());
    }
    Ok(rows)
}

/// The option letter an answer gives by the rule-based steps, or `None` (the official script
/// would ask GPT-3.5).
pub fn infer(text: &str, options: &[(char, String)]) -> Option<char> {
    infer_option(text).or_else(|| infer_text(text, options))
}

fn infer_option(text: &str) -> Option<char> {
    const LETTERS: [char; 5] = ['A', 'B', 'C', 'D', 'E'];
    if text.contains("Failed to obtain answer via API") {
        return None;
    }
    let words = pytext::split(text);
    let wrapped = |pre: &str, c: char, suf: &str| format!("{pre}{c}{suf}");
    let count = |pre: &str, suf: &str| {
        LETTERS.iter().filter(|&&c| words.contains(&wrapped(pre, c, suf).as_str())).count()
    };
    if count("", "") == 1 {
        // A lone "A" in an answer of more than three words may be the article: go on to the
        // wrapped forms.
        let article = words.contains(&"A") && words.len() > 3;
        if !article {
            return LETTERS.into_iter().find(|c| words.contains(&c.to_string().as_str()));
        }
    }
    const WRAPS: [(&str, &str); 12] = [
        ("", "."),
        ("", ","),
        ("", ":"),
        ("", ")"),
        ("", ")."),
        ("(", ")"),
        ("(", ")."),
        (":", ""),
        (":", ","),
        (":", "."),
        (":", ")"),
        (":", ")."),
    ];
    for (pre, suf) in WRAPS {
        if count(pre, suf) == 1 {
            return LETTERS.into_iter().find(|&c| words.contains(&wrapped(pre, c, suf).as_str()));
        }
    }
    None
}

fn infer_text(text: &str, options: &[(char, String)]) -> Option<char> {
    let lower = text.to_lowercase();
    let hits: Vec<char> =
        options.iter().filter(|(_, o)| lower.contains(&o.to_lowercase())).map(|(c, _)| *c).collect();
    match hits[..] {
        [one] => Some(one),
        _ => None,
    }
}

pub fn score(preds: &Predictions, annotations: &Path) -> Result<Report> {
    let rows = read_tsv(annotations)?;
    let mut lookup = Lookup::default();
    let mut rounds: BTreeMap<i64, Vec<(i64, bool)>> = BTreeMap::new();
    let mut unmatched = 0;
    for r in &rows {
        let text = match lookup.get(preds, &Id::Int(r.index)) {
            Some(p) => through_xlsx(&p.text),
            None => "nan",
        };
        let letter = infer(text, &r.options);
        unmatched += usize::from(letter.is_none());
        let ok = letter.is_some_and(|l| l.to_string() == r.answer);
        rounds.entry(r.index % MAIN).or_default().push((r.index, ok));
    }
    let mut hits = 0.0;
    let mut per_cat: Tally = Tally::new();
    let mut per_l2: Tally = Tally::new();
    let main: Vec<&Row> = rows.iter().filter(|r| r.index < MAIN).collect();
    if main.is_empty() {
        bail!("{}: no main questions (index below 1000000)", annotations.display());
    }
    for r in &main {
        let hit = f64::from(u8::from(rounds[&r.index].iter().all(|(_, ok)| *ok)));
        hits += hit;
        for (map, k) in [(&mut per_cat, &r.category), (&mut per_l2, &r.l2)] {
            tally(map, k, hit);
        }
    }
    let mut metrics = Map::new();
    metrics.insert("category".into(), pct_map(&per_cat));
    metrics.insert("l2-category".into(), pct_map(&per_l2));
    metrics.insert("questions".into(), json!(main.len()));
    metrics.insert("missing".into(), json!(lookup.missing.len()));
    metrics.insert("extra".into(), json!(lookup.extra(preds).len()));
    metrics.insert("unmatched".into(), json!(unmatched));
    let mut notes = lookup.notes(preds, "as the answer \"nan\"");
    if unmatched > 0 {
        notes.push(format!(
            "{unmatched} answers name no option by the rules (the official script would ask GPT-3.5); \
             they count as wrong"
        ));
    }
    Ok(Report { benchmark: Benchmark::Mmbench, score: 100.0 * hits / main.len() as f64, metrics, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Vec<(char, String)> {
        ['A', 'B', 'C', 'D'].into_iter().zip(v).map(|(c, s)| (c, s.to_string())).collect()
    }

    #[test]
    fn letters_as_the_official_rules_read_them() {
        let o = opts(&["a cat", "a parrot", "a dog", "plastic"]);
        for (t, want) in [
            ("B", Some('B')),
            ("B.", Some('B')),
            ("(B)", Some('B')),
            ("B)", Some('B')),
            ("Answer: B", Some('B')),
            ("The answer is B", Some('B')),
            ("B. text", Some('B')),
            ("a parrot", Some('B')),
            ("A parrot", Some('A')),
            ("The answer is A", None),
            ("A or B", None),
            ("a", None),
            ("E", Some('E')),
            ("A plastic is what I see", Some('D')),
        ] {
            assert_eq!(infer(t, &o), want, "{t:?}");
        }
        let numbers = opts(&["3", "13"]);
        assert_eq!(infer("13", &numbers), None, "\"3\" and \"13\" both occur in \"13\"");
    }
}
