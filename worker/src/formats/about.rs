//! A model directory's optional `about.json`: what the model knows, in one plain paragraph for
//! the people who ask it, and the sample images to try it with, named by a generator spec and
//! rendered here when the model is opened.
//!
//! ```json
//! {
//!   "about": "shapes-demo knows pictures of coloured shapes …",
//!   "samples": {"generator": "shapes-v1", "seed": 2, "count": 4, "questions": 2}
//! }
//! ```
//!
//! `samples` is optional. Generator `shapes-v1` is ShapesVQA v1 ([`crate::data::shapes`]):
//! sample `i` is image `i` of `htc data shapes --split test --seed SEED --questions-per-image
//! QUESTIONS`, at the generator's own size, with that image's generated questions as the
//! suggested ones. Unknown fields are refused; every error names the file and the field.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::data::shapes;

/// The file's name in a model directory.
pub const FILE: &str = "about.json";

/// The most samples a model may ask for (each is rendered at startup and kept in memory).
pub const MAX_SAMPLES: usize = 16;
/// The most suggested questions per sample.
pub const MAX_QUESTIONS: usize = 4;
/// The longest `about` paragraph, in characters.
pub const MAX_ABOUT_CHARS: usize = 2000;

/// The split the samples come from: the one no training recipe here reads.
const SAMPLE_SPLIT: &str = "test";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AboutFile {
    about: String,
    #[serde(default)]
    samples: Option<SampleSpec>,
}

/// Which images a model offers to try it with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleSpec {
    pub generator: Generator,
    pub seed: u64,
    pub count: usize,
    /// Suggested questions per sample.
    #[serde(default = "default_questions")]
    pub questions: usize,
}

fn default_questions() -> usize {
    2
}

/// The data generators samples may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Generator {
    /// ShapesVQA v1 ([`crate::data::shapes`]).
    #[serde(rename = "shapes-v1")]
    ShapesV1,
}

/// One rendered sample: its PNG and the questions to suggest with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub png: Vec<u8>,
    pub questions: Vec<String>,
}

/// A model's `about.json`, read and its samples rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct About {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl About {
    /// Reads `dir/about.json` and renders its samples; `None` when the directory has no such
    /// file. Errors name the file and the field.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let raw = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&raw, &path).map(Some)
    }

    /// Parses the bytes of an `about.json` found at `path` (for the error messages).
    pub fn parse(raw: &[u8], path: &Path) -> Result<Self> {
        let file = path.display();
        let de = &mut serde_json::Deserializer::from_slice(raw);
        let parsed: AboutFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            if field == "." {
                anyhow::anyhow!("{file}: {}", e.inner())
            } else {
                anyhow::anyhow!("{file}: field `{field}`: {}", e.inner())
            }
        })?;
        let text = parsed.about.trim().to_string();
        if text.is_empty() {
            bail!("{file}: field `about`: empty; say in a paragraph what the model knows");
        }
        let chars = text.chars().count();
        if chars > MAX_ABOUT_CHARS {
            bail!(
                "{file}: field `about`: {chars} characters, over the {MAX_ABOUT_CHARS} a paragraph may have"
            );
        }
        let samples = match parsed.samples {
            Some(spec) => {
                spec.check()
                    .map_err(|(field, why)| anyhow::anyhow!("{file}: field `samples.{field}`: {why}"))?;
                spec.render().with_context(|| format!("{file}: rendering the samples"))?
            }
            None => Vec::new(),
        };
        Ok(Self { text, samples })
    }
}

impl SampleSpec {
    /// The field that is out of range and why, if one is.
    fn check(&self) -> std::result::Result<(), (&'static str, String)> {
        if !(1..=MAX_SAMPLES).contains(&self.count) {
            return Err(("count", format!("{} is outside 1..={MAX_SAMPLES}", self.count)));
        }
        if !(1..=MAX_QUESTIONS).contains(&self.questions) {
            return Err(("questions", format!("{} is outside 1..={MAX_QUESTIONS}", self.questions)));
        }
        Ok(())
    }

    /// The samples this spec names, rendered as PNG (the same bytes every time).
    pub fn render(&self) -> Result<Vec<Sample>> {
        match self.generator {
            Generator::ShapesV1 => shapes::split_scenes(self.seed, SAMPLE_SPLIT, self.questions)
                .take(self.count)
                .map(|(scene, qs)| {
                    let mut png = Vec::new();
                    scene
                        .render()
                        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                        .context("encoding a sample as PNG")?;
                    Ok(Sample { png, questions: qs.into_iter().map(|q| q.question).collect() })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<About> {
        About::parse(json.as_bytes(), Path::new("m/about.json"))
    }

    #[test]
    fn a_spec_renders_the_split_it_names() {
        let a =
            parse(r#"{"about": " Shapes. ", "samples": {"generator": "shapes-v1", "seed": 9, "count": 2}}"#)
                .unwrap();
        assert_eq!(a.text, "Shapes.");
        assert_eq!(a.samples.len(), 2);
        let want: Vec<_> = shapes::split_scenes(9, "test", 2).take(2).collect();
        for (s, (scene, qs)) in a.samples.iter().zip(want) {
            let img = image::load_from_memory(&s.png).unwrap().to_rgb8();
            assert_eq!(img, scene.render());
            assert_eq!(s.questions, qs.iter().map(|q| q.question.clone()).collect::<Vec<_>>());
            assert!(!s.questions.is_empty() && s.questions.len() <= 2);
        }
        assert_ne!(a.samples[0].png, a.samples[1].png);
    }

    #[test]
    fn samples_are_optional() {
        assert_eq!(parse(r#"{"about": "A model."}"#).unwrap().samples, vec![]);
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        for (json, field, why) in [
            (r#"{"about": 3}"#, "field `about`", "invalid type"),
            (r#"{}"#, "", "missing field `about`"),
            (r#"{"about": "x", "samples": {}}"#, "field `samples`", "missing field `generator`"),
            (r#"{"about": "  "}"#, "field `about`", "empty"),
            (r#"{"about": "x", "colour": 1}"#, "", "unknown field `colour`"),
            (
                r#"{"about": "x", "samples": {"generator": "photos", "seed": 1, "count": 1}}"#,
                "field `samples.generator`",
                "unknown variant `photos`",
            ),
            (
                r#"{"about": "x", "samples": {"generator": "shapes-v1", "seed": "2", "count": 1}}"#,
                "field `samples.seed`",
                "invalid type",
            ),
            (
                r#"{"about": "x", "samples": {"generator": "shapes-v1", "seed": 2, "count": 0}}"#,
                "field `samples.count`",
                "outside 1..=16",
            ),
            (
                r#"{"about": "x", "samples": {"generator": "shapes-v1", "seed": 2, "count": 1, "questions": 9}}"#,
                "field `samples.questions`",
                "outside 1..=4",
            ),
            ("{", "", "EOF"),
        ] {
            let e = format!("{:#}", parse(json).unwrap_err());
            assert!(e.starts_with("m/about.json: "), "{e}");
            assert!(e.contains(field) && e.contains(why), "`{field}` and `{why}` not in `{e}`");
        }
    }

    #[test]
    fn a_directory_without_the_file_has_nothing_to_say() {
        let dir = std::env::temp_dir().join(format!("htc-about-none-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(About::read(&dir).unwrap(), None);
        std::fs::write(dir.join(FILE), r#"{"about": "x", "samples": "four"}"#).unwrap();
        let e = format!("{:#}", About::read(&dir).unwrap_err());
        assert!(e.contains("about.json: field `samples`: invalid type"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
