//! Numerical parity with HF transformers on the committed fixtures
//! (`fixtures/make_fixtures.py`). Tolerance everywhere: f32, max abs error <= 1e-4 x the
//! output scale (max |reference|, at least 1).

mod common;

use burn::tensor::{Tensor, TensorData};
use common::{assert_close, fixtures, to_vec, Expected};
use htc_worker::backend::{self, Backend};
use htc_worker::formats::checkpoint::{AnyModel, Snapshot};
use htc_worker::formats::{Loader, WeightSource};
use htc_worker::kernels::kv_cache::KvDtype;
use htc_worker::models::clip::{ClipVision, Config as ClipConfig};
use htc_worker::models::llama::{Llama, Step};

const TOL: f32 = 1e-4;

fn json(rel: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join(rel)).unwrap()).unwrap()
}

#[test]
fn clip_hidden_states_match_every_layer() {
    let device = backend::device();
    let cfg = ClipConfig::from_json(&json("clip-tiny/config.json")).unwrap();
    let src = WeightSource::open_dir(&fixtures().join("clip-tiny")).unwrap();
    let clip = ClipVision::<Backend>::load(&Loader::new(&src, &device), &cfg).unwrap();
    let exp = Expected::open("clip-tiny/expected.safetensors");
    let (ps, pixels) = exp.f32("pixel_values");
    let (hs_shape, hs) = exp.f32("hidden_states");
    let pixels =
        Tensor::<Backend, 4>::from_data(TensorData::new(pixels, [ps[0], ps[1], ps[2], ps[3]]), &device);
    let per = hs.len() / hs_shape[0];
    // As burn's operations, then with the fused host kernels of CPU inference (layer norms,
    // softmax, quick GELU; `kernels::host`), against transformers either way, and the two
    // within 1e-5 of each other's scale.
    let plain = clip.forward(pixels.clone(), None);
    let fused = clip.clone().with_host_kernels(true).forward(pixels, None);
    for (what, states) in [("", &plain), ("fused ", &fused)] {
        assert_eq!(states.len(), hs_shape[0], "number of hidden states");
        for (i, s) in states.iter().enumerate() {
            let want = &hs[i * per..(i + 1) * per];
            assert_close(&format!("{what}CLIP hidden_states[{i}]"), &to_vec(s.clone()), want, TOL);
        }
    }
    for (i, (p, f)) in plain.into_iter().zip(fused).enumerate() {
        assert_close(&format!("fused against plain, hidden_states[{i}]"), &to_vec(f), &to_vec(p), 1e-5);
    }
}

fn tiny_llama() -> (Llama<Backend>, Expected) {
    let device = backend::device();
    let snap = Snapshot::<Backend>::open(&fixtures().join("llama-tiny"), &device).unwrap();
    let AnyModel::Llama(m) = snap.model else { panic!("llama-tiny must load as llama") };
    (m, Expected::open("llama-tiny/expected.safetensors"))
}

/// Logits of every position of `ids` in one forward pass from an empty cache.
fn full_logits(m: &Llama<Backend>, ids: &[u32], pos: &[usize]) -> Vec<f32> {
    to_vec(
        m.logits(
            m.forward(
                m.embed(ids),
                Step { positions: pos, mask: None, want_attention: false, self_only: 0 },
                &mut m.new_cache(),
            )
            .hidden,
        ),
    )
}

fn ids_u32(v: &[i64]) -> Vec<u32> {
    v.iter().map(|&x| x as u32).collect()
}

