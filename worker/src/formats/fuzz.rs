//! Entry points of the fuzz targets for the checkpoint readers (`fuzz/`, run by
//! `scripts/fuzz.sh`) and of the corpus regression test: a GGUF file and a safetensors file
//! given as arbitrary bytes must be read, or refused with an error, without panicking,
//! hanging or allocating without bound. (The shared parsers' are in `htc_shared::fuzz`.)

use safetensors::SafeTensors;

use super::gguf::GgufFile;
use htc_shared::loader::host_from_view;

/// Larger tensors are not dequantised (their bytes are checked to exist all the same).
const MAX_ELEMENTS: usize = 1 << 20;

/// The number of elements of a shape, if it fits in a `usize`.
fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// A GGUF file: its header and metadata, every tensor (dequantised), the LLaMA config and the
/// tokenizer built from its metadata.
pub fn gguf(data: &[u8]) {
    let Ok(g) = GgufFile::from_bytes(data.to_vec()) else { return };
    let names: Vec<String> = g.tensors.keys().cloned().collect();
    for name in names {
        if elements(&g.tensors[&name].shape).is_some_and(|n| n <= MAX_ELEMENTS) {
            let _ = g.dequantize(&name);
        }
    }
    let _ = g.llama_config();
    let _ = g.tokenizer_json();
    let _ = g.chat_template();
}

/// A safetensors file: its header, then every tensor read as f32 the way checkpoints are.
pub fn safetensors(data: &[u8]) {
    let Ok(st) = SafeTensors::deserialize(data) else { return };
    for (name, view) in st.tensors() {
        if elements(view.shape()).is_some_and(|n| n <= MAX_ELEMENTS) {
            let _ = host_from_view(&name, &view);
        }
    }
}
