//! The workspace's shape, as an embedding service sees it: `pepnet-core`'s dependency tree is
//! the GPU stack alone (at most 85 crates, none of the servers, clients, file formats or
//! command-line crates), and inside every crate the modules import each other one way only
//! (no file imports one that imports it back, however indirectly, and no top-level module
//! does either).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What an embedding service must not get by depending on `pepnet-core`.
const NOT_IN_CORE: &[&str] = &[
    "tokio",
    "axum",
    "hyper",
    "tonic",
    "prost",
    "redis",
    "parquet",
    "arrow",
    "csv",
    "clap",
    "indicatif",
    "tracing-subscriber",
    "protox",
];

const CORE_MAX_CRATES: usize = 85;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The crates in `package`'s normal dependency tree (itself included).
fn dependency_tree(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args(["tree", "-p", package, "-e", "normal", "--prefix", "none"])
        .args(["--offline", "--locked"])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn core_depends_on_the_gpu_stack_alone() {
    // The engine, and the smallest service embedding it (one crate more: itself).
    let packages = [
        ("pepnet-core", CORE_MAX_CRATES),
        ("embed-minimal", CORE_MAX_CRATES + 1),
    ];
    for (package, most) in packages {
        let crates = dependency_tree(package);
        assert!(crates.contains("pepnet-core") && crates.contains("wgpu"));
        assert!(
            crates.len() <= most,
            "{package}'s normal dependency tree has {} crates (itself included), more than \
             {most}: {crates:?}",
            crates.len()
        );
        let found: Vec<&String> = crates
            .iter()
            .filter(|c| {
                NOT_IN_CORE
                    .iter()
                    .any(|n| *c == n || c.starts_with(&format!("{n}-")))
            })
            .collect();
        assert!(
            found.is_empty(),
            "{package} depends on {found:?}; those belong to the integration crates"
        );
    }
}

/// A crate's modules, by path (`gpu::linear`), and the files they live in.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, src, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(
                    parts.last().map(String::as_str),
                    Some("mod" | "lib" | "main")
                ) {
                    parts.pop();
                }
                out.insert(parts.join("::"), path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

/// Every `crate::...` path of a source, comments left out, with `use crate::{a::b, c}` groups
/// spelled out.
fn crate_paths(source: &str) -> Vec<Vec<String>> {
    let code: String = source
        .lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `pepnet_core::crate::`-like spellings never occur; `foo_crate::` does
        }
        let end = path_end(rest);
        expand(&[], &rest[..end], &mut out);
    }
    out
}

/// Where a path (with nested `{...}` groups) ends.
fn path_end(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            c if depth == 0 && !(c.is_alphanumeric() || c == '_' || c == ':') => return i,
            _ => {}
        }
    }
    s.len()
}

fn expand(prefix: &[String], s: &str, out: &mut Vec<Vec<String>>) {
    let s = s.trim();
    if let Some(group) = s.strip_prefix('{').and_then(|g| g.strip_suffix('}')) {
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(prefix, &group[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(prefix, &group[start..], out);
        return;
    }
    match s.split_once("::") {
        Some((head, tail)) => {
            let mut p = prefix.to_vec();
            p.push(head.trim().to_string());
            expand(&p, tail, out);
        }
        None => {
            let mut p = prefix.to_vec();
            let name = s.split_whitespace().next().unwrap_or("");
            if !name.is_empty() {
                p.push(name.to_string());
            }
            out.push(p);
        }
    }
}

/// Where modules are compared: each file, or each top-level module with everything under it.
#[derive(Clone, Copy, PartialEq)]
enum Grain {
    File,
    TopLevel,
}

/// The module cycles of the crate whose sources are in `src`, at `grain`: each as the modules
/// on it.
fn cycles(src: &Path, grain: Grain) -> Vec<Vec<String>> {
    let files = modules(src);
    let unit = |m: &str| -> String {
        match grain {
            Grain::File => m.to_string(),
            Grain::TopLevel => m.split("::").next().unwrap_or("").to_string(),
        }
    };
    let mut owned: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, file) in &files {
        let source = std::fs::read_to_string(file).unwrap();
        for path in crate_paths(&source) {
            // The longest prefix of the path that is a module is what it imports.
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|m| files.contains_key(m));
            if let Some(t) = target.map(|t| unit(&t)).filter(|t| *t != unit(name)) {
                owned.entry(unit(name)).or_default().insert(t);
            }
        }
    }
    let edges: BTreeMap<&str, BTreeSet<&str>> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.iter().map(String::as_str).collect()))
        .collect();
    let mods: BTreeSet<String> = files.keys().map(|m| unit(m)).collect();
    // Strongly connected components (Tarjan's), those of more than one module.
    struct State<'a> {
        edges: &'a BTreeMap<&'a str, BTreeSet<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(v: &'a str, s: &mut State<'a>) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        for &w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(w, s);
                let lw = s.low[w];
                s.low.entry(v).and_modify(|l| *l = (*l).min(lw));
            } else if s.stack.contains(&w) {
                let iw = s.index[w];
                s.low.entry(v).and_modify(|l| *l = (*l).min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        edges: &edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for name in &mods {
        if !state.index.contains_key(name.as_str()) {
            visit(name, &mut state);
        }
    }
    state.found
}

#[test]
fn no_crate_has_a_module_loop() {
    let mut crates = vec![root().join("src")];
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        crates.push(entry.unwrap().path().join("src"));
    }
    let mut loops = Vec::new();
    for src in &crates {
        for (grain, what) in [
            (Grain::File, "files"),
            (Grain::TopLevel, "top-level modules"),
        ] {
            for cycle in cycles(src, grain) {
                loops.push(format!("{} ({what}): {}", src.display(), cycle.join(" ⇄ ")));
            }
        }
    }
    assert!(loops.is_empty(), "module loops:\n{}", loops.join("\n"));
}

#[test]
fn the_loop_finder_finds_a_loop() {
    // Two modules that import each other, and a third that only imports.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "mod a; mod b; mod c;").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::{b::B, c};\npub struct A;").unwrap();
    std::fs::write(
        src.join("b.rs"),
        "// crate::c is only named here\npub fn f(_: crate::a::A) {}\npub struct B;",
    )
    .unwrap();
    std::fs::write(src.join("c.rs"), "use crate::a::A;").unwrap();
    assert_eq!(
        cycles(src, Grain::File),
        vec![vec!["a".to_string(), "b".to_string(), "c".to_string()]]
    );
    std::fs::write(src.join("c.rs"), "pub struct C;").unwrap();
    assert_eq!(
        cycles(src, Grain::File),
        vec![vec!["a".to_string(), "b".to_string()]]
    );
    std::fs::write(src.join("b.rs"), "pub struct B;").unwrap();
    assert!(cycles(src, Grain::File).is_empty());

    // No two files import each other, but two top-level modules do, through different files.
    std::fs::create_dir(src.join("d")).unwrap();
    std::fs::write(src.join("d/mod.rs"), "pub mod one; pub mod two;").unwrap();
    std::fs::write(src.join("d/one.rs"), "use crate::e::E;").unwrap();
    std::fs::write(src.join("d/two.rs"), "pub struct Two;").unwrap();
    std::fs::write(src.join("e.rs"), "pub struct E(crate::d::two::Two);").unwrap();
    assert!(cycles(src, Grain::File).is_empty());
    assert_eq!(
        cycles(src, Grain::TopLevel),
        vec![vec!["d".to_string(), "e".to_string()]]
    );
}