#[test]
fn llama_causal_and_custom_mask_logits_match() {
    let (m, exp) = tiny_llama();
    let device = backend::device();
    let ids = ids_u32(&exp.i64("input_ids"));
    let pos: Vec<usize> = (0..ids.len()).collect();
    let out = m.forward(
        m.embed(&ids),
        Step { positions: &pos, mask: None, want_attention: false, self_only: 0 },
        &mut m.new_cache(),
    );
    assert_close("causal logits", &to_vec(m.logits(out.hidden)), &exp.f32("causal_logits").1, TOL);

    let (ms, mask) = exp.f32("custom_mask");
    let mask = Tensor::<Backend, 2>::from_data(TensorData::new(mask, [ms[0], ms[1]]), &device);
    let out = m.forward(
        m.embed(&ids),
        Step { positions: &pos, mask: Some(mask), want_attention: false, self_only: 0 },
        &mut m.new_cache(),
    );
    let got = to_vec(m.logits(out.hidden));
    assert_close("custom-mask logits", &got, &exp.f32("custom_logits").1, TOL);
    // The custom mask must actually change the result.
    let causal = exp.f32("causal_logits").1;
    assert!(got.iter().zip(&causal).any(|(a, b)| (a - b).abs() > 1e-2));
}

/// A prefill split over threads (how the CPU engine prefills a long prompt: blocks of query
/// rows on rayon's pool) gives one pass's logits and attention maps, causal and under a
/// custom mask, within 1e-5 x the logits' scale (the blocks' products may round differently).
#[test]
fn a_prefill_in_row_blocks_on_threads_equals_one_pass() {
    let (m, _) = tiny_llama();
    let device = backend::device();
    // 150 positions: at the tiny model's width the blocks hold 64 rows at 2 threads, 50 at 3.
    let t = 150;
    let ids: Vec<u32> = (0..t as u32).map(|i| (i * 37 + 11) % 128).collect();
    let pos: Vec<usize> = (0..t).collect();
    // A mask that is not causal: every query also sees the first 10 positions' future
    // neighbour.
    let custom: Vec<f32> = (0..t)
        .flat_map(|q| (0..t).map(move |k| if k <= q || (q < 10 && k == q + 1) { 0.0 } else { f32::MIN }))
        .collect();
    let run = |m: &Llama<Backend>, mask: Option<&Vec<f32>>| {
        let mask = mask.map(|d| Tensor::<Backend, 2>::from_data(TensorData::new(d.clone(), [t, t]), &device));
        let out = m.forward(
            m.embed(&ids),
            Step { positions: &pos, mask, want_attention: true, self_only: 0 },
            &mut m.new_cache(),
        );
        let attention: Vec<f32> = out.attention.into_iter().flat_map(to_vec).collect();
        (to_vec(m.logits(out.hidden)), attention)
    };
    for mask in [None, Some(&custom)] {
        let (logits, attention) = run(&m, mask);
        assert_eq!(attention.len(), m.config().num_hidden_layers * t * t);
        for split in [2, 3] {
            let (l, a) = run(&m.clone().with_row_split(split), mask);
            let what = if mask.is_some() { "custom mask" } else { "causal" };
            assert_close(&format!("{what} logits, split {split}"), &l, &logits, 1e-5);
            assert_close(&format!("{what} attention, split {split}"), &a, &attention, 1e-5);
        }
    }
}

/// A long input after a cached prefix (a follow-up turn), in row blocks that each see the
/// keys up to their last row (the causal mask lets them leave out the rest), gives one pass's
/// logits and attention maps.
#[test]
fn a_prefill_after_a_cached_prefix_in_row_blocks_equals_one_pass() {
    let (m, _) = tiny_llama();
    let (first, then) = (40, 150);
    let ids: Vec<u32> = (0..(first + then) as u32).map(|i| (i * 53 + 7) % 128).collect();
    let run = |m: &Llama<Backend>| {
        let mut cache = m.new_cache();
        let p0: Vec<usize> = (0..first).collect();
        let step = Step { positions: &p0, mask: None, want_attention: false, self_only: 0 };
        let _ = m.forward(m.embed(&ids[..first]), step, &mut cache);
        let p1: Vec<usize> = (first..first + then).collect();
        let step = Step { positions: &p1, mask: None, want_attention: true, self_only: 0 };
        let out = m.forward(m.embed(&ids[first..]), step, &mut cache);
        let attention: Vec<f32> = out.attention.into_iter().flat_map(to_vec).collect();
        (to_vec(m.logits(out.hidden)), attention)
    };
    let (logits, attention) = run(&m);
    assert_eq!(attention.len(), m.config().num_hidden_layers * then * (first + then));
    // The keys after a row's position get probability 0, the ones before it some.
    assert_eq!(attention[first + 1], 0.0);
    assert!(attention[first] > 0.0);
    for split in [2, 3] {
        let (l, a) = run(&m.clone().with_row_split(split));
        assert_close(&format!("logits after a prefix, split {split}"), &l, &logits, 1e-5);
        assert_close(&format!("attention after a prefix, split {split}"), &a, &attention, 1e-5);
    }
}

