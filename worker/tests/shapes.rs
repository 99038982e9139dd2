//! ShapesVQA v1 holds to its spec on thousands of scenes: the grid, jitter and uniqueness,
//! answers that follow from the scene, balanced yes/no, the drawing (fill, outline, stripes),
//! and `htc data shapes` writes the same bytes for the same seed and refuses bad options.

mod common;

use std::collections::BTreeMap;

use common::{htc, s, tmp};
use htc_worker::data::shapes::{self, Family, Object, Scene, BACKGROUND, CELL, COLORS, SHAPES};

fn scenes(n: usize, seed: u64) -> (Vec<Scene>, rand::rngs::StdRng) {
    let mut rng = shapes::rng_for(seed, "train");
    ((0..n).map(|_| Scene::sample(&mut rng)).collect(), rng)
}

#[test]
fn scenes_follow_the_grid_jitter_and_uniqueness_rules() {
    let (scenes, _) = scenes(3000, 7);
    let mut counts = [0usize; 5];
    for sc in &scenes {
        let n = sc.objects.len();
        assert!((1..=4).contains(&n), "1-4 objects, got {n}");
        counts[n] += 1;
        for (i, o) in sc.objects.iter().enumerate() {
            let (col, row) = ((o.cell % 3) as i32, (o.cell / 3) as i32);
            let (ccx, ccy) = (col * CELL as i32 + 56, row * CELL as i32 + 56);
            assert!((o.cx - ccx).abs() <= 10 && (o.cy - ccy).abs() <= 10, "jitter within 10 px: {o:?}");
            assert!(o.extent == 40 || o.extent == 80);
            for p in &sc.objects[i + 1..] {
                assert_ne!(o.cell, p.cell, "one object per cell");
                assert!(!(o.shape == p.shape && o.color == p.color), "(shape, color) unique");
            }
        }
    }
    for (n, &c) in counts.iter().enumerate().skip(1) {
        assert!((600..900).contains(&c), "{c} scenes with {n} objects of 3000 (uniform: 750)");
    }
}

/// The object a question names as "the {color} {shape}", "the {color} object" or "the {shape}".
fn named<'a>(sc: &'a Scene, q: &str) -> Vec<&'a Object> {
    sc.objects
        .iter()
        .filter(|o| {
            q.contains(&format!("the {} {}", o.color.name(), o.shape.name()))
                || q.contains(&format!("the {} object", o.color.name()))
                || q.ends_with(&format!("the {}?", o.shape.name()))
        })
        .collect()
}

#[test]
fn every_answer_follows_from_the_scene_and_yes_no_is_balanced() {
    let (scenes, mut rng) = scenes(3000, 11);
    let mut per_family: BTreeMap<Family, usize> = BTreeMap::new();
    let (mut yes, mut exist) = (0, 0);
    let mut count_answers = [0usize; 5];
    for sc in &scenes {
        let qs = shapes::questions(sc, 3, &mut rng);
        assert!(!qs.is_empty());
        for q in qs {
            *per_family.entry(q.family).or_default() += 1;
            let text = q.question.as_str();
            let want = match q.family {
                Family::Exist => {
                    exist += 1;
                    let present = COLORS.iter().any(|c| {
                        SHAPES.iter().any(|s| {
                            text == format!("Is there a {} {}?", c.name(), s.name())
                                && sc.objects.iter().any(|o| o.color == *c && o.shape == *s)
                        })
                    });
                    yes += usize::from(present);
                    if present { "yes" } else { "no" }.to_string()
                }
                Family::Count => {
                    let s =
                        SHAPES.iter().find(|s| text == format!("How many {}s are there?", s.name())).unwrap();
                    let n = sc.objects.iter().filter(|o| o.shape == *s).count();
                    count_answers[n] += 1;
                    n.to_string()
                }
                family => {
                    let objs = named(sc, text);
                    assert_eq!(objs.len(), 1, "`{text}` names exactly one object in {sc:?}");
                    let o = objs[0];
                    match family {
                        Family::Shape => {
                            assert_eq!(sc.objects.iter().filter(|p| p.color == o.color).count(), 1);
                            o.shape.name().to_string()
                        }
                        Family::Color => {
                            assert_eq!(sc.objects.iter().filter(|p| p.shape == o.shape).count(), 1);
                            o.color.name().to_string()
                        }
                        Family::Texture => o.texture.name().to_string(),
                        Family::Size => o.size_name().to_string(),
                        _ => o.column().to_string(),
                    }
                }
            };
            assert_eq!(q.answer, want, "`{text}`");
            assert_eq!(q.answer, q.answer.to_lowercase());
        }
    }
    assert_eq!(per_family.len(), 7, "every family appears: {per_family:?}");
    let share = yes as f64 / exist as f64;
    assert!((0.45..=0.55).contains(&share), "yes/no balance {share:.3} over {exist} questions");
    assert!(count_answers.iter().all(|&c| c > 0), "counts 0-4 all occur: {count_answers:?}");
}

