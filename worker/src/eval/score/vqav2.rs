//! VQAv2: VQA accuracy against val-format annotations. The model's text goes through the
//! answer processor LLaVA applies before submitting (`EvalAIAnswerProcessor`), then through
//! the VQA evaluation (GT-Vision-Lab `vqaEval.py`, 2021), which normalises the answer a
//! second time only when the ten human answers are not all the same. A question without a
//! prediction is answered "" (as LLaVA's submission converter fills it).
//!
//! `annotations`: the `v2_mscoco_val2014_annotations.json` file, or the folder holding it
//! (its one `*annotations*.json`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::{json, Map};

use super::{pct_map, pytext, read_json, tally, Benchmark, Id, Lookup, Predictions, Report, Tally};

#[derive(Deserialize)]
struct File {
    annotations: Vec<Annotation>,
}

#[derive(Deserialize)]
struct Annotation {
    question_id: i64,
    question_type: String,
    answer_type: String,
    answers: Vec<Answer>,
}

#[derive(Deserialize)]
struct Answer {
    answer: String,
}

/// The annotation file `path` names (a file, or the one `*annotations*.json` in a folder).
fn annotation_file(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains("annotations") && n.ends_with(".json"))
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("{} holds no `*annotations*.json` (VQAv2's val annotations)", path.display()),
        _ => bail!("{} holds several `*annotations*.json` files; name one", path.display()),
    }
}

pub fn score(preds: &Predictions, annotations: &Path) -> Result<Report> {
    let path = annotation_file(annotations)?;
    let file: File = read_json(&path)?;
    if file.annotations.is_empty() {
        bail!("{}: no annotations", path.display());
    }
    let mut lookup = Lookup::default();
    let mut sum = 0.0;
    let mut per_answer: Tally = Tally::new();
    let mut per_question: Tally = Tally::new();
    for (i, a) in file.annotations.iter().enumerate() {
        if a.answers.is_empty() {
            bail!("{}: at `annotations[{i}]` (question {}): no answers", path.display(), a.question_id);
        }
        let text = lookup.get(preds, &Id::Int(a.question_id)).map(|p| p.text.as_str()).unwrap_or("");
        let gts: Vec<&str> = a.answers.iter().map(|g| g.answer.as_str()).collect();
        let acc = accuracy(&submission_answer(text), &gts);
        sum += acc;
        for (map, key) in [(&mut per_answer, &a.answer_type), (&mut per_question, &a.question_type)] {
            tally(map, key, acc);
        }
    }
    let n = file.annotations.len();
    let mut metrics = Map::new();
    metrics.insert("answer_type".into(), pct_map(&per_answer));
    metrics.insert("question_type".into(), pct_map(&per_question));
    metrics.insert("questions".into(), json!(n));
    metrics.insert("missing".into(), json!(lookup.missing.len()));
    metrics.insert("extra".into(), json!(lookup.extra(preds).len()));
    Ok(Report {
        benchmark: Benchmark::Vqav2,
        score: 100.0 * sum / n as f64,
        metrics,
        notes: lookup.notes(preds, "as the answer \"\""),
    })
}

/// One question's VQA accuracy: over the ten human answers, the mean of
/// `min(1, matches among the other nine / 3)`.
pub fn accuracy(answer: &str, gts: &[&str]) -> f64 {
    let clean = |s: &str| pytext::strip(&s.replace(['\n', '\t'], " ")).to_string();
    let mut res = clean(answer);
    let mut gts: Vec<String> = gts.iter().map(|g| clean(g)).collect();
    if gts.iter().any(|g| *g != gts[0]) {
        gts = gts.iter().map(|g| digits_articles(&punctuation(g))).collect();
        res = digits_articles(&punctuation(&res));
    }
    let n = gts.len();
    let total: f64 = (0..n)
        .map(|i| {
            let matches = (0..n).filter(|&j| j != i && gts[j] == res).count();
            (matches as f64 / 3.0).min(1.0)
        })
        .sum();
    total / n as f64
}

