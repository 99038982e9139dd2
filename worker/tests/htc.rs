//! The hybrid model: compress-once/ask-many equals one full forward under the mask (1e-5 of
//! the logit scale), and the `<voco>` bottleneck is the only path from the image to the text.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::{assert_close, htc_config, image, llava_config, to_vec};
use htc_shared::config::HtcMode;
use htc_shared::mask::{Topology, BLOCKED};
use htc_worker::backend::{self, Backend};
use htc_worker::formats::Loader;
use htc_worker::models::htc::{Htc, ImageTensors};
use htc_worker::models::llama::Step;
use htc_worker::models::llava::Llava;

fn model(mode: HtcMode, topology: Topology, n_voco: usize) -> Htc<Backend> {
    let (lc, hc) = (llava_config(), htc_config(mode, topology, n_voco));
    let src = htc_worker::formats::random::random_htc(&lc, &hc, 7);
    let vb = Loader::new(&src, &backend::device());
    Htc::load(&vb, Llava::load(&vb, &lc).unwrap(), &hc).unwrap()
}

const TEXT: [u32; 6] = [5, 17, 42, 8, 77, 3];

#[test]
fn compress_then_answer_equals_one_full_forward() {
    let cases = [
        (HtcMode::Htc, Topology::Star, 1),
        (HtcMode::Htc, Topology::Causal, 1),
        (HtcMode::Htc, Topology::Full, 2),
        (HtcMode::Voco, Topology::Star, 1),
        (HtcMode::Discrete, Topology::Star, 1),
        (HtcMode::None, Topology::Star, 1),
        (HtcMode::Avgpool, Topology::Star, 2),
    ];
    for (mode, topo, k) in cases {
        let m = model(mode, topo, k);
        let img = image(1);
        let full = to_vec(m.full_text_logits(&img, &TEXT).unwrap());
        let c = m.compress(&img).unwrap();
        let cached = to_vec(m.answer_logits(&c, &TEXT).unwrap());
        assert_close(&format!("{mode:?}/{topo:?}/k={k} compressed vs full"), &cached, &full, 1e-5);
        // Ask many: a second question against the same compressed image.
        let again = to_vec(m.answer_logits(&c, &TEXT[..3]).unwrap());
        assert_close(&format!("{mode:?} second question"), &again, &full[..3 * 96], 1e-5);
        if matches!(mode, HtcMode::Htc | HtcMode::Voco | HtcMode::Discrete) {
            assert_eq!(c.kept_positions.len(), 1 + k, "{mode:?}: BOS and the voco tokens are kept");
        }
    }
}

