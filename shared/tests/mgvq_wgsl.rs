//! The hand-written WGSL encoder (`mgvq_wgsl`, `shaders/mgvq.wgsl`) against the PyTorch
//! reference and against `htc_shared::mgvq` on a native Vulkan adapter (lavapipe on a machine
//! without a GPU): latents within 1e-4 × their scale, codes equal. Run with
//! `cargo test -p htc-shared --features wgsl-native --test mgvq_wgsl`; `scripts/test.sh` runs
//! it after installing lavapipe.
#![cfg(feature = "wgsl-native")]

use std::path::PathBuf;

use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};
use futures_executor::block_on;
use htc_shared::loader::{Loader, SafetensorsBytes, TensorSource};
use htc_shared::mgvq::{self, Config, Mgvq};
use htc_shared::mgvq_wgsl::{request_device, WgslMgvq};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn open(path: &str) -> SafetensorsBytes {
    let p = root().join(path);
    SafetensorsBytes::new(std::fs::read(&p).unwrap(), &p.display().to_string()).unwrap()
}

fn config(path: &str, section: Option<&str>) -> Config {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(root().join(path)).unwrap()).unwrap();
    Config::from_json(section.map_or(&v, |s| &v[s])).unwrap()
}

fn wgsl(src: &dyn TensorSource, cfg: &Config) -> WgslMgvq {
    let (device, queue) =
        block_on(request_device()).expect("a Vulkan adapter (apt-get install mesa-vulkan-drivers)");
    block_on(WgslMgvq::load(device, queue, src, "", cfg)).unwrap()
}

/// Max abs error over the reference's max abs value.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

fn read(src: &dyn TensorSource, name: &str) -> Vec<f32> {
    src.read(name).unwrap().data
}

#[test]
fn wgsl_encoder_matches_the_pytorch_reference() {
    let cfg = config("fixtures/mgvq-tiny/config.json", None);
    let m = wgsl(&open("fixtures/mgvq-tiny/model.safetensors"), &cfg);
    let exp = open("fixtures/mgvq-tiny/expected.safetensors");
    let (codes, latent) = block_on(m.encode(&read(&exp, "pixel_values"), true)).unwrap();
    let err = rel_err(&latent.unwrap(), &read(&exp, "latent"));
    assert!(err <= 1e-4, "latent: max abs error {err} × scale, bound 1e-4");
    // `codes` is I64 in the fixture: read the raw bytes.
    let st = safetensors::SafeTensors::deserialize(
        &std::fs::read(root().join("fixtures/mgvq-tiny/expected.safetensors")).unwrap(),
    )
    .unwrap()
    .tensor("codes")
    .unwrap()
    .data()
    .chunks_exact(8)
    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u16)
    .collect::<Vec<_>>();
    assert_eq!(codes.concat(), st, "codes [h*w, G]");
}

#[test]
fn wgsl_encoder_gives_the_demo_tokenizer_s_codes() {
    // The shipped tokenizer on a real picture: the codes `htc_shared::mgvq` gives (burn-ndarray).
    let cfg = config("models/shapes-demo/tokenizer/config.json", Some("mgvq"));
    let src = open("models/shapes-demo/tokenizer/model.safetensors");
    let m = wgsl(&src, &cfg);
    let reference = Mgvq::<NdArray>::load(&Loader::new(&src, &Default::default()), &cfg).unwrap();
    let img = image::open(root().join("docs/demo-star.png")).unwrap().to_rgb8();
    let px = mgvq::preprocess(&img, cfg.image_size as u32);
    let (codes, latent) = block_on(m.encode(&px, true)).unwrap();
    let s = cfg.image_size;
    let want =
        reference.encode(Tensor::from_data(TensorData::new(px, [1, 3, s, s]), &Default::default())).unwrap();
    let want_latent = want.latent.into_data().to_vec::<f32>().unwrap();
    let err = rel_err(&latent.unwrap(), &want_latent);
    assert!(err <= 1e-4, "latent: max abs error {err} × scale, bound 1e-4");
    assert_eq!(codes, want.codes);
}

#[test]
fn wgsl_encoder_names_what_is_wrong() {
    let cfg = config("fixtures/mgvq-tiny/config.json", None);
    // Weights of another model: the first missing key is named.
    let (device, queue) = block_on(request_device()).unwrap();
    let other = open("fixtures/mgvq-tiny/expected.safetensors");
    let e = block_on(WgslMgvq::load(device, queue, &other, "", &cfg)).err().unwrap().to_string();
    assert!(e.contains("encoder.project_in.conv.conv.weight"), "{e}");
    // Pixels of the wrong size.
    let m = wgsl(&open("fixtures/mgvq-tiny/model.safetensors"), &cfg);
    let e = block_on(m.encode(&[0.0; 12], false)).err().unwrap().to_string();
    assert!(e.contains("3×64×64 pixels, got 12"), "{e}");
}