fn px(img: &image::RgbImage, x: i32, y: i32) -> [u8; 3] {
    img.get_pixel(x as u32, y as u32).0
}

#[test]
fn drawing_fills_outlines_and_stripes_as_specified() {
    let (scenes, _) = scenes(300, 3);
    let mut seen = BTreeMap::new();
    for sc in &scenes {
        let img = sc.render();
        assert_eq!(img.dimensions(), (336, 336));
        for (x, y) in [(0, 0), (335, 0), (0, 335), (335, 335)] {
            assert_eq!(px(&img, x, y), BACKGROUND, "corners are background");
        }
        for o in &sc.objects {
            let (c, top) = (o.color.rgb(), o.cy - o.extent as i32 / 2);
            *seen.entry(o.texture.name()).or_insert(0) += 1;
            match o.texture.name() {
                "solid" => assert_eq!(px(&img, o.cx, o.cy), c, "solid: centre painted {o:?}"),
                "outline" => {
                    assert_eq!(px(&img, o.cx, o.cy), BACKGROUND, "outline: interior empty {o:?}");
                    assert_eq!(px(&img, o.cx, top + 1), c, "outline: stroke inside the top edge {o:?}");
                }
                _ => {
                    assert_eq!(px(&img, o.cx, top + 2), c, "striped: first band painted {o:?}");
                    assert_eq!(px(&img, o.cx, top + 8), BACKGROUND, "striped: second band empty {o:?}");
                }
            }
            assert_eq!(px(&img, o.cx, top - 2), BACKGROUND, "nothing above the top edge {o:?}");
        }
    }
    assert_eq!(seen.len(), 3, "all textures drawn: {seen:?}");
}