#[test]
fn kv_cache_decoding_equals_full_recompute() {
    let (m, exp) = tiny_llama();
    // Once with one matmul per product, once with decoding steps split over 3 threads (how
    // the CPU engine decodes): both against one full recompute without splitting.
    for split in [1, 3] {
        kv_cache_decoding_equals_full_recompute_with(&m, &exp, split);
    }
}

fn kv_cache_decoding_equals_full_recompute_with(m: &Llama<Backend>, exp: &Expected, split: usize) {
    let ids = ids_u32(&exp.i64("input_ids"));
    let t = ids.len();
    // Full recompute of all t positions.
    let pos: Vec<usize> = (0..t).collect();
    let full = full_logits(m, &ids, &pos);
    // Prefill 5, then one token at a time through the cache.
    let m = m.clone().with_row_split(split);
    let mut cache = m.new_cache();
    let p0: Vec<usize> = (0..5).collect();
    let mut got = to_vec(
        m.logits(
            m.forward(
                m.embed(&ids[..5]),
                Step { positions: &p0, mask: None, want_attention: false, self_only: 0 },
                &mut cache,
            )
            .hidden,
        ),
    );
    for i in 5..t {
        let o = m.forward(
            m.embed(&ids[i..i + 1]),
            Step { positions: &[i], mask: None, want_attention: false, self_only: 0 },
            &mut cache,
        );
        got.extend(to_vec(m.logits(o.hidden)));
    }
    assert_eq!(cache.seq_len(), t);
    assert_close(&format!("cached decode (split {split}) vs recompute"), &got, &full, 1e-5);
}

#[test]
fn llama_greedy_generation_matches_hf_generate() {
    let (m, exp) = tiny_llama();
    let ids = ids_u32(&exp.i64("input_ids"));
    let want = ids_u32(&exp.i64("greedy_ids"));
    for split in [1, 2, 3] {
        let m = m.clone().with_row_split(split);
        let g = htc_worker::runtime::decode::generate(
            &m,
            m.embed(&ids),
            &[],
            &htc_worker::runtime::sampling::Sampling::greedy(want.len()),
            false,
            |_| std::ops::ControlFlow::Continue(()),
        )
        .unwrap();
        assert_eq!(g.ids, want, "greedy ids with decoding split over {split} thread(s)");
    }
}

fn llava_logits(dir: &str, ids_name: &str) -> Vec<f32> {
    let device = backend::device();
    let snap = Snapshot::<Backend>::open(&fixtures().join(dir), &device).unwrap();
    let AnyModel::Llava { model, config, .. } = &snap.model else { panic!("{dir} must load as llava") };
    let exp = Expected::open("llava-expected.safetensors");
    let (ps, pixels) = exp.f32("pixel_values");
    let pixels =
        Tensor::<Backend, 4>::from_data(TensorData::new(pixels, [ps[0], ps[1], ps[2], ps[3]]), &device);
    let ids = htc_worker::models::llava::expand_image_tokens(
        &exp.i64(ids_name),
        config.image_token_id,
        config.num_image_tokens(),
    )
    .unwrap();
    let embeds = model.splice(&ids, config.image_token_id, Some(model.image_features(pixels))).unwrap();
    let pos: Vec<usize> = (0..ids.len()).collect();
    let out = model.llm.forward(
        embeds,
        Step { positions: &pos, mask: None, want_attention: false, self_only: 0 },
        &mut model.llm.new_cache(),
    );
    to_vec(model.llm.logits(out.hidden))
}

