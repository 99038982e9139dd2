//! `htc report` end to end: from a small synthetic results directory it writes the page with
//! the numbers computed by hand below (means ± std, retention with a seed lacking its lower
//! bound skipped, claim verdicts, probing, attention, cost) and valid PNG figures; a section
//! without data says "Not run yet."; a malformed file fails naming the file and the field; an
//! unknown arm directory is a warning.

mod common;

use std::path::Path;

use common::{htc, s, tmp};
use serde_json::json;

fn write(path: &Path, value: &serde_json::Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

/// One run file: every family at `score`, S one point above, D one below.
fn run(dir: &Path, arm: &str, seed: u64, score: f64) {
    let families: serde_json::Map<String, serde_json::Value> =
        ["color", "count", "exist", "position", "shape", "size", "texture"]
            .iter()
            .map(|f| (f.to_string(), json!(score)))
            .collect();
    write(
        &dir.join(format!("runs/{arm}/seed-{seed}.json")),
        &json!({
            "arm": arm, "seed": seed,
            "config": {"mode": "htc", "n_discrete": 4},
            "steps": 300, "train_seconds": 151.2, "eval_seconds": 8.1,
            "eval": {"benchmark": "shapes", "score": score, "metrics": {
                "family": families, "kind": {"S": score + 1.0, "D": score - 1.0},
                "questions": 1000, "missing": 0, "extra": 0}}
        }),
    );
}

fn layer(i: usize, anchor_token: f64, patch_token: f64) -> serde_json::Value {
    json!({"layer": i, "anchors": {"mean": 0.4, "std": 0.1}, "patches": {"mean": 0.3, "std": 0.1},
           "anchor_token": {"mean": anchor_token, "std": 0.02}, "patch_token": {"mean": patch_token, "std": 0.01}})
}

/// The synthetic results: seeds 0–2; `blank` lacks seed 2; `nd8` has seed 0 only.
fn results(dir: &Path) {
    write(
        &dir.join("setup.json"),
        &json!({"quick": true, "seeds": [0, 1, 2], "steps": 300, "batch": 32, "lr": 1e-3,
                "model": {"llm_width": 192, "params": 4420000}, "date": "2026-12-07"}),
    );
    for (arm, scores) in [
        ("none", &[80.0, 82.0, 78.0][..]),
        ("blank", &[20.0, 22.0][..]),
        ("htc", &[65.0, 70.0, 63.0][..]),
        ("voco", &[60.0, 64.0, 59.0][..]),
        ("voco-causal", &[64.0, 71.0, 61.0][..]),
        ("nd8", &[62.0][..]),
    ] {
        for (seed, score) in scores.iter().enumerate() {
            run(dir, arm, seed as u64, *score);
        }
    }
    write(
        &dir.join("probe/htc/seed-0.json"),
        &json!({"train_scenes": 1000, "test_scenes": 500, "tasks": [
            {"task": "shape", "kind": "S", "classes": 5, "majority": 31.2,
             "accuracy": {"z": 55.0, "v_d": 40.0, "V": 50.0}},
            {"task": "size", "kind": "D", "classes": 3, "majority": 40.0,
             "accuracy": {"z": 60.0, "v_d": 45.0, "V": 62.0}}]}),
    );
    let heat =
        |name: &str| json!({"image": name, "anchors": [0.1, 0.2, 0.05, 0.05], "patches": vec![0.01; 9]});
    for (seed, (a0, a1, p1)) in [(0u64, (0.1, 0.2, 0.02)), (1, (0.12, 0.18, 0.025))] {
        let p0 = if seed == 0 { 0.0333 } else { 0.03 };
        write(
            &dir.join(format!("attention/htc/seed-{seed}.json")),
            &json!({"images": 16, "n_discrete": 4, "n_patches": 9, "grid": [3, 3],
                    "layers": [layer(0, a0, p0), layer(1, a1, p1)],
                    "heatmaps": [heat("test/000001.png"), heat("test/000002.png")]}),
        );
    }
    write(
        &dir.join("cost/htc.json"),
        &json!({"mode": "htc", "prefix_tokens": 15, "question_tokens": 9, "kept_positions": 2,
                "full_ms": {"median": 120.0, "min": 110.0}, "compress_ms": {"median": 100.0, "min": 95.0},
                "followup_ms": {"median": 10.0, "min": 9.0}, "repeats": 20, "threads": 2}),
    );
    std::fs::write(dir.join("limits.md"), "## What limits this scale\n\nA fixed paragraph.\n").unwrap();
}

fn report(results: &Path, out: &Path) -> std::process::Output {
    htc(&["report", "--results", s(results), "--out", s(out)])
}

/// The page's line containing `needle`.
fn line<'a>(page: &'a str, needle: &str) -> &'a str {
    page.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in\n{page}"))
}

