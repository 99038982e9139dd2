//! The `htc ask` contract: prompt ids with image expansion, logits dumps, id output for
//! tokenizer-less snapshots, answers through the engine equal to transformers' for LLaVA and
//! plain LLaMA, and one clear error line for each kind of bad input.

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::{assert_close, fixtures, htc, s, Expected};

fn tmp(name: &str) -> PathBuf {
    common::tmp("cli", name)
}

fn ids_arg(v: &[i64]) -> String {
    v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")
}

/// Exits non-zero with exactly one `error:` line containing `needle`.
fn assert_fails(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "expected `{needle}` in: {err}");
}

#[test]
fn dump_logits_matches_transformers_for_both_llava_layouts() {
    let exp = Expected::open("llava-expected.safetensors");
    let want = exp.f32("logits").1;
    let pv = fixtures().join("llava-expected.safetensors");
    for (dir, ids) in [
        ("llava-hf-tiny", "input_ids_one"),
        ("llava-hf-tiny", "input_ids_expanded"),
        ("llava-liuhaotian-tiny", "input_ids_liuhaotian"),
    ] {
        let dump = tmp(&format!("{dir}-{ids}.safetensors"));
        let model = fixtures().join(dir);
        let out = htc(&[
            "ask",
            "--model",
            s(&model),
            "--pixel-values",
            s(&pv),
            "--prompt-ids",
            &ids_arg(&exp.i64(ids)),
            "--greedy",
            "--max-new-tokens",
            "8",
            "--dump-logits",
            s(&dump),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got = Expected::open(dump.to_str().unwrap());
        let (shape, logits) = got.f32("logits");
        assert_eq!(shape, vec![29, 128], "prefill after expansion x vocab");
        assert_close(&format!("{dir} {ids} dumped logits"), &logits, &want, 1e-4);
        // No tokenizer in the fixture: the generated ids are printed on one line.
        let printed: Vec<i64> =
            String::from_utf8_lossy(&out.stdout).split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(printed, exp.i64("greedy_ids"), "{dir} greedy ids vs transformers");
    }
}

/// Without a dump the question goes through the engine (as the server's do): the same
/// prompts, pre-expanded or not, give transformers' greedy ids on both LLaVA layouts.
#[test]
fn the_engine_answers_both_llava_layouts_like_transformers() {
    let exp = Expected::open("llava-expected.safetensors");
    let pv = fixtures().join("llava-expected.safetensors");
    for (dir, ids) in [
        ("llava-hf-tiny", "input_ids_one"),
        ("llava-hf-tiny", "input_ids_expanded"),
        ("llava-liuhaotian-tiny", "input_ids_liuhaotian"),
    ] {
        let model = fixtures().join(dir);
        let out = htc(&[
            "ask",
            "--model",
            s(&model),
            "--pixel-values",
            s(&pv),
            "--prompt-ids",
            &ids_arg(&exp.i64(ids)),
            "--greedy",
            "--max-new-tokens",
            "8",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let printed: Vec<i64> =
            String::from_utf8_lossy(&out.stdout).split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(
            printed,
            exp.i64("greedy_ids"),
            "{dir} {ids}: greedy ids through the engine vs transformers"
        );
    }
}

/// A plain LLaMA answers text-only questions through the engine with transformers' greedy
/// ids, and refuses a question with an image in one line.
#[test]
fn a_text_only_model_answers_text_and_refuses_an_image() {
    let exp = Expected::open("llama-tiny/expected.safetensors");
    let model = fixtures().join("llama-tiny");
    let want = exp.i64("greedy_ids");
    let ids = ids_arg(&exp.i64("input_ids"));
    let n = want.len().to_string();
    let out = htc(&["ask", "--model", s(&model), "--prompt-ids", &ids, "--greedy", "--max-new-tokens", &n]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Vec<i64> =
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(printed, want, "llama-tiny greedy ids vs transformers");
    let img = fixtures().join("images/gradient-45x30.png");
    assert_fails(
        &htc(&["ask", "--model", s(&model), "--image", s(&img), "--prompt-ids", &ids]),
        "takes no images",
    );
}

#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let llava = fixtures().join("llava-hf-tiny");
    let pv = fixtures().join("llava-expected.safetensors");
    // Missing model directory.
    assert_fails(&htc(&["ask", "--model", "/nonexistent/model", "--prompt-ids", "1,2"]), "does not exist");
    // Directory without config.json.
    let empty = tmp("empty-model");
    std::fs::create_dir_all(&empty).unwrap();
    assert_fails(&htc(&["ask", "--model", s(&empty), "--prompt-ids", "1,2"]), "missing config.json");
    // Unknown architecture.
    let odd = tmp("odd-model");
    std::fs::create_dir_all(&odd).unwrap();
    std::fs::write(
        odd.join("config.json"),
        r#"{"architectures": ["MambaForCausalLM"], "model_type": "mamba"}"#,
    )
    .unwrap();
    assert_fails(
        &htc(&["ask", "--model", s(&odd), "--prompt-ids", "1,2"]),
        "unknown architecture `MambaForCausalLM`",
    );
    // Shape mismatch between config and weights.
    let wrong = tmp("wrong-shape");
    std::fs::create_dir_all(&wrong).unwrap();
    std::fs::copy(llava.join("model.safetensors"), wrong.join("model.safetensors")).unwrap();
    let cfg = std::fs::read_to_string(llava.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 96", "\"intermediate_size\": 100");
    std::fs::write(wrong.join("config.json"), cfg).unwrap();
    assert_fails(&htc(&["ask", "--model", s(&wrong), "--prompt-ids", "1,2"]), "shape mismatch");
    // Corrupt image.
    let bad = tmp("corrupt.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nthis is not really a png").unwrap();
    assert_fails(
        &htc(&["ask", "--model", s(&llava), "--image", s(&bad), "--prompt-ids", "1,120,5"]),
        "corrupt",
    );
    // Image token without an image, and out-of-range ids.
    assert_fails(&htc(&["ask", "--model", s(&llava), "--prompt-ids", "1,120,5"]), "no image was given");
    assert_fails(
        &htc(&["ask", "--model", s(&llava), "--pixel-values", s(&pv), "--prompt-ids", "1,120,5000"]),
        "out of range",
    );
    // A text prompt needs a tokenizer.
    assert_fails(&htc(&["ask", "--model", s(&llava), "--prompt", "hi"]), "no tokenizer.json");
    // Pixel values of the wrong size.
    let clip_pv = fixtures().join("images/gradient-45x30.clip336.safetensors");
    assert_fails(
        &htc(&["ask", "--model", s(&llava), "--pixel-values", s(&clip_pv), "--prompt-ids", "1,120,5"]),
        "expects [1, 3, 16, 16]",
    );
    // Not a GGUF file.
    let fake = tmp("fake.gguf");
    std::fs::write(&fake, b"not gguf at all").unwrap();
    assert_fails(&htc(&["ask", "--model", s(&fake), "--prompt-ids", "1"]), "bad magic");
}

#[test]
fn image_files_run_through_the_preprocessor() {
    let llava = fixtures().join("llava-hf-tiny");
    let img = fixtures().join("images/gradient-45x30.png");
    let out = htc(&[
        "ask",
        "--model",
        s(&llava),
        "--image",
        s(&img),
        "--prompt-ids",
        "1,5,120,7",
        "--max-new-tokens",
        "3",
        "--greedy",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ids: Vec<u32> =
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|&i| i < 128));
}

/// A command whose reader has gone (`htc ... | head`) stops quietly: its first write to
/// stdout meets a closed pipe, and it exits successfully without a panic message.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::process::{Command, Stdio};
    let dir = tmp("closed-pipe");
    let mut child = Command::new(env!("CARGO_BIN_EXE_htc"))
        .args(["data", "shapes", "--out", s(&dir), "--split", "val", "--images", "1", "--seed", "1"])
        .env("HTC_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the command writes its summary line.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(dir.join("val.json").is_file(), "the data set is still written");
}
