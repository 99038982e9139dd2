//! Data sets the project generates itself: [`shapes`] (ShapesVQA v1), the writer that puts a
//! split on disk in LLaVA's conversation format and [`read_scenes`], which reads a split's scene
//! labels back, plus the [`llava`] format helpers that training and evaluation share. No
//! models, no tensors.

pub mod llava;
pub mod shapes;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use shapes::{COLORS, SHAPES, TEXTURES};

/// The splits a generated data set may have.
pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// What a written split holds: images, records, and records per family.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitSummary {
    pub images: usize,
    pub records: usize,
    pub per_family: BTreeMap<&'static str, usize>,
}

/// Writes ShapesVQA split `split` under `out`: `out/<split>/NNNNNN.png`, `out/<split>.json`
/// (records `{"id", "image", "conversations", "family", "kind"}`, images relative to `out`)
/// and `out/<split>.scenes.json` (`{"image", "objects"}` per image: what each scene holds).
/// Deterministic for a seed and split. `grouped` writes one multi-turn record per image
/// instead (`{"id", "image", "conversations", "families"}`, the questions as turns, the same
/// scenes and questions): the vision tower then runs once for all of an image's questions in
/// training. `describe` adds a description of each image ([`shapes::DESCRIBE`] →
/// [`shapes::Scene::describe`]): its own record (family `describe`), or the last turn of a
/// grouped conversation, so that no question can read its answer from it.
pub fn write_shapes(
    out: &Path, split: &str, images: usize, seed: u64, per_image: usize, grouped: bool, describe: bool,
) -> Result<SplitSummary> {
    if !SPLITS.contains(&split) {
        bail!("unknown --split `{split}` (train, val, test)");
    }
    if images == 0 {
        bail!("--images must be at least 1");
    }
    if per_image == 0 && !describe {
        bail!("--questions-per-image must be at least 1 (0 only with --describe: descriptions alone)");
    }
    let dir = out.join(split);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut records = Vec::new();
    let mut scenes = Vec::new();
    let mut per_family = BTreeMap::new();
    for (i, (scene, qs)) in shapes::split_scenes(seed, split, per_image).take(images).enumerate() {
        let file = format!("{split}/{i:06}.png");
        let path = out.join(&file);
        scene.render().save(&path).with_context(|| format!("cannot write {}", path.display()))?;
        scenes.push(json!({"image": file, "objects": scene.objects}));
        if grouped {
            let mut turns = Vec::new();
            for (k, q) in qs.iter().enumerate() {
                *per_family.entry(q.family.name()).or_insert(0) += 1;
                let prefix = if k == 0 { "<image>\n" } else { "" };
                turns.push(json!({"from": "human", "value": format!("{prefix}{}", q.question)}));
                turns.push(json!({"from": "gpt", "value": q.answer}));
            }
            if describe {
                turns.push(json!({"from": "human", "value": shapes::DESCRIBE}));
                turns.push(json!({"from": "gpt", "value": scene.describe()}));
            }
            let families: Vec<&str> = qs.iter().map(|q| q.family.name()).collect();
            records.push(json!({
                "id": format!("{split}-{i:06}"), "image": file, "conversations": turns, "families": families,
            }));
            continue;
        }
        if describe {
            records.push(json!({
                "id": format!("{split}-{i:06}-d"),
                "image": file,
                "conversations": [
                    {"from": "human", "value": format!("<image>\n{}", shapes::DESCRIBE)},
                    {"from": "gpt", "value": scene.describe()},
                ],
                "family": "describe",
                "kind": "-",
            }));
        }
        for (k, q) in qs.into_iter().enumerate() {
            *per_family.entry(q.family.name()).or_insert(0) += 1;
            records.push(json!({
                "id": format!("{split}-{i:06}-{k}"),
                "image": file,
                "conversations": [
                    {"from": "human", "value": format!("<image>\n{}", q.question)},
                    {"from": "gpt", "value": q.answer},
                ],
                "family": q.family.name(),
                "kind": q.family.kind(),
            }));
        }
    }
    let scenes_path = out.join(format!("{split}.scenes.json"));
    std::fs::write(&scenes_path, serde_json::to_vec(&scenes)?)
        .with_context(|| format!("cannot write {}", scenes_path.display()))?;
    let json_path = out.join(format!("{split}.json"));
    let n = records.len();
    std::fs::write(&json_path, serde_json::to_vec_pretty(&records)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    Ok(SplitSummary { images, records: n, per_family })
}

/// Writes `out/blank.png`, one image of ShapesVQA's background colour the size of the first
/// record's image, and `out/<file name of data>`: the records of `data` with every `image`
/// replaced by `blank.png` (everything else kept). Returns the number of records.
pub fn write_blank(data: &Path, images: &Path, out: &Path) -> Result<usize> {
    let raw = std::fs::read(data).with_context(|| format!("cannot read {}", data.display()))?;
    let mut records: Vec<serde_json::Value> = serde_json::from_slice(&raw)
        .with_context(|| format!("{} is not a JSON list of LLaVA conversation records", data.display()))?;
    let first = records
        .iter()
        .find_map(|r| r["image"].as_str())
        .with_context(|| format!("{}: no record has an `image`", data.display()))?;
    let (w, h) = image::image_dimensions(images.join(first))
        .with_context(|| format!("cannot read the size of {}", images.join(first).display()))?;
    let name = data.file_name().with_context(|| format!("{} has no file name", data.display()))?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    image::RgbImage::from_pixel(w, h, image::Rgb(shapes::BACKGROUND))
        .save(out.join("blank.png"))
        .with_context(|| format!("cannot write {}", out.join("blank.png").display()))?;
    for r in records.iter_mut().filter(|r| r.get("image").is_some()) {
        r["image"] = json!("blank.png");
    }
    std::fs::write(out.join(name), serde_json::to_vec(&records)?)
        .with_context(|| format!("cannot write {}", out.join(name).display()))?;
    Ok(records.len())
}

/// Per-cell labels of one scene: `[cell][shape, color, size, texture]`, each the 1-based index
/// into [`SHAPES`], [`COLORS`], small/large and [`TEXTURES`]; 0 for an empty cell.
pub type CellLabels = [[usize; 4]; 9];

/// Reads the labels of every scene in a `<split>.scenes.json` (from `htc data shapes`).
pub fn read_scenes(path: &Path) -> Result<Vec<(String, CellLabels)>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Vec<Value> = serde_json::from_slice(&raw).with_context(|| {
        format!("{} is not a JSON list of scenes (`htc data shapes` writes one)", path.display())
    })?;
    let index = |names: &[&str], x: &Value, what: &str| -> Result<usize> {
        let s = x.as_str().with_context(|| format!("{what} is not a string"))?;
        names.iter().position(|n| *n == s).map(|i| i + 1).with_context(|| format!("unknown {what} `{s}`"))
    };
    let shapes: Vec<&str> = SHAPES.iter().map(|s| s.name()).collect();
    let colors: Vec<&str> = COLORS.iter().map(|c| c.name()).collect();
    let textures: Vec<&str> = TEXTURES.iter().map(|t| t.name()).collect();
    v.iter()
        .enumerate()
        .map(|(i, s)| {
            let ctx = || format!("scene {i} of {}", path.display());
            let image = s["image"].as_str().with_context(|| format!("{} has no `image`", ctx()))?;
            let mut labels = [[0usize; 4]; 9];
            for o in s["objects"].as_array().with_context(|| format!("{} has no `objects`", ctx()))? {
                let cell = o["cell"]
                    .as_u64()
                    .filter(|&c| c < 9)
                    .with_context(|| format!("{}: bad `cell`", ctx()))?;
                let size = match o["extent"].as_u64() {
                    Some(40) => 1,
                    Some(80) => 2,
                    _ => bail!("{}: `extent` must be 40 or 80", ctx()),
                };
                labels[cell as usize] = [
                    index(&shapes, &o["shape"], "shape").with_context(ctx)?,
                    index(&colors, &o["color"], "color").with_context(ctx)?,
                    size,
                    index(&textures, &o["texture"], "texture").with_context(ctx)?,
                ];
            }
            Ok((image.to_string(), labels))
        })
        .collect()
}
