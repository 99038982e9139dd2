//! The documentation's links resolve: every relative link and image in README.md, docs/*.md
//! and the model cards points at a file or folder of the repository, and every `#anchor` at a
//! heading (GitHub's slugs) or an `id`/`name` attribute of the page it names. External
//! (`http:`, `https:`, `mailto:`) links are not fetched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use pulldown_cmark::{Event, HeadingLevel, Parser, Tag, TagEnd};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown files the link check covers.
fn pages() -> Vec<PathBuf> {
    let r = root();
    let mut v = vec![r.join("README.md")];
    for dir in ["docs", "models"] {
        let mut stack = vec![r.join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "md") {
                    v.push(p);
                }
            }
        }
    }
    v.sort();
    v
}

/// GitHub's anchor for a heading's text: lowercased, spaces to `-`, every character that is
/// not alphanumeric, `-` or `_` dropped.
fn slug(text: &str) -> String {
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Values of `attr="..."` in a run of HTML.
fn attr_values(html: &str, attr: &str) -> Vec<String> {
    let pat = format!("{attr}=\"");
    html.match_indices(&pat)
        .filter(|(i, _)| html[..*i].ends_with(|c: char| c.is_whitespace()))
        .filter_map(|(i, _)| {
            let rest = &html[i + pat.len()..];
            rest.find('"').map(|e| rest[..e].to_string())
        })
        .collect()
}

/// A page's anchors and its links (with the text of each link, for the report).
struct Page {
    anchors: BTreeSet<String>,
    links: Vec<String>,
}

fn read_page(path: &Path) -> Page {
    let text = std::fs::read_to_string(path).unwrap();
    let mut anchors = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut links = Vec::new();
    let mut heading: Option<String> = None;
    for event in Parser::new(&text) {
        match event {
            Event::Start(Tag::Heading { level, .. }) if level <= HeadingLevel::H6 => {
                heading = Some(String::new())
            }
            Event::End(TagEnd::Heading(_)) => {
                let s = slug(&heading.take().unwrap_or_default());
                let n = seen.entry(s.clone()).or_insert(0);
                anchors.insert(if *n == 0 { s.clone() } else { format!("{s}-{n}") });
                *n += 1;
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::Start(Tag::Link { dest_url, .. }) | Event::Start(Tag::Image { dest_url, .. }) => {
                links.push(dest_url.to_string())
            }
            Event::Html(h) | Event::InlineHtml(h) => {
                anchors.extend(attr_values(&h, "id"));
                anchors.extend(attr_values(&h, "name"));
                links.extend(attr_values(&h, "href"));
                links.extend(attr_values(&h, "src"));
            }
            _ => {}
        }
    }
    Page { anchors, links }
}

/// The broken links of the given pages, as "page: link (why)".
fn broken(pages: &[PathBuf]) -> Vec<String> {
    let r = root();
    let mut cache: BTreeMap<PathBuf, Page> = BTreeMap::new();
    let mut bad = Vec::new();
    for page in pages {
        let links = read_page(page).links;
        for link in links {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match link.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (link.as_str(), None),
            };
            let target = if file.is_empty() { page.clone() } else { page.parent().unwrap().join(file) };
            let shown = page.strip_prefix(&r).unwrap_or(page).display();
            if !target.exists() {
                bad.push(format!("{shown}: {link} (no such file)"));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if target.extension().is_none_or(|x| x != "md") {
                continue; // anchors into source files are line references GitHub resolves
            }
            let key = target.canonicalize().unwrap();
            let target_page = cache.entry(key).or_insert_with(|| read_page(&target));
            if !target_page.anchors.contains(anchor) {
                bad.push(format!("{shown}: {link} (no heading or id `{anchor}`)"));
            }
        }
    }
    bad
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let pages = pages();
    assert!(pages.len() >= 10, "only {} pages found", pages.len());
    let bad = broken(&pages);
    assert!(bad.is_empty(), "{} broken links:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn the_checker_finds_a_broken_file_and_a_broken_anchor() {
    let dir = std::env::temp_dir().join(format!("htc-links-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.md");
    std::fs::write(&a, "# Title\n\n## Two words, here\n\n<a id=\"x\"></a>\n\n[ok](b.md#the-b-page) [ok2](#two-words-here) [ok3](#x)\n[gone](c.md) [bad](b.md#nope) <img src=\"missing.png\">\n").unwrap();
    std::fs::write(dir.join("b.md"), "# The `b` page\n").unwrap();
    let bad = broken(&[a]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(bad[0].contains("c.md (no such file)"), "{bad:?}");
    assert!(bad[1].contains("b.md#nope (no heading or id `nope`)"), "{bad:?}");
    assert!(bad[2].contains("missing.png (no such file)"), "{bad:?}");
}

#[test]
fn slugs_follow_github() {
    assert_eq!(slug("The `<voco>` attention"), "the-voco-attention");
    assert_eq!(slug("What the paper says, what this code does"), "what-the-paper-says-what-this-code-does");
    assert_eq!(slug("LLM on the CPU"), "llm-on-the-cpu");
}
