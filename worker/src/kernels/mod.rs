//! The compute layer under the models: what a forward pass calls besides burn's own
//! operations, so that the model files read as plain forward passes. [`ops`] (softmax, layer
//! norm and the residual stream with the reference's precision rules), [`rope`], [`linear`]
//! (flattened and thread-split products), [`attention`] (grouped-query attention over the
//! [`kv_cache`], choosing its strategy by shape), and the CPU kernels they use in f32
//! inference: [`host`] (fused elementwise kernels), the host key/value cache in
//! [`kv_cache`], and the [`team`] of spinning helper threads a decoding step's parts run on.
//! Imports nothing from the rest of the crate.

pub mod attention;
pub mod host;
pub mod kv_cache;
pub mod linear;
pub mod ops;
pub mod rope;
pub mod team;
