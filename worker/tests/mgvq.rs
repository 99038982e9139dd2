//! MGVQ encoder parity with the PyTorch reference in `fixtures/make_fixtures.py` (official key
//! names, converted from a `.pt` by `fixtures/convert_mgvq.py`). Latent and `q` within f32 max
//! abs error <= 1e-4 x the output scale; codes exactly equal (the fixture has no near-ties:
//! the top-2 score gap is at least 1e-3).

mod common;

use burn::tensor::{Tensor, TensorData};
use common::{assert_close, fixtures, to_vec, Expected};
use htc_shared::mgvq::{self, Config, Mgvq};
use htc_worker::backend::{self, Backend};
use htc_worker::formats::{Loader, WeightSource};

fn tiny() -> Mgvq<Backend> {
    let cfg = Config::from_json(
        &serde_json::from_slice(&std::fs::read(fixtures().join("mgvq-tiny/config.json")).unwrap()).unwrap(),
    )
    .unwrap();
    let src = WeightSource::open_dir(&fixtures().join("mgvq-tiny")).unwrap();
    Mgvq::load(&Loader::new(&src, &backend::device()), &cfg).unwrap()
}

#[test]
fn mgvq_latent_q_and_codes_match_the_reference() {
    // By burn's conv2d, then with the convolutions as plain products (the CPU inference path).
    for products in [false, true] {
        reference_parity(tiny().with_conv_products(products));
    }
}

fn reference_parity(m: Mgvq<Backend>) {
    let exp = Expected::open("mgvq-tiny/expected.safetensors");
    let (s, px) = exp.f32("pixel_values");
    let px =
        Tensor::<Backend, 4>::from_data(TensorData::new(px, [s[0], s[1], s[2], s[3]]), &backend::device());
    let enc = m.encode(px).unwrap();
    assert_close("MGVQ latent (after quant_conv)", &to_vec(enc.latent), &exp.f32("latent").1, 1e-4);
    assert_close("MGVQ q", &to_vec(enc.q.clone()), &exp.f32("q").1, 1e-4);
    let want = exp.i64("codes");
    let got: Vec<i64> = enc.codes.iter().flatten().map(|&c| c as i64).collect();
    assert_eq!(got, want, "codes [h*w, G]");
    // Every group uses its own slice: indices stay below codes_per_group.
    assert!(enc.codes.iter().flatten().all(|&c| (c as usize) < m.config().codes_per_group()));
    // Codes computed elsewhere (a browser) give back the same q.
    assert_eq!(to_vec(m.q_from_codes(&enc.codes)), to_vec(enc.q.clone()));
}

#[test]
fn mgvq_preprocessing_matches_pil() {
    let bytes = std::fs::read(fixtures().join("images/gradient-45x30.png")).unwrap();
    let img = htc_shared::preprocess::decode_image(&bytes, Default::default()).unwrap();
    let got = mgvq::preprocess(&img, 64);
    let want = Expected::open("mgvq-tiny/preprocessed.safetensors").f32("pixel_values").1;
    // PIL and the image crate round bicubic output to u8 differently: one u8 step is 2/255.
    let step = 2.0 / 255.0 * 1.01;
    let max = got.iter().zip(&want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(max <= step, "max error {max} exceeds one u8 step");
}

#[test]
fn missing_mgvq_weights_are_named() {
    let cfg = Config::from_json(
        &serde_json::from_slice(&std::fs::read(fixtures().join("mgvq-tiny/config.json")).unwrap()).unwrap(),
    )
    .unwrap();
    let src = WeightSource::open_dir(&fixtures().join("llama-tiny")).unwrap();
    let e = Mgvq::<Backend>::load(&Loader::new(&src, &backend::device()), &cfg).err().unwrap();
    assert!(e.to_string().contains("encoder.project_in.conv.conv.weight"), "{e}");
}

#[test]
fn convolutions_as_products_give_the_demo_tokenizer_s_codes() {
    // The shipped tokenizer on a real picture, both paths: the same codes, latents within 1e-5
    // x their scale (on candle, measured equal to the bit).
    let dir = fixtures().join("../models/shapes-demo/tokenizer");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let cfg = Config::from_json(&json["mgvq"]).unwrap();
    let src = WeightSource::open_dir(&dir).unwrap();
    let m = Mgvq::<Backend>::load(&Loader::new(&src, &backend::device()), &cfg).unwrap();
    let img = image::open(fixtures().join("../docs/demo-star.png")).unwrap().to_rgb8();
    let a = m.clone().with_conv_products(false).encode(m.pixels_of(&img)).unwrap();
    let b = m.clone().with_conv_products(true).encode(m.pixels_of(&img)).unwrap();
    assert_eq!(a.codes, b.codes, "codes");
    assert_close("latent, products vs conv2d", &to_vec(b.latent), &to_vec(a.latent), 1e-5);
}