#[test]
fn llava_hf_logits_match_end_to_end() {
    let want = Expected::open("llava-expected.safetensors").f32("logits").1;
    assert_close("llava-hf (one image token)", &llava_logits("llava-hf-tiny", "input_ids_one"), &want, TOL);
    assert_close("llava-hf (pre-expanded)", &llava_logits("llava-hf-tiny", "input_ids_expanded"), &want, TOL);
}

#[test]
fn liuhaotian_snapshot_matches_the_same_reference() {
    let want = Expected::open("llava-expected.safetensors").f32("logits").1;
    assert_close(
        "liuhaotian layout",
        &llava_logits("llava-liuhaotian-tiny", "input_ids_liuhaotian"),
        &want,
        TOL,
    );
}

#[test]
fn preprocessing_matches_clip_image_processor() {
    use htc_shared::preprocess::{decode_image, ClipPreprocess, DecodeLimits};
    let bytes = std::fs::read(fixtures().join("images/gradient-45x30.png")).unwrap();
    let img = decode_image(&bytes, DecodeLimits::default()).unwrap();
    let got = ClipPreprocess::llava(336).apply(&img);
    let (shape, want) = Expected::open("images/gradient-45x30.clip336.safetensors").f32("pixel_values");
    assert_eq!(shape, vec![3, 336, 336]);
    // PIL and the image crate both resample bicubically (a = -0.5) and round to u8, with
    // different fixed-point arithmetic: allow one u8 step (1/255/std ~ 0.0152) per pixel and
    // require the mean error to be far below it.
    let step = 1.0 / 255.0 / htc_shared::preprocess::CLIP_STD[1] * 1.01;
    let max = got.iter().zip(&want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    let mean = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).sum::<f32>() / got.len() as f32;
    eprintln!("preprocess: max {max:.4}, mean {mean:.5}, one u8 step {step:.4}");
    assert!(max <= step, "max error {max} exceeds one u8 step {step}");
    assert!(mean <= step / 10.0, "mean error {mean} too large");
}

#[test]
fn batched_decoding_equals_decoding_each_sequence_alone() {
    let (m, exp) = tiny_llama();
    for split in [1, 3] {
        batched_decoding_equals_decoding_each_sequence_alone_with(&m.clone().with_row_split(split), &exp);
    }
}

fn batched_decoding_equals_decoding_each_sequence_alone_with(m: &Llama<Backend>, exp: &Expected) {
    let ids = ids_u32(&exp.i64("input_ids"));
    // Three sequences with different cached lengths.
    let prompts: Vec<&[u32]> = vec![&ids[..3], &ids[..7], &ids[2..12]];
    let prefill = |p: &[u32]| {
        let mut c = m.new_cache();
        let pos: Vec<usize> = (0..p.len()).collect();
        m.forward(
            m.embed(p),
            Step { positions: &pos, mask: None, want_attention: false, self_only: 0 },
            &mut c,
        );
        c
    };
    let mut alone: Vec<_> = prompts.iter().map(|p| prefill(p)).collect();
    let mut batch: Vec<_> = prompts.iter().map(|p| prefill(p)).collect();
    for step in 0..3u32 {
        let next: Vec<u32> = (0..3).map(|i| 10 + step * 3 + i).collect();
        let pos: Vec<usize> = prompts.iter().map(|p| p.len() + step as usize).collect();
        let got = to_vec(m.decode_batch(&next, &pos, &mut batch));
        let mut want = vec![];
        for i in 0..3 {
            let o = m.forward(
                m.embed(&next[i..i + 1]),
                Step { positions: &pos[i..i + 1], mask: None, want_attention: false, self_only: 0 },
                &mut alone[i],
            );
            want.extend(to_vec(m.logits(o.hidden)));
        }
        assert_close(&format!("batched decode step {step}"), &got, &want, 1e-5);
    }
    for (a, b) in alone.iter().zip(&batch) {
        assert_eq!(a.seq_len(), b.seq_len(), "padding is dropped after each step");
    }
}

