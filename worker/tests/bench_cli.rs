//! The end-to-end benchmark as a user runs it: `bench/gpu-bench.sh --tiny` (the CPU check of
//! the GPU benchmark: `htc bench --suite e2e` on the tiny shape, and the report), the report's
//! ratios against a transformers side, and clear errors for bad options. No timing is asserted:
//! only that every figure is there, positive and consistent with the JSON lines.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{htc, s};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

const FIELDS: [&str; 7] = [
    "vision_ms",
    "projection_ms",
    "llm_prefill_ms",
    "ttft_new_ms",
    "ttft_cached_ms",
    "decode_ms_per_token",
    "decode_tok_s",
];

#[test]
fn gpu_bench_script_runs_the_tiny_shape_on_the_cpu_and_reports_every_stage() {
    let dir = common::tmp("bench", "gpu-bench-tiny");
    let _ = std::fs::remove_dir_all(&dir);
    let out = std::process::Command::new("bash")
        .arg(root().join("bench/gpu-bench.sh"))
        .args(["--tiny", "--reps", "1"])
        .env("HTC_BIN", env!("CARGO_BIN_EXE_htc"))
        .env("BENCH_DIR", &dir)
        // The transformers side needs torch; CI has none, so the script must say it skipped it.
        .env("PYTHON", "/nonexistent/python")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("the transformers side is skipped"), "{stderr}");

    let rows = lines(&dir.join("htc.jsonl"));
    let modes: BTreeMap<String, &Value> =
        rows.iter().filter_map(|r| Some((r["mode"].as_str()?.to_string(), r))).collect();
    assert_eq!(modes.keys().collect::<Vec<_>>(), ["htc", "htc+page", "none", "voco"]);
    for (mode, r) in &modes {
        for f in FIELDS {
            let v = r[f].as_f64().unwrap_or(-1.0);
            assert!(v > 0.0 && v.is_finite(), "{mode} {f} = {v}");
        }
        // Only HTC runs the MGVQ encoder; with the page's codes, the worker does not.
        assert_eq!(r["mgvq_ms"].as_f64().unwrap() > 0.0, mode == "htc", "{mode}");
        assert_eq!(r["question_tokens"], 32);
    }
    // The prefix: BOS + 576 patches (vanilla), + <voco> (VoCo-LLaMA), + 4 anchors (HTC).
    assert_eq!(modes["none"]["prefix_tokens"], 577);
    assert_eq!(modes["voco"]["prefix_tokens"], 578);
    assert_eq!(modes["htc"]["prefix_tokens"], 582);
    assert_eq!(modes["htc+page"]["prefix_tokens"], 582);
    let peak = rows.iter().find_map(|r| r["peak_rss_mib"].as_f64()).expect("peak memory line");
    assert!(peak > 1.0);

    // The report: one markdown row per stage, one column per mode, the figures of the JSON.
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert_eq!(
        report,
        stdout.lines().skip_while(|l| !l.starts_with("## ")).collect::<Vec<_>>().join("\n") + "\n"
    );
    assert!(report.contains("Device: CPU"), "{report}");
    let row = |label: &str| -> Vec<String> {
        let l = report
            .lines()
            .find(|l| l.starts_with(&format!("| {label} |")))
            .unwrap_or_else(|| panic!("{report}"));
        l.trim_matches('|').split('|').skip(1).map(|c| c.trim().to_string()).collect()
    };
    let want = |mode: &str, f: &str| format!("{:.1}", modes[mode][f].as_f64().unwrap());
    assert_eq!(
        row("first token, new image"),
        [
            want("none", "ttft_new_ms"),
            want("voco", "ttft_new_ms"),
            want("htc", "ttft_new_ms"),
            want("htc+page", "ttft_new_ms")
        ]
    );
    assert_eq!(row("MGVQ encoder")[0], "0.0");
    assert!(report.contains("htc peak rss"), "{report}");
}

