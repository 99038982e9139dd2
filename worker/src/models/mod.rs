//! Model definitions, one file each, generic over the burn backend: [`clip`], [`llama`],
//! [`llava`] and [`htc`] (the MGVQ encoder lives in `htc_shared::mgvq`, shared with the
//! browser; [`mgvq_decoder`] turns it into a VQ-VAE for training the tokenizer), and [`lora`]
//! adapters on their projections. Each model has a config (in `htc_shared::config`), a `load`
//! that reads a checkpoint through a [`htc_shared::loader::Loader`], and an `init` that builds
//! it at random; both give parameters ids derived from their checkpoint keys. Plain forward
//! passes: no files, tokenizers, sampling or network here, and no CPU kernels (the fused host
//! kernels, the key/value cache, attention strategies and thread team are in
//! [`crate::kernels`]).

pub mod clip;
pub mod htc;
pub mod llama;
pub mod llava;
pub mod lora;
pub mod mgvq_decoder;