#[test]
fn split_products_equal_one_matmul() {
    use burn::nn::LinearConfig;
    use burn::tensor::Distribution;
    use htc_worker::kernels::linear::{split_linear, SPLIT_MAX_ROWS};
    let device = backend::device();
    let linear = LinearConfig::new(200, 70).init::<Backend>(&device);
    assert!(linear.bias.is_some(), "the bias is added once, after the partial sums");
    for rows in [1, 3, SPLIT_MAX_ROWS] {
        let x = Tensor::<Backend, 3>::random([1, rows, 200], Distribution::Default, &device);
        let want = to_vec(linear.forward(x.clone()));
        for parts in [2, 3, 7] {
            let got = split_linear(&linear, x.clone(), parts);
            assert_eq!(got.dims(), [1, rows, 70]);
            assert_close(&format!("{rows} rows split in {parts}"), &to_vec(got), &want, 1e-5);
        }
    }
    // Above the row limit the product is one matmul: bit for bit.
    let x = Tensor::<Backend, 2>::random([SPLIT_MAX_ROWS + 1, 200], Distribution::Default, &device);
    assert_eq!(to_vec(split_linear(&linear, x.clone(), 3)), to_vec(linear.forward(x)));
}

/// Projections of one input joined into one product (how the CPU engine runs q/k/v and
/// gate/up): the joined product equals the separate ones (within 1e-6 of their scale: the
/// kernel may block a wider product's sums differently), each projection keeps its values bit
/// for bit as a view of the joined weight, and projections that
/// cannot be joined (a LoRA adapter, a bias on some only) are left as they were.
#[test]
fn joined_projections_equal_separate_products() {
    use burn::nn::LinearConfig;
    use burn::tensor::Distribution;
    use htc_worker::models::lora::{join_projections, split_last, Lora, Proj};
    let device = backend::device();
    let proj = |o: usize, bias: bool| Proj::<Backend> {
        linear: LinearConfig::new(48, o).with_bias(bias).init(&device),
        lora: None,
        split: 1,
    };
    let x = Tensor::<Backend, 3>::random([2, 5, 48], Distribution::Default, &device);
    for bias in [false, true] {
        let (mut q, mut k, mut v) = (proj(32, bias), proj(16, bias), proj(16, bias));
        let want: Vec<Vec<f32>> = [&q, &k, &v].iter().map(|p| to_vec(p.forward(x.clone()))).collect();
        let before = to_vec(k.linear.weight.val());
        let ids = [q.linear.weight.id, k.linear.weight.id, v.linear.weight.id];
        let qkv = join_projections(&mut [&mut q, &mut k, &mut v]).expect("joinable");
        assert_eq!(qkv.weight.dims(), [48, 64]);
        assert_eq!(qkv.bias.is_some(), bias);
        let parts = split_last(qkv.forward(x.clone()), &[32, 16, 16]);
        for (i, (got, p)) in parts.into_iter().zip([&q, &k, &v]).enumerate() {
            assert_close(
                &format!("part {i} of the joined product (bias {bias})"),
                &to_vec(got),
                &want[i],
                1e-6,
            );
            assert_eq!(to_vec(p.forward(x.clone())), want[i], "projection {i} as a view (bias {bias})");
        }
        assert_eq!(to_vec(k.linear.weight.val()), before);
        assert_eq!([q.linear.weight.id, k.linear.weight.id, v.linear.weight.id], ids, "parameter ids kept");
    }
    // Not joinable: a bias on one projection only, or a LoRA adapter.
    let (mut a, mut b) = (proj(8, true), proj(8, false));
    assert!(join_projections(&mut [&mut a, &mut b]).is_none());
    let (mut a, mut b) = (proj(8, false), proj(8, false));
    let vb = Loader::<Backend>::init(&device);
    a.lora = Some(Lora::load(&vb.pp("a"), 48, 8, 4, 2.0).expect("fresh adapter"));
    let before = to_vec(b.linear.weight.val());
    assert!(join_projections(&mut [&mut a, &mut b]).is_none());
    assert_eq!(to_vec(b.linear.weight.val()), before, "left as it was");
}

