//! Model definitions, one file each, generic over the burn backend.

pub mod clip;
pub mod htc;
pub mod llama;
pub mod llava;
