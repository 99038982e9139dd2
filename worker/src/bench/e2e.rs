//! `htc bench --suite e2e`: one new image and one question, end to end and stage by stage (the
//! paper's Table 11), for vanilla LLaVA (mode `none`: every patch visible to the text),
//! VoCo-LLaMA (`voco`) and HTC (`htc`) on one randomly initialised model of a named shape, plus
//! the answer to a follow-up question on the cached image and the decoding speed; then the
//! process's peak memory. `--suite memory` ([`memory`]) builds the same model and reports the
//! memory one answer takes. `bench/gpu-bench.sh` runs it on a GPU next to transformers'
//! LLaVA-1.5 (`bench/bench_gpu_peer.py`) and prints the ratios.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Result};
use burn::tensor::{backend::Backend as _, Distribution, Tensor};
use htc_shared::config::{ClipVisionConfig, HtcConfig, HtcMode, LlamaConfig};
use serde_json::json;

use super::{bench_ids, clip336, peak_rss_mib, time_synced, Out};
use crate::backend::{self, Backend};
use crate::models::htc::{Htc, ImageTensors};
use crate::models::llama::Step;
use crate::models::llava::{self, Layout};

/// LLaVA-1.5's image token id.
const IMAGE_TOKEN: usize = 32000;

/// A model shape the benchmark builds: LLaVA-1.5-7B's (CLIP ViT-L/14-336, Vicuna-7B, the
/// paper's MGVQ) or a tiny one with the same structure for a CPU check.
struct Shape {
    vision: ClipVisionConfig,
    text: serde_json::Value,
    mgvq: htc_shared::mgvq::Config,
    discrete_hidden: usize,
}

fn shape(name: &str, llm_layers: Option<usize>, vision_layers: Option<usize>) -> Result<Shape> {
    let (vw, vl, d, inter, layers, heads, vocab) = match name {
        "7b" => (1024usize, 24usize, 4096usize, 11008usize, 32usize, 32usize, 32064usize),
        "tiny" => (64, 3, 128, 256, 2, 2, 32064),
        other => bail!("unknown --shape `{other}` for --suite e2e (7b, tiny)"),
    };
    let vl = vision_layers.unwrap_or(vl);
    let layers = llm_layers.unwrap_or(layers);
    if vl < 2 || layers == 0 {
        bail!("--vision-layers must be at least 2 (LLaVA reads the second-to-last) and --layers at least 1");
    }
    let vision = clip336(vw, vl);
    let text = json!({
        "vocab_size": vocab, "hidden_size": d, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": heads, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 4096
    });
    let mut mgvq = htc_shared::mgvq::Config::f16c32_g8();
    if name == "tiny" {
        mgvq.width_list = mgvq.width_list.iter().map(|w| (w / 8).max(16)).collect();
        mgvq.depth_list = vec![0, 1, 1, 1, 1];
    }
    let discrete_hidden = if name == "tiny" { 256 } else { 8192 };
    Ok(Shape { vision, text, mgvq, discrete_hidden })
}

/// What `htc bench --suite e2e` and `--suite memory` build and time.
pub struct Args<'a> {
    /// `7b` or `tiny`.
    pub shape: &'a str,
    /// LLM layers (default: the shape's).
    pub llm_layers: Option<usize>,
    /// CLIP layers (default: the shape's).
    pub vision_layers: Option<usize>,
    /// Timed repetitions per measurement.
    pub reps: usize,
    /// Tokens decoded after the question.
    pub new_tokens: usize,
    /// Tokens in the question.
    pub question_tokens: usize,
    /// Where to write the JSON lines, if anywhere.
    pub json: Option<&'a std::path::Path>,
}