#[test]
fn compressing_a_batch_equals_compressing_each_image_alone() {
    // Row split 2: as on a CPU backend, where each image's encoders run on a thread of their own.
    for (mode, topo, k, split) in [
        (HtcMode::Htc, Topology::Star, 1, 1),
        (HtcMode::Htc, Topology::Star, 1, 2),
        (HtcMode::Voco, Topology::Causal, 2, 1),
        (HtcMode::Voco, Topology::Causal, 2, 2),
        (HtcMode::None, Topology::Star, 1, 1),
    ] {
        let m = model(mode, topo, k).with_row_split(split);
        let imgs: Vec<ImageTensors<Backend>> = (1..=3).map(image).collect();
        let batch = m.compress_batch(&imgs).unwrap();
        assert_eq!(batch.len(), 3);
        for (i, (img, c)) in imgs.iter().zip(&batch).enumerate() {
            let alone = m.compress(img).unwrap();
            let what = format!("{mode:?} split {split} image {i}");
            assert_eq!(c.kept_positions, alone.kept_positions, "{what}");
            assert_eq!(c.next_position, alone.next_position, "{what}");
            assert_eq!(c.cache.seq_len(), alone.cache.seq_len(), "{what}");
            for (l, (a, b)) in c.cache.layers.iter().zip(&alone.cache.layers).enumerate() {
                let ((ka, va), (kb, vb)) = (a.clone().unwrap(), b.clone().unwrap());
                assert_eq!(ka.dims()[0], 1, "{what}: one image per cache");
                assert_close(&format!("{what} layer {l} keys"), &to_vec(ka), &to_vec(kb), 1e-5);
                assert_close(&format!("{what} layer {l} values"), &to_vec(va), &to_vec(vb), 1e-5);
            }
            let flat = |a: &Vec<Vec<Vec<f32>>>| a.iter().flatten().flatten().copied().collect::<Vec<f32>>();
            assert_close(
                &format!("{what} attention"),
                &flat(&c.voco_attention),
                &flat(&alone.voco_attention),
                1e-5,
            );
            // Answers from the batch's cache equal the lone image's.
            let got = to_vec(m.answer_logits(c, &TEXT).unwrap());
            let want = to_vec(m.answer_logits(&alone, &TEXT).unwrap());
            assert_close(&format!("{what} answer logits"), &got, &want, 1e-5);
        }
    }
    // Client codes for some images only cannot share one batch.
    let m = model(HtcMode::Htc, Topology::Star, 1);
    let mut with_codes = image(2);
    with_codes.codes = Some(m.mgvq.as_ref().unwrap().encode(with_codes.mgvq.clone().unwrap()).unwrap().codes);
    let e = m.compress_batch(&[image(1), with_codes]).err().unwrap().to_string();
    assert!(e.contains("mixes client MGVQ codes and pixels"), "{e}");
    assert!(m.compress_batch(&[]).unwrap().is_empty());
    // With the images on threads of their own, one image's bad codes fail the batch in words.
    let m = model(HtcMode::Htc, Topology::Star, 1).with_row_split(2);
    let coded = |i: u64, rows: usize| {
        let mut img = image(i);
        let mut codes = m.mgvq.as_ref().unwrap().encode(img.mgvq.clone().unwrap()).unwrap().codes;
        codes.truncate(rows);
        img.codes = Some(codes);
        img
    };
    let e = m.compress_batch(&[coded(1, usize::MAX), coded(2, 3)]).err().unwrap().to_string();
    assert!(e.contains("3 rows of MGVQ codes for 1 images"), "{e}");
    assert_eq!(m.compress_batch(&[coded(1, usize::MAX), coded(2, usize::MAX)]).unwrap().len(), 2);
}

#[test]
fn compressed_cache_keeps_only_bos_and_voco_with_original_positions() {
    let m = model(HtcMode::Htc, Topology::Star, 1);
    let c = m.compress(&image(1)).unwrap();
    // [BOS][4 anchors][16 patches][voco]: positions 0 and 21 are kept; text starts at 22.
    assert_eq!(c.kept_positions, vec![0, 21]);
    assert_eq!(c.next_position, 22);
    assert_eq!(c.cache.seq_len(), 2);
    assert_eq!(c.voco_attention.len(), 2, "one map per layer");
    let map = &c.voco_attention[0][0];
    assert_eq!(map.len(), 4 + 16, "over [v_d; V]");
    let s: f32 = map.iter().sum();
    assert!(s > 0.0 && s < 1.0, "voco also attends to BOS and itself: {s}");
}

/// Text logits for `img` with the mask's `<voco>` rows optionally cut off from `[v_d; V]`.
fn text_logits(m: &Htc<Backend>, img: &ImageTensors<Backend>, block_voco: bool) -> Vec<f32> {
    let llm = &m.llava.llm;
    let layout = m.layout(TEXT.len());
    let n = layout.len();
    let mut mask = layout.additive(m.config.topology);
    if block_voco {
        for q in layout.voco_start()..layout.text_start() {
            for k in 1..layout.voco_start() {
                mask[q * n + k] = BLOCKED;
            }
        }
    }
    let embeds = Tensor::cat(vec![m.prefix_embeds(img).unwrap(), llm.embed(&TEXT)], 1);
    let pos: Vec<usize> = (0..n).collect();
    let mask = Tensor::from_data(TensorData::new(mask, [n, n]), &llm.device());
    let out = llm.forward(
        embeds,
        Step { positions: &pos, mask: Some(mask), want_attention: false, self_only: 0 },
        &mut llm.new_cache(),
    );
    let [_, _, d] = out.hidden.dims();
    to_vec(llm.logits(out.hidden.slice([0..1, layout.text_start()..n, 0..d])))
}

