//! Stable parameter ids. burn keys optimizer state (AdamW moments) by `ParamId`, and a freshly
//! loaded or initialised module draws random ids, so a resumed run would silently restart its
//! moments. The [`Loader`](crate::loader::Loader) gives every parameter the id of its
//! checkpoint key ([`id_for_path`] of `language_model.model.layers.0.self_attn.q_proj.weight`),
//! the same on every load, and records the key in [`ParamNames`]; [`param_paths`] lists a
//! module's parameters by their path in the module tree. Walking modules only: no model code.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::{backend::Backend, Tensor};
use sha2::{Digest, Sha256};

/// Where a parameter is stored in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamName {
    /// The checkpoint key (`multi_modal_projector.linear_1.weight`).
    pub key: String,
    /// Held as the transpose of the stored tensor (burn's `Linear` weight is `[in, out]`).
    pub transposed: bool,
}

/// The checkpoint name of every parameter of a loaded model, by id.
pub type ParamNames = HashMap<ParamId, ParamName>;

/// The id a parameter stored under `path` gets: the first 8 bytes of SHA-256 of the path.
pub fn id_for_path(path: &str) -> ParamId {
    let h = Sha256::digest(path.as_bytes());
    ParamId::from(u64::from_le_bytes(h[..8].try_into().expect("8 bytes")))
}

#[derive(Default)]
struct Path(Vec<String>);

impl Path {
    fn enter(&mut self, name: &str) {
        self.0.push(name.to_string());
    }
    fn exit(&mut self) {
        self.0.pop();
    }
    fn joined(&self) -> String {
        self.0.join(".")
    }
}

#[derive(Default)]
struct Paths(Path, Vec<(String, ParamId, Vec<usize>)>);

impl<B: Backend> ModuleVisitor<B> for Paths {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.0.enter(name);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.0.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.1.push((self.0.joined(), param.id, param.val().dims().to_vec()));
    }
}

/// Every float parameter of `module`: its path, id and shape, in visiting order.
pub fn param_paths<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, ParamId, Vec<usize>)> {
    let mut v = Paths::default();
    module.visit(&mut v);
    v.1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MgvqConfig;
    use burn::backend::NdArray;

    fn tiny() -> MgvqConfig {
        let mut c = MgvqConfig::f16c32_g8();
        c.width_list = vec![32, 32, 32, 32, 64];
        c.depth_list = vec![0, 1, 0, 1, 0];
        c.codebook_size = 64;
        c.image_size = 32;
        c
    }

    #[test]
    fn ids_come_from_checkpoint_keys_and_survive_a_rebuild() {
        let dev = Default::default();
        let vb = crate::loader::Loader::<NdArray>::init(&dev);
        let m = crate::mgvq::Mgvq::load(&vb, &tiny()).unwrap();
        let names = vb.names();
        let a = param_paths::<NdArray, _>(&m);
        let b = param_paths::<NdArray, _>(&tiny().init::<NdArray>(&dev).unwrap());
        assert!(a.len() > 10, "{} parameters", a.len());
        assert_eq!(
            a.iter().map(|p| (&p.0, p.1)).collect::<Vec<_>>(),
            b.iter().map(|p| (&p.0, p.1)).collect::<Vec<_>>()
        );
        assert_eq!(names.len(), a.len(), "every parameter is named");
        for (path, id, _) in &a {
            let name = names.get(id).unwrap_or_else(|| panic!("{path} has no checkpoint name"));
            assert_eq!(*id, id_for_path(&name.key), "{path}");
        }
        assert_eq!(names[&id_for_path("quantize.embedding.weight")].key, "quantize.embedding.weight");
        let ids: std::collections::HashSet<_> = a.iter().map(|p| p.1).collect();
        assert_eq!(ids.len(), a.len(), "every path gets its own id");
        let cb = a.iter().find(|p| p.0 == "codebook").expect("the codebook is a parameter");
        assert_eq!(cb.2, vec![64, 4]);
        assert!(
            a.iter().any(|p| p.0 == "blocks.0.Res.norm.weight"),
            "{:?}",
            a.iter().map(|p| &p.0).collect::<Vec<_>>()
        );
    }
}