#[test]
fn the_report_divides_the_transformers_figures_by_htc_s() {
    let dir = common::tmp("bench", "report");
    std::fs::create_dir_all(&dir).unwrap();
    let row = |side: &str, mode: &str, k: f64| {
        let mut v = serde_json::json!({"side": side, "mode": mode, "mgvq_ms": 0.0});
        for f in FIELDS {
            v[f] = serde_json::json!(k * 10.0);
        }
        v.to_string()
    };
    let h = dir.join("htc.jsonl");
    let p = dir.join("peer.jsonl");
    std::fs::write(
        &h,
        [row("htc", "none", 1.0), row("htc", "htc", 0.5), r#"{"peak_rss_mib": 512}"#.into()].join("\n"),
    )
    .unwrap();
    std::fs::write(
        &p,
        [row("transformers", "none", 3.0), r#"{"peak_gpu_allocated_mib": 14000}"#.into()].join("\n"),
    )
    .unwrap();
    let out = std::process::Command::new("python3")
        .arg(root().join("bench/bench_gpu_peer.py"))
        .args(["report", "--htc", s(&h), "--peer", s(&p), "--gpu-mem", "htc=20480"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // transformers 30 ms against htc 10 ms (vanilla) and 5 ms (HTC).
    assert!(text.contains("| first token, new image | 3.00x | 6.00x |"), "{text}");
    assert!(text.contains("| first token, new image | 10.0 | 5.0 | 30.0 |"), "{text}");
    assert!(text.contains("transformers peak gpu allocated: 14000 MiB"), "{text}");
    assert!(text.contains("htc peak GPU memory used (nvidia-smi): 20480 MiB"), "{text}");
}

/// `htc bench --suite llm` on the tiny LLaMA fixture: the weights' reads it times count every
/// tensor of the checkpoint but the embedding table (a decoding step reads one row of it), and
/// every figure is a positive number. The fixture holds 256 positions, so of the suite's
/// contexts only the shortest runs.
#[test]
fn the_llm_suite_times_reading_the_weights_a_step_reads() {
    let model = root().join("fixtures/llama-tiny");
    let file = std::fs::read(model.join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&file).unwrap();
    let read: usize = tensors
        .tensors()
        .iter()
        .filter(|(name, _)| name != "model.embed_tokens.weight")
        .map(|(_, t)| t.data().len())
        .sum();
    let o = htc(&["bench", "--suite", "llm", "--model", s(&model), "--reps", "1"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    let line = out.lines().find(|l| l.starts_with("llm weights read once")).expect(&out);
    assert!(line.starts_with(&format!("llm weights read once, {read} bytes ")), "{line} ({read} bytes)");
    let figures: Vec<f64> = line
        .rsplit(": ")
        .next()
        .unwrap()
        .split(", ")
        .map(|f| f.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(figures.len(), 2, "{line}");
    assert!(figures.iter().all(|f| *f > 0.0 && f.is_finite()), "{line}");
}

#[test]
fn bad_benchmark_options_fail_with_a_clear_error() {
    let o = htc(&["bench", "--suite", "e2e", "--shape", "huge"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown --shape `huge` for --suite e2e (7b, tiny)"));
    let o = htc(&["bench", "--suite", "e2e", "--shape", "tiny", "--layers", "0"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--layers at least 1"));
    let o = htc(&["bench", "--suite", "nope"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown --suite `nope`"));
    let o = std::process::Command::new("bash")
        .arg(root().join("bench/gpu-bench.sh"))
        .arg("--fast")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown option --fast"));
}

/// `htc bench --suite memory` in f32 and f16 on the tiny shape: the same parameters, stored in
/// half the bytes, and a peak memory reported after building and after one answer (no figure
/// is compared: resident memory depends on the allocator).
#[test]
fn the_memory_benchmark_reports_each_dtype() {
    let mut rows = Vec::new();
    for dtype in ["f32", "f16"] {
        let json = common::tmp("bench", &format!("memory-{dtype}.jsonl"));
        let out = htc(&[
            "bench",
            "--suite",
            "memory",
            "--shape",
            "tiny",
            "--new-tokens",
            "3",
            "--dtype",
            dtype,
            "--json",
            s(&json),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("random weights, {dtype}, backend")), "{stdout}");
        assert!(stdout.contains(&format!("dtype {dtype}: ")) && stdout.contains("3 new tokens"), "{stdout}");
        let r = lines(&json).remove(0);
        assert_eq!(r["dtype"], dtype);
        assert!(r["peak_rss_mib"].as_f64().unwrap() >= r["peak_rss_built_mib"].as_f64().unwrap());
        rows.push(r);
    }
    assert_eq!(rows[0]["params"], rows[1]["params"]);
    let (f32_gib, f16_gib) =
        (rows[0]["stored_gib"].as_f64().unwrap(), rows[1]["stored_gib"].as_f64().unwrap());
    // Half the bytes but for the MGVQ tokenizer, which stays f32.
    assert!(f16_gib < 0.6 * f32_gib && f16_gib > 0.5 * f32_gib, "{f32_gib} vs {f16_gib}");
}