/// Long decoding goes through the cache's tail and its folds (every 256 appended positions):
/// 300 steps one token at a time give the logits of one full recompute, and `seal` keeps
/// every position.
#[test]
fn long_decoding_through_the_cache_tail_equals_full_recompute() {
    // Split over 2 or 3 threads, the steps decode over the cache on the host, and past 256
    // cached positions split its attention by positions over the threads.
    let (m, _) = tiny_llama();
    for split in [1, 2, 3] {
        long_decoding_equals_full_recompute_with(&m.clone().with_row_split(split), 1e-4);
    }
}

/// Decoding over a cache stored in f16 (`--kv-cache f16`; CPU inference, 2 threads) stays
/// within 5e-4 × the largest logit of the full recompute in f32 at every checked step up to
/// 305 positions (the keys and values rounded to 11 significant bits; measured: at most
/// 1.1e-4 × the largest logit, where the f32 cache stays within 5e-7).
#[test]
fn long_decoding_over_an_f16_cache_stays_close_to_f32() {
    let (m, _) = tiny_llama();
    long_decoding_equals_full_recompute_with(&m.with_row_split(2).with_kv_dtype(KvDtype::F16), 5e-4);
}

fn long_decoding_equals_full_recompute_with(m: &Llama<Backend>, tol: f32) {
    let n = 305;
    let ids: Vec<u32> = (0..n).map(|i| (3 + i * 7 % 90) as u32).collect();
    let pos: Vec<usize> = (0..n).collect();
    let full = full_logits(m, &ids, &pos);
    let vocab = full.len() / n;
    let mut cache = m.new_cache();
    m.forward(
        m.embed(&ids[..5]),
        Step { positions: &pos[..5], mask: None, want_attention: false, self_only: 0 },
        &mut cache,
    );
    for i in 5..n {
        let o = m.forward(
            m.embed(&ids[i..i + 1]),
            Step { positions: &[i], mask: None, want_attention: false, self_only: 0 },
            &mut cache,
        );
        assert_eq!(cache.seq_len(), i + 1);
        if i % 50 == 0 || i == n - 1 {
            let got = to_vec(m.logits(o.hidden));
            assert_close(&format!("decode step {i}"), &got, &full[i * vocab..(i + 1) * vocab], tol);
        }
    }
    // CPU inference on threads decodes over a cache on the host; `seal` brings it back.
    assert_eq!(cache.on_host(), m.row_split() > 1, "where the cache is held");
    cache.seal();
    assert_eq!(cache.seq_len(), n);
    assert!(!cache.on_host());
    assert_eq!(cache.layers[0].as_ref().unwrap().0.dims()[2], n, "seal folds the tail in");
}

/// The fused host softmax equals the backend's scale, mask add and softmax, for masks
/// shared by every head or given per head, with a row blocked entirely (uniform in both).
/// Rows of 19 keys: two full lanes of eight and a padded tail.
#[test]
fn host_softmax_equals_the_backend_kernels() {
    let device = Default::default();
    let [b, h, tq, s] = [1, 3, 5, 19];
    let scores =
        Tensor::<Backend, 4>::random([b, h, tq, s], burn::tensor::Distribution::Normal(0.0, 4.0), &device);
    for mh in [1, h] {
        let mut mask = Tensor::<Backend, 4>::random(
            [1, mh, tq, s],
            burn::tensor::Distribution::Uniform(-3.0, 0.0),
            &device,
        );
        // Row 2 blocked entirely, row 0 all but its first key.
        let blocked = htc_shared::mask::BLOCKED;
        mask = mask.slice_assign([0..1, 0..mh, 2..3, 0..s], Tensor::full([1, mh, 1, s], blocked, &device));
        mask =
            mask.slice_assign([0..1, 0..mh, 0..1, 1..s], Tensor::full([1, mh, 1, s - 1], blocked, &device));
        let want = burn::tensor::activation::softmax(scores.clone() * 0.3 + mask.clone(), 3);
        let got = htc_worker::kernels::host::host_softmax(scores.clone(), 0.3, Some(mask));
        let (want, got): (Vec<f32>, Vec<f32>) =
            (want.into_data().into_vec().unwrap(), got.into_data().into_vec().unwrap());
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert!((w - g).abs() <= 1e-6, "mask heads {mh}, element {i}: {g} against {w}");
        }
        let uniform = 1.0 / s as f32;
        assert!((got[2 * s] - uniform).abs() < 1e-6, "a blocked row is uniform: {}", got[2 * s]);
        assert_eq!(got[1], 0.0, "a blocked key gets nothing");
    }
    let want = burn::tensor::activation::softmax(scores.clone(), 3);
    let got = htc_worker::kernels::host::host_softmax(scores, 1.0, None);
    let diff = (want - got).abs().max().into_scalar();
    assert!(diff <= 1e-6, "without a mask: {diff}");
}

