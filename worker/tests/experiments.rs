//! `scripts/experiments.sh --quick` end to end (what CI runs of the experiments): every arm of
//! every group trains and is scored on two seeds at toy sizes, the analyses run, `htc report`
//! writes the page; a second run redoes nothing; bad options are refused. The numbers of a
//! toy run mean nothing: this checks the pipeline, not the claims.

mod common;

use std::path::{Path, PathBuf};

use common::tmp;
use serde_json::Value;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/experiments.sh")
}

fn run(work: &Path, args: &[&str]) -> (bool, String) {
    let o = std::process::Command::new("bash")
        .arg(script())
        .args(args)
        .env("HTC_BIN", env!("CARGO_BIN_EXE_htc"))
        .env("EXP_WORK", work)
        .env("HTC_LOG", "warn")
        .output()
        .unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr))
}

fn json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const CORE: [&str; 14] = [
    "none",
    "blank",
    "avgpool",
    "voco-causal",
    "voco",
    "discrete",
    "htc",
    "nd1",
    "nd2",
    "nd8",
    "mask-causal",
    "mask-full",
    "fusion-after",
    "fusion-mean",
];
const SECONDARY: [&str; 7] =
    ["htc-anchors-shuffled", "kl-0.01", "kl-0.1", "kl-1", "pd-linear", "pd-3", "pv-linear"];

#[test]
fn the_quick_experiments_run_every_arm_write_the_page_and_resume_without_redoing_anything() {
    let work = tmp("experiments", "quick");
    let (ok, log) = run(&work, &["--quick"]);
    assert!(ok, "the quick run failed:\n{log}");
    let results = work.join("results");
    for (arms, seeds) in [(&CORE[..], &[0, 1][..]), (&SECONDARY[..], &[0][..])] {
        for arm in arms {
            for seed in seeds {
                let r = json(&results.join(format!("runs/{arm}/seed-{seed}.json")));
                assert_eq!(r["arm"], *arm);
                assert_eq!(r["seed"], *seed);
                assert_eq!(r["eval"]["benchmark"], "shapes");
                let score = r["eval"]["score"].as_f64().unwrap();
                assert!((0.0..=100.0).contains(&score), "{arm}: {score}");
                assert_eq!(r["eval"]["metrics"]["questions"], 24, "{arm}: the toy test split");
            }
        }
    }
    // Each arm trained in its own configuration.
    let cfg = |arm: &str| json(&results.join(format!("runs/{arm}/seed-0.json")))["config"].clone();
    assert_eq!(cfg("nd8")["n_discrete"], 8);
    assert_eq!(cfg("voco-causal")["topology"], "causal");
    assert_eq!(cfg("voco-causal")["mode"], "voco");
    assert_eq!(cfg("fusion-mean")["fusion"], "mean");
    assert_eq!(cfg("pd-linear")["discrete_layers"], 1);
    assert_eq!(cfg("kl-0.1")["kl_weight"], 0.1);
    assert_eq!(cfg("pv-linear")["continuous_projector"], "linear");
    assert_eq!(cfg("blank")["data"], "blank");
    assert_eq!(cfg("htc-anchors-shuffled")["anchors"], "shuffled");
    let arm_cfg = |arm: &str| {
        json(&work.join(format!("arms/{arm}/seed-0/run/checkpoint-2/config.json")))["htc"].clone()
    };
    assert_eq!(arm_cfg("nd8")["n_discrete"], 8);
    assert_eq!(arm_cfg("mask-full")["topology"], "full");
    assert_eq!(arm_cfg("fusion-after")["fusion"], "after");
    assert_eq!(arm_cfg("pd-3")["discrete_layers"], 3);
    assert_eq!(arm_cfg("pv-linear")["continuous_projector"], "linear");
    assert_eq!(arm_cfg("htc")["chat_format"], "user_assistant", "the arms keep the recipe's chat format");
    let metrics = std::fs::read_to_string(work.join("arms/kl-1/seed-0/run/metrics.jsonl")).unwrap();
    assert!(metrics.lines().all(|l| l.contains("\"kl\"")), "the KL arm logs its term: {metrics}");
    // The analyses and the page.
    for seed in [0, 1] {
        for arm in ["htc", "voco"] {
            let p = json(&results.join(format!("probe/{arm}/seed-{seed}.json")));
            assert!(p["tasks"].as_array().is_some_and(|t| !t.is_empty()), "{arm}: {p}");
            let a = json(&results.join(format!("attention/{arm}/seed-{seed}.json")));
            assert!(a["layers"].as_array().is_some_and(|l| !l.is_empty()), "{arm}: {a}");
        }
    }
    for arm in ["none", "avgpool", "voco", "discrete", "htc"] {
        let c = json(&results.join(format!("cost/{arm}.json")));
        assert!(c["full_ms"]["median"].as_f64().is_some(), "{arm}: {c}");
    }
    let setup = json(&results.join("setup.json"));
    assert_eq!(setup["quick"], true);
    assert_eq!(setup["seeds"], serde_json::json!([0, 1]));
    let page = std::fs::read_to_string(work.join("results.md")).unwrap();
    assert!(page.contains("htc") && page.contains("retention"), "{page}");
    assert!(std::fs::read_dir(&results).unwrap().any(|e| e
        .unwrap()
        .path()
        .extension()
        .is_some_and(|x| x == "png")));
    assert!(log.contains("[1/") && log.contains("left"), "progress with the time left: {log}");

    // A second run redoes nothing, and a subset reruns only its own arms.
    let before = std::fs::metadata(results.join("runs/htc/seed-0.json")).unwrap().modified().unwrap();
    let (ok, log) = run(&work, &["--quick"]);
    assert!(ok, "{log}");
    assert!(!log.contains("trained"), "{log}");
    assert_eq!(std::fs::metadata(results.join("runs/htc/seed-0.json")).unwrap().modified().unwrap(), before);
    std::fs::remove_file(results.join("runs/nd2/seed-1.json")).unwrap();
    let (ok, log) = run(&work, &["--quick", "--only", "nd"]);
    assert!(ok, "{log}");
    assert_eq!(
        log.matches("(already done)").count() + 1,
        log.matches("] arm ").count() + log.matches("] shared ").count(),
        "{log}"
    );
    assert!(results.join("runs/nd2/seed-1.json").is_file());

    let (ok, log) = run(&work, &["--quick", "--only", "modes,sizes"]);
    assert!(!ok && log.contains("--only: unknown group `sizes`"), "{log}");
    // The trained arms take about a gigabyte: not left behind.
    std::fs::remove_dir_all(&work).unwrap();
}