/// The randomly initialised model of `a`'s shape, its text config, and the seconds it took.
fn build(out: Out, a: &Args) -> Result<(Htc<Backend>, LlamaConfig, f64)> {
    let device = backend::device();
    let s = shape(a.shape, a.llm_layers, a.vision_layers)?;
    let text = LlamaConfig::from_json(&s.text)?;
    let lc = llava::Config {
        layout: Layout::LlavaHf,
        text: text.clone(),
        vision: s.vision.clone(),
        image_token_id: IMAGE_TOKEN as i64,
        select_layer: -2,
        projector_mlp: true,
    };
    let hc = HtcConfig::paper(s.mgvq.clone(), s.discrete_hidden);
    let t = Instant::now();
    let model = Htc::<Backend>::init(&lc, &hc, &device)?
        .with_row_split(backend::row_split())
        .with_kv_dtype(crate::runtime::kv_dtype());
    Backend::sync(&device).map_err(|e| anyhow::anyhow!("device sync failed: {e:?}"))?;
    let init_s = t.elapsed().as_secs_f64();
    writeln!(
        out,
        "model: {} shape (CLIP {}w/{}L @336, LLM {}w/{}L, vocab {}), random weights, {}, backend {}, built in {:.1} s",
        a.shape,
        s.vision.hidden_size,
        s.vision.num_hidden_layers,
        text.hidden_size,
        text.num_hidden_layers,
        text.vocab_size,
        backend::dtype().name(),
        backend::name(),
        init_s
    )?;
    Ok((model, text, init_s))
}

/// Bytes of every float parameter in its own dtype (the MGVQ tokenizer stays f32).
struct StoredBytes(u64);

impl burn::module::ModuleVisitor<Backend> for StoredBytes {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<Backend, D>>) {
        let t = param.val();
        self.0 += (t.shape().num_elements() * t.dtype().size()) as u64;
    }
}

/// Floating-point operations of the vision tower up to LLaVA's feature layer (the second to
/// last): patch embedding, then per layer the projections, the MLP and attention's two
/// products (a multiply-add counts two).
fn vit_flops(v: &ClipVisionConfig) -> f64 {
    let (p, d, i) = (v.patch_size, v.hidden_size as f64, v.intermediate_size as f64);
    let n = ((v.image_size / p) * (v.image_size / p) + 1) as f64;
    let layers = v.num_hidden_layers.saturating_sub(1) as f64;
    2.0 * (n - 1.0) * (3 * p * p) as f64 * d
        + layers * (2.0 * n * (4.0 * d * d + 2.0 * d * i) + 4.0 * n * n * d)
}

/// A random image for both encoders.
fn random_image(device: &burn::tensor::Device<Backend>) -> ImageTensors<Backend> {
    ImageTensors {
        clip: Tensor::random([1, 3, 336, 336], Distribution::Normal(0.0, 1.0), device),
        mgvq: Some(Tensor::random([1, 3, 336, 336], Distribution::Uniform(-1.0, 1.0), device)),
        codes: None,
    }
}

/// `htc bench --suite memory`: the memory one HTC answer takes in the current `--dtype`: the
/// model built at random, then one new image compressed (vision tower, MGVQ, the prefix through
/// the LLM), the question and `new_tokens` greedy steps; prints the parameters' stored size (each
/// in its own dtype) and the peak resident memory after building and after answering.
pub fn memory(out: Out, a: Args) -> Result<()> {
    let device = backend::device();
    let (model, text, init_s) = build(out, &a)?;
    let params = burn::module::Module::num_params(&model);
    let mut bytes = StoredBytes(0);
    burn::module::Module::visit(&model, &mut bytes);
    let stored = bytes.0 as f64 / (1u64 << 30) as f64;
    let built = peak_rss_mib();
    let m = model.with_mode(HtcMode::Htc, true)?;
    let question = bench_ids(a.question_tokens.max(1), text.vocab_size);
    let t = Instant::now();
    let c = m.compress(&random_image(&device))?;
    let p = m.answer_prompt(&c, &question)?;
    let (mut seq, mut logits, _) =
        crate::runtime::decode::Sequence::prefill(&m.llava.llm, p, Default::default(), vec![], false)?;
    let mut ids = Vec::new();
    while ids.len() < a.new_tokens {
        let Some(id) = seq.accept(&logits) else { break };
        ids.push(id);
        logits = seq.step(&m.llava.llm)?;
    }
    let answer_s = t.elapsed().as_secs_f64();
    let peak = peak_rss_mib();
    let mib = |x: Option<f64>| x.map_or("unknown".to_string(), |v| format!("{v:.0} MiB"));
    writeln!(
        out,
        "dtype {}: {:.2} B parameters, {stored:.2} GiB stored; peak resident memory {} after building, {} after one \
         answer (a new image compressed, {} question tokens, {} new tokens; {answer_s:.1} s)",
        backend::dtype().name(),
        params as f64 / 1e9,
        mib(built),
        mib(peak),
        question.len(),
        ids.len()
    )?;
    if let Some(path) = a.json {
        let line = json!({
            "side": "htc", "suite": "memory", "backend": backend::name(), "dtype": backend::dtype().name(),
            "shape": a.shape, "params": params, "stored_gib": stored, "peak_rss_built_mib": built,
            "peak_rss_mib": peak, "init_s": init_s, "answer_s": answer_s,
        });
        std::fs::write(path, format!("{line}\n"))?;
    }
    Ok(())
}

