//! Writing safetensors files tensor by tensor, so a multi-gigabyte checkpoint never sits in
//! memory whole (the `safetensors` crate serialises from views that must all be in memory).

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use half::f16;
use serde_json::json;

/// A tensor to write: name, shape, and how to read its data when its turn comes.
pub type Entry<'a> = (String, Vec<usize>, Box<dyn Fn() -> Result<Vec<f32>> + 'a>);

/// Streams tensors into a safetensors file, one tensor in memory at a time.
pub fn write_safetensors(path: &Path, entries: Vec<Entry<'_>>, half: bool) -> Result<()> {
    let elem = if half { 2 } else { 4 };
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, shape, _) in &entries {
        let n: usize = shape.iter().product::<usize>() * elem;
        header.insert(name.clone(), json!({"dtype": if half { "F16" } else { "F32" }, "shape": shape, "data_offsets": [offset, offset + n]}));
        offset += n;
    }
    let mut h = serde_json::to_vec(&header)?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    f.write_all(&(h.len() as u64).to_le_bytes())?;
    f.write_all(&h)?;
    for (name, shape, read) in &entries {
        let data = read()?;
        if data.len() != shape.iter().product::<usize>() {
            bail!("tensor `{name}` has {} values for shape {shape:?}", data.len());
        }
        if half {
            for x in data {
                f.write_all(&f16::from_f32(x).to_le_bytes())?;
            }
        } else {
            for x in data {
                f.write_all(&x.to_le_bytes())?;
            }
        }
    }
    f.flush()?;
    Ok(())
}

/// Writes one f32 tensor `name` of `shape` as a safetensors file.
pub fn write_f32(path: &Path, name: &str, shape: &[usize], data: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), &bytes)
        .map_err(|e| anyhow::anyhow!("cannot build the tensor `{name}`: {e}"))?;
    safetensors::serialize_to_file([(name, view)], None, path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}
