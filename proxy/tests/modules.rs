//! The modules of `proxy/src` import each other without a cycle, so each can be read (and
//! changed) after the ones it uses. A module depends on another when its code (outside its
//! tests) names a `crate::` or `super::` path into it, and on each module it declares; a cycle
//! fails the test with its path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, by its module path (`data::live`; the crate root is "").
fn modules(dir: &Path, base: &Path, out: &mut BTreeMap<String, PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            modules(&path, base, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(base).unwrap_or(&path).with_extension("");
        // A file of tests (`mod tests;`) is no part of the layering.
        if rel.file_name().is_some_and(|n| n == "tests") {
            continue;
        }
        let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        match parts.last().map(String::as_str) {
            Some("main") if parts.len() == 1 => continue,
            Some("lib") if parts.len() == 1 => parts.clear(),
            Some("mod") => {
                parts.pop();
            }
            _ => {}
        }
        out.insert(parts.join("::"), path);
    }
}

/// The module a path such as `data::live::Scope` points into: its longest prefix that is a
/// module.
fn resolve(path: &str, known: &BTreeMap<String, PathBuf>) -> String {
    let segments: Vec<&str> = path.split("::").collect();
    (0..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|m| known.contains_key(m))
        .unwrap_or_default()
}

fn parent(module: &str) -> String {
    module
        .rsplit_once("::")
        .map(|(p, _)| p.to_owned())
        .unwrap_or_default()
}

/// The lowercase `a::b::c` path that starts `text`.
fn path_at(text: &str) -> String {
    let end = text
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    text[..end].trim_end_matches(':').to_owned()
}

/// What `module` (in `source`) depends on.
fn dependencies(module: &str, source: &str, known: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let mut deps = BTreeSet::new();
    for line in source.lines() {
        // Test modules sit at the end of a file; what only they use is not a dependency.
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            deps.insert(resolve(&path_at(rest), known));
        }
        // `super::` at the top level of a file names a sibling (or the parent itself).
        if let Some(rest) = code.strip_prefix("use super::") {
            let base = parent(module);
            let path = path_at(rest);
            let full = if base.is_empty() {
                path
            } else {
                format!("{base}::{path}")
            };
            deps.insert(resolve(&full, known));
        }
    }
    // A module depends on the modules it declares.
    let prefix = if module.is_empty() {
        String::new()
    } else {
        format!("{module}::")
    };
    for m in known.keys() {
        if let Some(child) = m.strip_prefix(&prefix)
            && !child.is_empty()
            && !child.contains("::")
        {
            deps.insert(m.clone());
        }
    }
    deps.remove(module);
    deps
}

/// A cycle through `at`, if the graph has one reachable from it.
fn cycle(
    at: &str,
    graph: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|m| m == at) {
        let mut found = path[i..].to_vec();
        found.push(at.to_owned());
        return Some(found);
    }
    if done.contains(at) {
        return None;
    }
    path.push(at.to_owned());
    for next in graph.get(at).into_iter().flatten() {
        if let Some(c) = cycle(next, graph, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(at.to_owned());
    None
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut known = BTreeMap::new();
    modules(&src, &src, &mut known);
    known
        .iter()
        .map(|(m, path)| {
            let source = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (m.clone(), dependencies(m, &source, &known))
        })
        .collect()
}

#[test]
fn the_modules_import_each_other_without_a_cycle() {
    let graph = graph();
    assert!(graph.len() > 20, "found only {} modules", graph.len());
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(c) = cycle(m, &graph, &mut Vec::new(), &mut done) {
            let show = |m: &String| {
                if m.is_empty() {
                    "crate".to_owned()
                } else {
                    m.clone()
                }
            };
            panic!(
                "import cycle: {}",
                c.iter().map(show).collect::<Vec<_>>().join(" -> ")
            );
        }
    }
}

/// The checker sees what it must: a path into a module, through a re-export, or from a sibling.
#[test]
fn the_checker_finds_the_dependencies_it_must() {
    let graph = graph();
    let deps = |m: &str| graph.get(m).unwrap_or_else(|| panic!("no module {m}"));
    assert!(deps("data::inbound").contains("data::mtls"));
    assert!(deps("data::inbound").contains("http"));
    assert!(deps("config::compile").contains("config::model"));
    assert!(deps("data").contains("data::live"));
    // The data path and the operator tools stay apart: nothing on the path of a connection
    // reaches the command line.
    for m in graph
        .keys()
        .filter(|m| m.starts_with("data::") || m.starts_with("http"))
    {
        assert!(
            !deps(m).iter().any(|d| d.starts_with("ops")),
            "{m} depends on the operator tools: {:?}",
            deps(m)
        );
    }
}