/// The stage table of every mode, then the peak memory; the same as JSON lines with `a.json`.
pub fn run(out: Out, a: Args) -> Result<()> {
    let device = backend::device();
    let (model, text, init_s) = build(out, &a)?;
    let img = random_image(&device);
    // The ids `bench/bench_gpu_peer.py` feeds transformers, where the image token's id
    // would be taken for an image: it moves one up on both sides.
    let ids = |n: usize| -> Vec<u32> {
        bench_ids(n.max(1), text.vocab_size)
            .into_iter()
            .map(|i| if i as usize == IMAGE_TOKEN { i + 1 } else { i })
            .collect()
    };
    let (question, feed) = (ids(a.question_tokens), ids(a.new_tokens));
    let mut json_out = a.json.map(std::fs::File::create).transpose()?;
    writeln!(
        out,
        "{:<8} {:>7} {:>9} {:>8} {:>10} {:>10} {:>11} {:>9} {:>12} {:>10}",
        "mode",
        "prefix",
        "vision",
        "mgvq",
        "projection",
        "llm prefill",
        "ttft new",
        "ttft cached",
        "decode ms/tok",
        "tok/s"
    )?;
    // The page's codes: what a browser that ran the MGVQ encoder sends with the image (the
    // worker then skips its encoder); computed once here, as the page would.
    let page_codes = match &model.mgvq {
        Some(enc) => Some(enc.encode(img.mgvq.clone().expect("set above"))?.codes),
        None => None,
    };
    let rows = [(HtcMode::None, false), (HtcMode::Voco, false), (HtcMode::Htc, false), (HtcMode::Htc, true)];
    // The HTC row's vision and MGVQ times, for the arithmetic rates below.
    let mut htc_times = (0.0, 0.0);
    for (mode, from_page) in rows {
        if from_page && page_codes.is_none() {
            continue;
        }
        let img = ImageTensors {
            clip: img.clip.clone(),
            mgvq: img.mgvq.clone(),
            codes: if from_page { page_codes.clone() } else { None },
        };
        let m = model.clone().with_mode(mode, true)?;
        let llava = &m.llava;
        let feats = llava.vision.patch_features(img.clip.clone(), llava.select_layer());
        let vision = time_synced(a.reps, || {
            let _ = llava.vision.patch_features(img.clip.clone(), llava.select_layer());
            Ok(())
        })?;
        let mut projection = time_synced(a.reps, || {
            let _ = llava.projector.forward(feats.clone());
            Ok(())
        })?;
        let mut mgvq = 0.0;
        if let (HtcMode::Htc, Some(enc), Some(p)) = (mode, &m.mgvq, &m.discrete) {
            let px = img.mgvq.clone().expect("set above");
            if !from_page {
                mgvq = time_synced(a.reps, || Ok(enc.encode(px.clone()).map(|_| ())?))?;
            }
            let q = enc.encode(px)?.q;
            projection += time_synced(a.reps, || {
                let _ = p.forward(q.clone());
                Ok(())
            })?;
        }
        let embeds = m.prefix_embeds(&img)?;
        let prefill = time_synced(a.reps, || m.compress_embeds(embeds.clone()).map(|_| ()))?;
        let c = m.compress(&img)?;
        let answer = |c: &crate::models::htc::CompressedImage<Backend>| -> Result<Vec<f32>> {
            let p = m.answer_prompt(c, &question)?;
            let (_, row, _) =
                crate::runtime::decode::Sequence::prefill(&llava.llm, p, Default::default(), vec![], false)?;
            Ok(row)
        };
        let ttft_cached = time_synced(a.reps, || answer(&c).map(|_| ()))?;
        let ttft_new = time_synced(a.reps, || answer(&m.compress(&img)?).map(|_| ()))?;
        // Decoding after the question: fixed ids, the logits of every step read back.
        let p = m.answer_prompt(&c, &question)?;
        let start = p.first_position + question.len();
        let positions: Vec<usize> = (p.first_position..start).collect();
        let mut cache = p.cache;
        let _ = llava.llm.forward(
            p.embeds,
            Step { positions: &positions, mask: p.mask, want_attention: false, self_only: 0 },
            &mut cache,
        );
        let t = Instant::now();
        for (pos, &id) in (start..).zip(&feed) {
            let ps = [pos];
            let o = llava.llm.forward(
                llava.llm.embed(&[id]),
                Step { positions: &ps, mask: None, want_attention: false, self_only: 0 },
                &mut cache,
            );
            let _ = llava.llm.logits(o.hidden).into_data();
        }
        let decode = t.elapsed().as_secs_f64() / feed.len() as f64;
        if (mode, from_page) == (HtcMode::Htc, false) {
            htc_times = (vision, mgvq);
        }
        let name = match (mode, from_page) {
            (HtcMode::None, _) => "none",
            (HtcMode::Voco, _) => "voco",
            (_, false) => "htc",
            (_, true) => "htc+page",
        };
        let prefix_len = m.layout(0).len();
        let ms = |x: f64| format!("{:.1}", x * 1e3);
        writeln!(
            out,
            "{:<8} {:>7} {:>9} {:>8} {:>10} {:>10} {:>11} {:>9} {:>12} {:>10.1}",
            name,
            prefix_len,
            ms(vision),
            ms(mgvq),
            ms(projection),
            ms(prefill),
            ms(ttft_new),
            ms(ttft_cached),
            format!("{:.2}", decode * 1e3),
            1.0 / decode
        )?;
        if let Some(f) = json_out.as_mut() {
            writeln!(
                f,
                "{}",
                json!({
                    "side": "htc", "backend": backend::name(), "dtype": backend::dtype().name(), "shape": a.shape, "mode": name,
                    "prefix_tokens": prefix_len, "question_tokens": question.len(),
                    "vision_ms": vision * 1e3, "mgvq_ms": mgvq * 1e3, "projection_ms": projection * 1e3,
                    "llm_prefill_ms": prefill * 1e3, "ttft_new_ms": ttft_new * 1e3,
                    "ttft_cached_ms": ttft_cached * 1e3, "decode_ms_per_token": decode * 1e3,
                    "decode_tok_s": 1.0 / decode, "new_tokens": feed.len(),
                })
            )?;
        }
    }
    writeln!(
        out,
        "columns: ms per call; prefix = tokens before the question; llm prefill = the prefix's embeddings through the LLM \
         into the kept cache (with the <voco> attention maps); ttft new = the image from its pixels (encoders, projection, prefill) + {} question tokens + first logits; \
         ttft cached = the same on the compressed image; decode = {} steps after the question, logits read back; \
         htc+page = htc with the MGVQ codes a page computed sent along (the worker runs no MGVQ encoder)",
        question.len(),
        feed.len()
    )?;
    let s = shape(a.shape, a.llm_layers, a.vision_layers)?;
    let (vit, mg) = (vit_flops(&s.vision), s.mgvq.encoder_flops());
    writeln!(
        out,
        "arithmetic: vision tower {:.1} GFLOP at {:.0} GFLOP/s, MGVQ encoder {:.1} GFLOP at {:.0} GFLOP/s \
         (MGVQ/vision: {:.2}x the work, {:.2}x the time)",
        vit / 1e9,
        vit / htc_times.0 / 1e9,
        mg / 1e9,
        mg / htc_times.1 / 1e9,
        mg / vit,
        htc_times.1 / htc_times.0
    )?;
    let peak = peak_rss_mib();
    if let Some(p) = peak {
        writeln!(out, "peak resident memory: {p:.0} MiB")?;
    }
    if let Some(f) = json_out.as_mut() {
        writeln!(f, "{}", json!({"side": "htc", "peak_rss_mib": peak, "init_s": init_s}))?;
    }
    Ok(())
}
