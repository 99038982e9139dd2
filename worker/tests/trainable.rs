//! The models are ready for training: built at random without any weight file, every trainable
//! tensor (`<voco>`, CLIP's class and position embeddings, the MGVQ codebook) is a `Param` with
//! an id derived from its checkpoint key, and one gradient step moves `<voco>`.

mod common;

use burn::backend::Autodiff;
use burn::module::Module;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use htc_shared::config::{HtcConfig, HtcMode, LlavaConfig};
use htc_shared::mask::Topology;
use htc_shared::params::{id_for_path, param_paths};
use htc_worker::backend::{self, Backend};
use htc_worker::formats::checkpoint::{AnyModel, Snapshot};
use htc_worker::formats::Loader;
use htc_worker::models::htc::Htc;
use htc_worker::models::llava::Llava;

type Train = Autodiff<Backend>;

fn configs() -> (LlavaConfig, HtcConfig) {
    (common::llava_config(), common::htc_config(HtcMode::Htc, Topology::Star, 1))
}

#[test]
fn a_gradient_step_moves_voco() {
    let device = backend::device();
    let (lc, hc) = configs();
    let model = Htc::<Train>::init(&lc, &hc, &device).unwrap();
    let img = common::image(1);
    let before = common::to_vec(model.voco.val().inner());
    let logits = model.full_text_logits(&img, &[5, 17, 42]).unwrap();
    let loss = logits.powi_scalar(2).mean();
    let grads = loss.backward();
    let g = model.voco.grad(&grads).expect("<voco> gets a gradient");
    let g = common::to_vec(g);
    assert!(g.iter().any(|x| x.abs() > 0.0), "the gradient of <voco> is all zero");
    let grads = GradientsParams::from_grads(grads, &model);
    let mut optim = SgdConfig::new().init::<Train, Htc<Train>>();
    let model = optim.step(0.1, model, grads);
    let after = common::to_vec(model.voco.val().inner());
    let moved = before.iter().zip(&after).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(moved > 0.0, "one SGD step must change <voco>");
}

#[test]
fn trainable_tensors_are_params_with_checkpoint_key_ids() {
    let device = backend::device();
    let (lc, hc) = configs();
    let vb = Loader::<Backend>::init(&device);
    let m = Htc::load(&vb, Llava::load(&vb, &lc).unwrap(), &hc).unwrap();
    let names = vb.names();
    let params = param_paths::<Backend, _>(&m);
    let paths: Vec<&str> = params.iter().map(|p| p.0.as_str()).collect();
    for want in [
        "voco",
        "llava.vision.class_embedding",
        "llava.vision.position_embedding",
        "mgvq.codebook",
        "discrete.layers.0.weight",
        "llava.llm.layers.0.self_attn.q_proj.linear.weight",
    ] {
        assert!(paths.contains(&want), "`{want}` is not a parameter: {paths:?}");
    }
    assert_eq!(names.len(), params.len(), "every parameter has a checkpoint name");
    for (path, id, _) in &params {
        let name = names.get(id).unwrap_or_else(|| panic!("`{path}` has no checkpoint name"));
        assert_eq!(*id, id_for_path(&name.key), "{path}");
    }
    let key = |path: &str| &names[&params.iter().find(|p| p.0 == path).unwrap().1];
    assert_eq!(key("voco").key, "htc.voco_embeddings");
    assert_eq!(key("discrete.layers.1.weight").key, "htc.discrete_projector.linear_2.weight");
    let q = key("llava.llm.layers.0.self_attn.q_proj.linear.weight");
    assert_eq!(q.key, "language_model.model.layers.0.self_attn.q_proj.weight");
    assert!(q.transposed, "burn's Linear weight is the transpose of the stored one");
    assert_eq!(m.num_params(), params.iter().map(|p| p.2.iter().product::<usize>()).sum::<usize>());
}

#[test]
fn a_loaded_checkpoint_gets_the_same_ids_on_every_load() {
    let device = backend::device();
    let ids = || {
        let snap = Snapshot::<Backend>::open(&common::fixtures().join("llava-hf-tiny"), &device).unwrap();
        let AnyModel::Llava { model, .. } = snap.model else { panic!("llava-hf-tiny loads as llava") };
        let names = snap.names;
        param_paths::<Backend, _>(&model)
            .into_iter()
            .map(|(p, id, _)| {
                assert_eq!(id, id_for_path(&names[&id].key), "{p}");
                (p, id)
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = (ids(), ids());
    assert!(a.len() > 10);
    assert_eq!(a, b, "reloading gives the same parameter ids");
}