/// A decoding step past 256 cached positions, its attention on the host split over 2 or 3
/// threads by cached positions (the cache moved there at this first step), under an HTC-style
/// mask (the first 130 positions blocked) and with the attention asked for: the logits and
/// every layer's attention equal one thread's (the backend's tensors), the blocked keys get
/// nothing and each row sums to 1.
#[test]
fn a_masked_decoding_step_split_over_threads_equals_one_thread() {
    let (m, _) = tiny_llama();
    let device = backend::device();
    let n = 300;
    let ids: Vec<u32> = (0..n).map(|i| (3 + i * 11 % 90) as u32).collect();
    let pos: Vec<usize> = (0..=n).collect();
    let blocked = 130;
    let mask: Vec<f32> = (0..=n).map(|j| if j < blocked { htc_shared::mask::BLOCKED } else { 0.0 }).collect();
    let step = |m: &Llama<Backend>| {
        let mut cache = m.new_cache();
        m.forward(
            m.embed(&ids),
            Step { positions: &pos[..n], mask: None, want_attention: false, self_only: 0 },
            &mut cache,
        );
        let mask = Tensor::<Backend, 2>::from_data(TensorData::new(mask.clone(), [1, n + 1]), &device);
        let o = m.forward(
            m.embed(&[7]),
            Step { positions: &pos[n..], mask: Some(mask), want_attention: true, self_only: 0 },
            &mut cache,
        );
        let attention: Vec<Vec<f32>> = o.attention.iter().map(|a| to_vec(a.clone())).collect();
        (to_vec(m.logits(o.hidden)), attention)
    };
    let (want, want_attention) = step(&m.clone().with_row_split(1));
    for split in [2, 3] {
        let (got, got_attention) = step(&m.clone().with_row_split(split));
        assert_close(&format!("logits of the step split over {split}"), &got, &want, 1e-5);
        assert_eq!(got_attention.len(), want_attention.len());
        for (l, (g, w)) in got_attention.iter().zip(&want_attention).enumerate() {
            assert_eq!(g.len(), n + 1, "layer {l}: one row over every position");
            assert_close(&format!("layer {l} attention, split {split}"), g, w, 1e-5);
            assert!(g[..blocked].iter().all(|&p| p == 0.0), "layer {l}: a blocked key gets nothing");
            let total: f32 = g.iter().sum();
            assert!((total - 1.0).abs() < 1e-5, "layer {l}: the row sums to {total}");
        }
    }
}