#[test]
fn the_image_reaches_text_only_through_voco() {
    let m = model(HtcMode::Htc, Topology::Star, 1);
    let (a, b) = (image(1), image(2));
    let blocked_a = text_logits(&m, &a, true);
    let blocked_b = text_logits(&m, &b, true);
    assert_eq!(blocked_a, blocked_b, "with the voco row blocked, the image must not reach the text");
    let open_a = text_logits(&m, &a, false);
    let open_b = text_logits(&m, &b, false);
    let diff = open_a.iter().zip(&open_b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff > 1e-3, "with the voco row open, a different image must change the text logits ({diff})");
}

#[test]
fn discrete_modes_need_mgvq_pixels_and_a_config() {
    let m = model(HtcMode::Htc, Topology::Star, 1);
    let mut img = image(1);
    img.mgvq = None;
    let e = m.compress(&img).err().unwrap();
    assert!(e.to_string().contains("needs MGVQ pixel values"), "{e}");
    let mut c = htc_config(HtcMode::Htc, Topology::Star, 1);
    c.n_discrete = 3;
    assert!(c.validate().unwrap_err().to_string().contains("n_discrete must be 1, 2, 4 or 8"));
    c.n_discrete = 4;
    c.mgvq = None;
    assert!(c.validate().unwrap_err().to_string().contains("needs an `mgvq` config"));
}

#[test]
fn skipping_the_star_masks_self_only_rows_changes_nothing() {
    // `full_text_logits` skips the score rows of BOS, the anchors and the patches (they attend
    // only to themselves under the star mask); `text_logits` scores every row.
    for (mode, k) in [(HtcMode::Htc, 1), (HtcMode::Voco, 2), (HtcMode::Discrete, 1)] {
        let m = model(mode, Topology::Star, k);
        let img = image(3);
        assert!(m.self_only(&m.layout(TEXT.len())) > 1, "{mode:?}: the shortcut is used");
        let skipped = to_vec(m.full_text_logits(&img, &TEXT).unwrap());
        let scored = text_logits(&m, &img, false);
        assert_close(&format!("{mode:?}: self-only rows skipped vs scored"), &skipped, &scored, 1e-6);
    }
    let causal = model(HtcMode::Htc, Topology::Causal, 1);
    assert_eq!(causal.self_only(&causal.layout(4)), 0, "only the star mask has self-only rows");
}

fn model_with(f: impl FnOnce(&mut htc_shared::config::HtcConfig)) -> Htc<Backend> {
    let lc = llava_config();
    let mut hc = htc_config(HtcMode::Htc, Topology::Star, 1);
    f(&mut hc);
    let src = htc_worker::formats::random::random_htc(&lc, &hc, 7);
    let vb = Loader::new(&src, &backend::device());
    Htc::load(&vb, Llava::load(&vb, &lc).unwrap(), &hc).unwrap()
}

/// Rows `r` of a prefix `[1, len, d]`.
fn rows(t: &Tensor<Backend, 3>, r: std::ops::Range<usize>) -> Vec<f32> {
    let d = t.dims()[2];
    to_vec(t.clone().slice([0..1, r, 0..d]))
}