#[test]
fn report_writes_the_computed_numbers_and_figures() {
    let root = tmp("report", "full");
    let dir = root.join("results");
    results(&dir);
    // An arm the report does not know: warned about, not read.
    write(&dir.join("runs/mystery/seed-0.json"), &json!({"nothing": true}));
    let out = root.join("results.md");
    let o = report(&dir, &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("warning:") && stderr.contains("unknown arm `mystery`"), "{stderr}");
    let page = std::fs::read_to_string(&out).unwrap();

    // htc: 65, 70, 63 → 66.0 ± 3.6; S and D one point either side. Retention per seed against
    // that seed's bounds: (65−20)/60 = 75, (70−22)/60 = 80; seed 2 has no `blank` → n = 2.
    let htc_row = line(&page, "| `htc` | HTC:");
    assert!(
        htc_row.contains("| 3 | 66.0 ± 3.6 | 67.0 ± 3.6 | 65.0 ± 3.6 | 77.5 ± 3.5 (n = 2) | 87.2"),
        "{htc_row}"
    );
    // The one-seed arm is marked; an arm without runs says so.
    assert!(line(&page, "| `nd8` (1 seed) |").contains("| 1 | 62.0 |"), "{page}");
    assert!(line(&page, "| `nd1` |").contains("not run yet"), "{page}");
    // Groups without any run.
    assert!(page.contains("## Mask topology (paper Table 12, bottom)\n\n| arm"), "htc is in it:\n{page}");
    assert!(page.contains("## Regularisation weight β (paper Table 9)\n\n| arm"), "{page}");

    // Claims. htc − voco: d = 5, 6, 4 → +5.0, SE 1/√3 = 0.58 → agrees. htc − voco-causal:
    // d = 1, −1, 2 → +0.7, SE 0.88 → within noise. htc − nd8: seed 0 only → +3.0, not tested.
    assert!(page.contains(
        "`htc` − `voco` = +5.0 ± 0.6 points (paired mean difference ± SE over n = 3 seeds): **agrees**."
    ));
    assert!(page.contains(
        "`htc` − `voco-causal` = +0.7 ± 0.9 points (paired mean difference ± SE over n = 3 seeds): **within noise**."
    ));
    assert!(page.contains("`htc` − `nd8` = +3.0 points (one seed): **one seed: not tested**."), "{page}");
    assert!(page.contains("`htc` vs `nd1`: `nd1` not run: **not run**."), "{page}");
    // Attention: per anchor − per patch, seed 0: 0.15 − 0.02665, seed 1: 0.15 − 0.0275 → agrees.
    assert!(line(&page, "attends more to anchors").ends_with("**agrees**."), "{page}");
    // Probing: z − max(v_d, V̄) on D = 60 − 62 with one seed.
    assert!(page.contains("On D, z − max(v_d, V̄) = -2.0 points (one seed)"), "{page}");

    // Probing, attention and cost tables.
    assert!(page.contains("| shape | S | 5 | 31.2 | 55.0 | 40.0 | 50.0 |"), "{page}");
    assert!(page.contains("| S | paper, Table 3 | 26.67 | 20.83 | 26.67 |"), "{page}");
    // Layer 0 per anchor over seeds: 0.10 and 0.12 → 0.110 ± 0.014.
    assert!(line(&page, "| 0 | 0.400").contains("| 0.110 ± 0.014 |"), "{page}");
    assert!(page.contains("| `htc` | htc | 15 | 9 | 2 | 120.0 | 100.0 | 10.0 | 12.0× |"), "{page}");
    assert!(page.contains("placeholders"), "the cost section says why it has no paper numbers");
    // The closing section is the results directory's limits.md, verbatim, at the end.
    assert!(page.ends_with("## What limits this scale\n\nA fixed paragraph.\n"), "{page}");

    // Figures: linked relative to the page and valid 800×480 PNGs; no β figure (htc only).
    for name in ["fig-modes.png", "fig-nd.png", "fig-attention.png", "fig-heatmaps.png"] {
        assert!(page.contains(&format!("](results/{name})")), "{name} not linked:\n{page}");
        let img = image::open(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((img.width(), img.height()), (800, 480), "{name}");
    }
    assert!(!dir.join("fig-kl.png").exists() && !page.contains("fig-kl.png"));
}

#[test]
fn report_on_setup_alone_says_not_run_yet() {
    let root = tmp("report", "empty");
    write(&root.join("setup.json"), &json!({"seeds": [0]}));
    let out = root.join("page.md");
    let o = report(&root, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = std::fs::read_to_string(&out).unwrap();
    assert!(page.contains("- Seeds: 0 (1 in all)."), "{page}");
    assert!(page.contains("## Probing\n\nNot run yet."), "{page}");
    assert!(page.contains("## Cost per question\n\nNot run yet."), "{page}");
    assert!(page.contains("`htc` vs `voco`: `htc` and `voco` not run: **not run**."), "{page}");
    assert!(!root.join("fig-modes.png").exists());
}

#[test]
fn malformed_results_fail_naming_the_file_and_field() {
    let root = tmp("report", "bad");
    let dir = root.join("results");
    results(&dir);
    let out = root.join("results.md");
    let fails = |what: &str, needles: &[&str]| {
        let o = report(&dir, &out);
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success(), "{what}: succeeded");
        assert_eq!(stderr.trim().lines().count(), 1, "{what}: one line:\n{stderr}");
        for n in needles {
            assert!(stderr.contains(n), "{what}: {n:?} not in {stderr}");
        }
    };

    let bad = dir.join("runs/htc/seed-1.json");
    std::fs::write(&bad, r#"{"arm": "htc", "seed": 1, "eval": {"score": "high", "metrics": {}}}"#).unwrap();
    fails("a string score", &["seed-1.json", "eval.score", "invalid type"]);

    std::fs::write(&bad, r#"{"arm": "htc", "seed": 1, "eval": {"score": 613, "metrics": {}}}"#).unwrap();
    fails("a score out of range", &["seed-1.json", "eval.score", "613", "0..=100"]);

    std::fs::write(&bad, r#"{"arm": "voco", "seed": 1, "eval": {"score": 61, "metrics": {}}}"#).unwrap();
    fails("a run in the wrong directory", &["seed-1.json", "arm `voco`"]);

    std::fs::write(&bad, "{").unwrap();
    fails("truncated JSON", &["seed-1.json", "EOF"]);
    run(&dir, "htc", 1, 70.0);

    std::fs::write(dir.join("setup.json"), r#"{"seeds": "all"}"#).unwrap();
    fails("a bad setup", &["setup.json", "seeds"]);
    std::fs::remove_file(dir.join("setup.json")).unwrap();
    fails("no setup", &["setup.json"]);
}
