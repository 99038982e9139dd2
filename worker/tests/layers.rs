//! The worker's layers import only downwards (see `src/lib.rs`): each top-level module may use
//! only the modules listed for it, so there are no cycles and no upward imports. Checked on the
//! source text: `crate::<module>` paths, and `super::` paths resolved from the file's place in
//! the module tree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What each layer may use.
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("backend", &[][..]),
        ("kernels", &[][..]),
        ("models", &["kernels"][..]),
        ("text", &[][..]),
        ("data", &[][..]),
        ("figures", &[][..]),
        ("formats", &["models", "kernels", "text", "data", "backend"][..]),
        ("runtime", &["formats", "models", "kernels", "text", "backend"][..]),
        ("server", &["runtime", "formats", "models", "kernels", "text", "backend"][..]),
        ("train", &["runtime", "formats", "models", "kernels", "text", "data", "figures", "backend"][..]),
        ("eval", &["runtime", "formats", "models", "kernels", "text", "data", "figures", "backend"][..]),
        ("loadtest", &["eval"][..]),
        ("bench", &["train", "runtime", "formats", "models", "kernels", "backend"][..]),
        (
            "cli",
            &[
                "bench", "loadtest", "eval", "train", "server", "runtime", "formats", "models", "kernels",
                "text", "data", "figures", "backend",
            ][..],
        ),
    ])
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules a source text names as `crate::<m>`.
fn crate_uses(text: &str) -> Vec<String> {
    let mut v = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let before = text[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `htc_crate::`
        }
        let rest = &text[i + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            v.push(name);
        }
    }
    v
}

/// The top-level modules a source text reaches through `super::` paths, for a file whose
/// module path (from the crate root) is `module` (`["models", "llama"]` for
/// `models/llama.rs`, `["models"]` for `models/mod.rs`). A `super::` chain that climbs to the
/// root names the top-level module after it; one that stays inside names `module[0]`.
fn super_uses(text: &str, module: &[String]) -> Vec<String> {
    let mut v = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("super::") {
        let before = rest[..i].chars().last();
        let mut ups = 0;
        let mut tail = &rest[i..];
        while let Some(t) = tail.strip_prefix("super::") {
            ups += 1;
            tail = t;
        }
        rest = tail;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // e.g. `my_super::`, or `self::super::`
        }
        let name: String = tail.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if ups < module.len() {
            v.push(module[0].clone());
        } else if ups == module.len() && !name.is_empty() {
            v.push(name);
        }
    }
    v
}

/// The module path of a source file under `src`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts
}

#[test]
fn layers_import_only_downwards() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed = allowed();
    let mut bad = Vec::new();
    let mut checked = 0;
    for (layer, ok) in &allowed {
        let root = src.join(layer);
        let mut fs = Vec::new();
        if root.is_dir() {
            files(&root, &mut fs);
        } else {
            fs.push(src.join(format!("{layer}.rs")));
        }
        for f in fs {
            let text = std::fs::read_to_string(&f).unwrap();
            checked += 1;
            let module = module_path(&src, &f);
            for used in crate_uses(&text).into_iter().chain(super_uses(&text, &module)) {
                if used != *layer && !ok.contains(&used.as_str()) {
                    bad.push(format!("{} uses crate::{used}", f.strip_prefix(&src).unwrap().display()));
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} files checked");
    assert!(bad.is_empty(), "upward or sideways imports:\n{}", bad.join("\n"));
}

#[test]
fn the_checker_sees_an_upward_import() {
    assert_eq!(crate_uses("use crate::server::App;\nlet x = htc_crate::y;"), vec!["server".to_string()]);
}

#[test]
fn the_checker_resolves_super_paths() {
    let llama: Vec<String> = ["models", "llama"].map(String::from).to_vec();
    // Inside the layer: `super::lora` from models/llama.rs is models.
    assert_eq!(super_uses("use super::lora::Proj;", &llama), vec!["models".to_string()]);
    // Climbing to the root names the module after the chain, once per chain.
    assert_eq!(super_uses("use super::super::server::App;", &llama), vec!["server".to_string()]);
    assert_eq!(super_uses("use my_super::x;", &llama), Vec::<String>::new());
    let root = Path::new("/s");
    assert_eq!(module_path(root, Path::new("/s/models/mod.rs")), vec!["models".to_string()]);
    assert_eq!(module_path(root, Path::new("/s/backend.rs")), vec!["backend".to_string()]);
    assert_eq!(super_uses("use super::cli::x;", &["backend".to_string()]), vec!["cli".to_string()]);
}