#[test]
fn the_cli_writes_a_split_deterministically_and_refuses_bad_options() {
    let (a, b) = (tmp("shapes", "a"), tmp("shapes", "b"));
    for out in [&a, &b] {
        let o = htc(&["data", "shapes", "--out", s(out), "--images", "12", "--seed", "5", "--split", "val"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains("wrote 12 images and 36 records"));
    }
    let ja = std::fs::read(a.join("val.json")).unwrap();
    assert_eq!(ja, std::fs::read(b.join("val.json")).unwrap(), "same seed, same records");
    assert_eq!(
        std::fs::read(a.join("val/000011.png")).unwrap(),
        std::fs::read(b.join("val/000011.png")).unwrap(),
        "same seed, same pixels"
    );
    let records: Vec<serde_json::Value> = serde_json::from_slice(&ja).unwrap();
    for r in &records {
        let img = a.join(r["image"].as_str().unwrap());
        assert!(image::open(&img).is_ok(), "{} is a readable image", img.display());
        assert!(r["conversations"][0]["value"].as_str().unwrap().starts_with("<image>\n"));
        assert!(["S", "D"].contains(&r["kind"].as_str().unwrap()));
    }
    let o = htc(&["data", "shapes", "--out", s(&a), "--images", "12", "--seed", "5", "--split", "test"]);
    assert!(o.status.success());
    assert_ne!(std::fs::read(a.join("test.json")).unwrap(), ja, "another split, other scenes");

    for (args, err) in [
        (vec!["--images", "0"], "--images must be at least 1"),
        (vec!["--images", "2", "--split", "dev"], "unknown --split `dev`"),
        (vec!["--images", "2", "--questions-per-image", "0"], "--questions-per-image must be at least 1"),
    ] {
        let o = htc(&[&["data", "shapes", "--out", s(&tmp("shapes", "bad"))][..], &args].concat());
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(err), "{e}");
    }
    let file = tmp("shapes", "a-file");
    std::fs::write(&file, b"x").unwrap();
    let o = htc(&["data", "shapes", "--out", s(&file), "--images", "1"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot create"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_word_level_vocabulary_covers_every_question_answer_and_the_template() {
    use htc_worker::text::{Template, TextTokenizer};
    let out = tmp("shapes-vocab", "set");
    let o = htc(&["data", "shapes", "--out", s(&out), "--images", "200", "--seed", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tok_path = out.join("tokenizer.json");
    let o = htc(&["data", "vocab", "--data", s(&out.join("train.json")), "--out", s(&tok_path)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let inner = TextTokenizer::from_file(&tok_path).unwrap();
    assert_eq!(
        (inner.token_to_id("<unk>"), inner.token_to_id("<s>"), inner.token_to_id("</s>")),
        (Some(0), Some(1), Some(2))
    );
    let tok = TextTokenizer { inner, template: Template::VicunaV1, eos_ids: vec![2] };
    let records: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.join("train.json")).unwrap()).unwrap();
    for r in &records {
        let q = r["conversations"][0]["value"].as_str().unwrap().replace("<image>\n", "");
        let ids = tok.question_ids(&q, true).unwrap();
        assert!(!ids.contains(&0), "`{q}` with the chat template has no unknown word");
        let a = r["conversations"][1]["value"].as_str().unwrap();
        let a_ids = tok.encode(a, false).unwrap();
        assert_eq!(a_ids.len(), 1, "`{a}` is one token");
        assert_eq!(tok.inner.decode(&a_ids, true).unwrap(), a);
    }
    assert_eq!(tok.encode("zebra", false).unwrap(), vec![0], "other words are <unk>");
    let o = htc(&["data", "vocab", "--data", s(&out.join("missing.json")), "--out", s(&tok_path)]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read"));
    std::fs::write(out.join("bad.json"), "{").unwrap();
    let o = htc(&["data", "vocab", "--data", s(&out.join("bad.json")), "--out", s(&tok_path)]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a JSON list of LLaVA conversation records"));
}

#[test]
fn a_blank_copy_keeps_the_records_and_points_every_one_at_one_background_image() {
    let dir = tmp("shapes", "blank");
    let o = htc(&["data", "shapes", "--out", s(&dir), "--split", "test", "--images", "5", "--seed", "3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.join("blank");
    let o =
        htc(&["data", "blank", "--data", s(&dir.join("test.json")), "--images", s(&dir), "--out", s(&out)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |p: &std::path::Path| -> Vec<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let (orig, blank) = (read(&dir.join("test.json")), read(&out.join("test.json")));
    assert_eq!(orig.len(), blank.len());
    for (a, b) in orig.iter().zip(&blank) {
        assert_eq!(b["image"], "blank.png");
        let mut a = a.clone();
        a["image"] = "blank.png".into();
        assert_eq!(&a, b, "everything but the image is kept");
    }
    let first = image::open(dir.join(orig[0]["image"].as_str().unwrap())).unwrap().to_rgb8();
    let img = image::open(out.join("blank.png")).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), first.dimensions());
    assert!(img.pixels().all(|p| p.0 == BACKGROUND));

    // Bad input: records without images, and an image that is not there.
    let none = dir.join("none.json");
    std::fs::write(&none, r#"[{"id": "a", "conversations": []}]"#).unwrap();
    let o = htc(&["data", "blank", "--data", s(&none), "--images", s(&dir), "--out", s(&out)]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("no record has an `image`"), "{e}");
    let gone = dir.join("gone.json");
    std::fs::write(&gone, r#"[{"id": "a", "image": "nowhere.png", "conversations": []}]"#).unwrap();
    let o = htc(&["data", "blank", "--data", s(&gone), "--images", s(&dir), "--out", s(&out)]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("nowhere.png"), "{e}");
}