#[test]
fn the_fusion_order_places_or_averages_the_anchors() {
    use htc_shared::config::Fusion;
    let img = image(3);
    let before = model_with(|_| {});
    let (nd, nv) = (4, before.layout(0).n_visual);
    let p = before.prefix_embeds(&img).unwrap();
    let (bos, anchors, patches, voco) = (
        rows(&p, 0..1),
        rows(&p, 1..1 + nd),
        rows(&p, 1 + nd..1 + nd + nv),
        rows(&p, 1 + nd + nv..2 + nd + nv),
    );

    // After: the same tokens, the patches first; the layout keeps its sizes.
    let after = model_with(|c| c.fusion = Fusion::After);
    assert_eq!(after.layout(3), before.layout(3));
    let q = after.prefix_embeds(&img).unwrap();
    assert_eq!(rows(&q, 0..1), bos);
    assert_eq!(rows(&q, 1..1 + nv), patches);
    assert_eq!(rows(&q, 1 + nv..1 + nv + nd), anchors);
    assert_eq!(rows(&q, 1 + nv + nd..2 + nd + nv), voco);

    // Mean: no anchor positions; every patch plus the anchors' mean.
    let mean = model_with(|c| c.fusion = Fusion::Mean);
    assert_eq!(mean.layout(0).n_discrete, 0);
    assert_eq!(mean.layout(0).n_visual, nv);
    let r = mean.prefix_embeds(&img).unwrap();
    assert_eq!(r.dims()[1], 2 + nv);
    let d = p.dims()[2];
    let avg: Vec<f32> =
        (0..d).map(|j| (0..nd).map(|a| anchors[a * d + j]).sum::<f32>() / nd as f32).collect();
    let want: Vec<f32> = patches.iter().enumerate().map(|(i, v)| v + avg[i % d]).collect();
    assert_close("mean-fused patches", &rows(&r, 1..1 + nv), &want, 1e-6);
    assert_eq!(rows(&r, 1 + nv..2 + nv), voco);
    // Each order still compresses once and answers as one full forward does.
    for m in [after, mean] {
        let full = to_vec(m.full_text_logits(&img, &TEXT).unwrap());
        let cached = to_vec(m.answer_logits(&m.compress(&img).unwrap(), &TEXT).unwrap());
        assert_close("compressed vs full", &cached, &full, 1e-5);
    }
}

#[test]
fn the_anchor_mlp_has_the_configured_depth() {
    use burn::module::Module;
    let img = image(4);
    let mut sizes = Vec::new();
    for layers in [1, 2, 3] {
        let m = model_with(|c| c.discrete_layers = layers);
        let p = m.discrete.as_ref().unwrap();
        sizes.push(p.num_params());
        assert!(m.prefix_embeds(&img).is_ok());
    }
    // q_len → 4·d (linear); q_len → 48 → 4·d; and a second 48 → 48 layer.
    let lc = llava_config();
    let d = lc.text.hidden_size;
    let q = htc_config(HtcMode::Htc, Topology::Star, 1).mgvq.unwrap().q_len();
    assert_eq!(
        sizes,
        vec![
            q * 4 * d + 4 * d,
            q * 48 + 48 + 48 * 4 * d + 4 * d,
            q * 48 + 48 + 48 * 48 + 48 + 48 * 4 * d + 4 * d
        ]
    );
    // One layer is a plain linear map: no activation, so P(x) + P(-x) = 2 b.
    let m = model_with(|c| c.discrete_layers = 1);
    let p = m.discrete.as_ref().unwrap();
    let dev = backend::device();
    let x = Tensor::<Backend, 4>::random([1, q, 1, 1], burn::tensor::Distribution::Normal(0.0, 1.0), &dev);
    let zero = to_vec(p.forward(Tensor::zeros([1, q, 1, 1], &dev)));
    let sum: Vec<f32> =
        to_vec(p.forward(x.clone())).iter().zip(to_vec(p.forward(x.neg()))).map(|(a, b)| a + b).collect();
    let twice: Vec<f32> = zero.iter().map(|b| 2.0 * b).collect();
    assert_close("linear P_d", &sum, &twice, 1e-5);
}
