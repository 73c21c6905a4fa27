//! The documentation stays navigable: docs/README.md lists every page in docs/, and no relative
//! link in the README or in docs/ points at a file the repository does not have.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn doc_pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages
}

/// The targets of the Markdown links `[text](target)` in `text`.
fn links(text: &str) -> Vec<&str> {
    text.match_indices("](")
        .filter_map(|(i, _)| {
            let rest = &text[i + 2..];
            rest.find(')').map(|end| &rest[..end])
        })
        .filter(|t| !t.is_empty() && !t.contains(char::is_whitespace))
        .collect()
}

#[test]
fn the_docs_index_lists_every_page() {
    let index = std::fs::read_to_string(repo().join("docs/README.md")).expect("docs/README.md exists");
    let linked = links(&index);
    for page in doc_pages() {
        let name = page.file_name().and_then(|n| n.to_str()).expect("utf-8 name");
        if name == "README.md" {
            continue;
        }
        assert!(linked.contains(&name), "docs/README.md does not list {name}");
    }
}

#[test]
fn relative_links_point_at_files_in_the_repository() {
    let root = repo().canonicalize().expect("repository root");
    let mut files = vec![root.join("README.md")];
    files.extend(doc_pages());
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable page");
        let dir = file.parent().unwrap_or(Path::new("."));
        for target in links(&text) {
            if target.starts_with("http://") || target.starts_with("https://") || target.starts_with('#') {
                continue;
            }
            let path = target.split('#').next().unwrap_or(target);
            let resolved = dir.join(path);
            let inside = resolved.canonicalize().map(|p| p.starts_with(&root)).unwrap_or(false);
            if !inside {
                broken.push(format!("{}: {target}", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "links to files that do not exist in the repository:\n{}", broken.join("\n"));
}

#[test]
fn a_link_outside_the_repository_is_caught() {
    // The check above on a page that links out of the repository, as the README once did.
    let text = "Design: [`../shared/DESIGN.md`](../shared/DESIGN.md), [ok](docs/install.md).";
    assert_eq!(links(text), ["../shared/DESIGN.md", "docs/install.md"]);
    let root = repo().canonicalize().expect("repository root");
    let outside = root.join("../shared/DESIGN.md").canonicalize().map(|p| p.starts_with(&root));
    assert!(!matches!(outside, Ok(true)), "../shared is outside the repository");
}