/// The fused host kernels of CPU inference (`kernels::host`) against the burn operations they
/// stand in for, on random inputs whose rows are not a multiple of eight lanes wide (a padded
/// tail), with enough rows to run on rayon's pool and with too few: the residual sum exactly,
/// the RMS and layer norms within 1e-6 x their scale (the sums are added up in another order),
/// RoPE with the heads cut out of the joined product to the bit (the same operations per
/// element), quick GELU and the SwiGLU gate within 1e-6 x their scale (wide's `exp`).
#[test]
fn fused_host_kernels_equal_the_backend_operations() {
    use burn::tensor::Distribution;
    use htc_worker::kernels::host;
    let device = Default::default();
    let max_diff = |a: Vec<f32>, b: Vec<f32>| {
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    };
    for t in [3usize, 21] {
        // RMS norm after the residual addition.
        let d = 37;
        let x = Tensor::<Backend, 3>::random([1, t, d], Distribution::Normal(0.0, 3.0), &device);
        let delta = Tensor::<Backend, 3>::random([1, t, d], Distribution::Normal(0.0, 1.0), &device);
        let mut norm = burn::nn::RmsNormConfig::new(d).with_epsilon(1e-5).init::<Backend>(&device);
        norm.gamma =
            burn::module::Param::from_tensor(Tensor::random([d], Distribution::Normal(1.0, 0.5), &device));
        let sum = x.clone() + delta.clone();
        let want = norm.forward(sum.clone());
        let mut stream = host::values(x);
        let got = host::add_rms_norm(&mut stream, Some(&host::values(delta)), &host::Norm::of(&norm));
        assert_eq!(stream, host::values(sum), "{t} rows: the residual sum");
        let diff = max_diff(got, host::values(want));
        assert!(diff <= 1e-6, "{t} rows: RMS norm off by {diff}");

        // RoPE on queries and keys cut out of a joined product; values copied.
        let (heads, kv_heads, hd) = (4, 2, 12);
        let w = (heads + 2 * kv_heads) * hd;
        let y = Tensor::<Backend, 3>::random([1, t, w], Distribution::Normal(0.0, 1.0), &device);
        let rope = htc_worker::kernels::rope::Rope::new(hd, 10000.0);
        let positions: Vec<usize> = (5..5 + t).collect();
        let (cos, sin) = rope.host_tables(&positions);
        let (q, k, v) =
            host::qkv_rope(y.clone(), heads, kv_heads, hd, &host::RopeRows { cos: &cos, sin: &sin });
        let (ct, st) = rope.tables::<Backend>(&positions, &device);
        let (ct, st) = (ct.unsqueeze::<4>(), st.unsqueeze::<4>());
        let split = |first: usize, n: usize| {
            y.clone().reshape([1, t, heads + 2 * kv_heads, hd]).swap_dims(1, 2).narrow(1, first, n)
        };
        let rotate = |x: Tensor<Backend, 4>| {
            let [b, h, t, hd] = x.dims();
            let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..hd / 2]);
            let x2 = x.clone().slice([0..b, 0..h, 0..t, hd / 2..hd]);
            x * ct.clone() + Tensor::cat(vec![x2.neg(), x1], 3) * st.clone()
        };
        assert_eq!(host::values(q), host::values(rotate(split(0, heads))), "{t} rows: queries");
        assert_eq!(host::values(k), host::values(rotate(split(heads, kv_heads))), "{t} rows: keys");
        assert_eq!(host::values(v), host::values(split(heads + kv_heads, kv_heads)), "{t} rows: values");

        // Layer norm (with a bias) and quick GELU, as CLIP uses them.
        let mut ln = burn::nn::LayerNormConfig::new(d).with_epsilon(1e-5).init::<Backend>(&device);
        ln.gamma =
            burn::module::Param::from_tensor(Tensor::random([d], Distribution::Normal(1.0, 0.5), &device));
        ln.beta = Some(burn::module::Param::from_tensor(Tensor::random(
            [d],
            Distribution::Normal(0.0, 0.5),
            &device,
        )));
        let x = Tensor::<Backend, 3>::random([1, t, d], Distribution::Normal(2.0, 3.0), &device);
        let diff = max_diff(
            host::values(host::layer_norm(x.clone(), &ln, 1e-5)),
            host::values(ln.forward(x.clone())),
        );
        assert!(diff <= 1e-6, "{t} rows: layer norm off by {diff}");
        let want = htc_worker::kernels::ops::x_sigmoid(x.clone(), 1.702);
        let diff = max_diff(host::values(host::x_sigmoid(x, 1.702)), host::values(want));
        assert!(diff <= 1e-6, "{t} rows: quick GELU off by {diff}");

        // SwiGLU of a joined gate/up product.
        let i = 29;
        let y = Tensor::<Backend, 3>::random([1, t, 2 * i], Distribution::Normal(0.0, 4.0), &device);
        let (gate, up) = (y.clone().narrow(2, 0, i), y.clone().narrow(2, i, i));
        let want = burn::tensor::activation::silu(gate) * up;
        let diff = max_diff(host::values(host::swiglu(y)), host::values(want));
        assert!(diff <= 1e-6, "{t} rows: SwiGLU off by {diff}");
    }
}