/// LLaVA's submission processing of a model answer (`EvalAIAnswerProcessor.__call__`).
pub fn submission_answer(text: &str) -> String {
    let t = text.to_lowercase().replace([',', '?'], "").replace("'s", " 's");
    let t = pytext::strip(&t).replace(['\n', '\t'], " ");
    digits_articles(&punctuation(pytext::strip(&t)))
}

const PUNCT: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',', '?', '!',
];

/// `processPunctuation`: each mark is deleted where it touches a space somewhere in the text
/// (or the text has a digit-comma-digit), else replaced by a space; then the first 32 periods
/// not followed by a digit are deleted.
pub fn punctuation(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let comma_number =
        chars.windows(3).any(|w| pytext::is_digit(w[0]) && w[1] == ',' && pytext::is_digit(w[2]));
    let mut out = s.to_string();
    for p in PUNCT {
        let touches = s.contains(&format!("{p} ")) || s.contains(&format!(" {p}"));
        out = out.replace(p, if touches || comma_number { "" } else { " " });
    }
    // `re.sub(periodStrip, "", out, re.UNICODE)`: the flag lands in `count`, which is 32.
    let chars: Vec<char> = out.chars().collect();
    let mut removed = 0;
    let mut kept = String::with_capacity(out.len());
    for (i, &c) in chars.iter().enumerate() {
        let before_digit = chars.get(i + 1).is_some_and(|&n| pytext::is_digit(n));
        if c == '.' && !before_digit && removed < 32 {
            removed += 1;
            continue;
        }
        kept.push(c);
    }
    kept
}

/// `processDigitArticle`: lowercase words, number words to digits, articles dropped,
/// contractions restored.
pub fn digits_articles(s: &str) -> String {
    let lower = s.to_lowercase();
    let words: Vec<&str> = pytext::split(&lower)
        .into_iter()
        .map(|w| NUMBERS.iter().find(|(k, _)| *k == w).map_or(w, |(_, v)| *v))
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(|w| CONTRACTIONS.iter().find(|(k, _)| *k == w).map_or(w, |(_, v)| *v))
        .collect();
    words.join(" ")
}

const NUMBERS: [(&str, &str); 12] = [
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

/// The VQA evaluation's contraction table, as data (keys with capitals, such as `Im`, never
/// match a lowercased word; `somebody'd` maps to `somebodyd` in the original too).
const CONTRACTIONS: [(&str, &str); 120] = [
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_normalisations_as_the_official_code_has_them() {
        for (text, want) in [
            ("Two.", "2"),
            ("The dog", "dog"),
            ("1,000", "1000"),
            ("Yes, it is.", "yes it is"),
            ("man's", "man 's"),
            ("T-shirt", "t shirt"),
            ("Yes\nThe", "yes"),
            ("None", "0"),
            ("twelve", "twelve"),
            ("dont", "don't"),
            ("3.5", "3.5"),
            ("end.", "end"),
        ] {
            assert_eq!(submission_answer(text), want, "{text:?}");
        }
        assert_eq!(punctuation("a - b"), "a  b", "a mark beside a space is deleted");
        assert_eq!(punctuation("1,000-2"), "10002", "digit-comma-digit deletes every mark");
        assert_eq!(punctuation(&".".repeat(40)), ".".repeat(8), "only 32 periods go");
    }

    #[test]
    fn accuracy_counts_the_other_nine_and_normalises_only_differing_answers() {
        let same = ["t-shirt"; 10];
        assert_eq!(accuracy("t shirt", &same), 0.0, "identical answers are compared raw");
        assert_eq!(accuracy("t-shirt", &same), 1.0);
        let mut mixed = ["t-shirt"; 10];
        mixed[9] = "shirt";
        assert_eq!(accuracy("t shirt", &mixed), 1.0, "differing answers are normalised: t-shirt -> t shirt");
        let two = ["2", "2", "two", "3", "3", "3", "3", "3", "3", "3"];
        // "two" normalises to "2": three "2"s; each of those sees 2 others (2/3), the seven
        // others see 3 (1): (3 * 2/3 + 7) / 10.
        assert!((accuracy("2", &two) - 0.9).abs() < 1e-12);
    }
}
