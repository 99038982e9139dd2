//! The worker's layers import only downwards (see `src/lib.rs`): each top-level module may use
//! only the modules listed for it, so there are no cycles and no upward imports. Checked on the
//! source text (`crate::<module>` paths).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What each layer may use.
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("backend", &[][..]),
        ("models", &[][..]),
        ("text", &[][..]),
        ("data", &[][..]),
        ("formats", &["models", "text", "backend"][..]),
        ("runtime", &["formats", "models", "text", "backend"][..]),
        ("server", &["runtime", "formats", "models", "text", "backend"][..]),
        ("train", &["runtime", "formats", "models", "text", "data", "backend"][..]),
        ("eval", &["runtime", "formats", "models", "text", "data", "backend"][..]),
        ("loadtest", &["eval"][..]),
        (
            "cli",
            &[
                "loadtest", "eval", "train", "server", "runtime", "formats", "models", "text", "data",
                "backend",
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
            for used in crate_uses(&text) {
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
