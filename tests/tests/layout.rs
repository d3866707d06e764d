//! The source layout's rules, checked on the text of the crates' sources
//! (no build needed):
//!
//! - **No import loop between files.** Each source file is a module; a
//!   `crate::a::b…` path in it (in a `use`, braces expanded, or inline) is an
//!   edge to the file that defines the longest prefix of that path. Edges
//!   between a module and its own ancestors (`mod.rs` and its children) are
//!   Rust's nesting, not imports, and are left out; so are the test modules
//!   (`#[cfg(test)]` to the end of the file) and comments. A loop among the
//!   rest fails the test, naming the files and the paths that close it.
//! - **No import loop between the collector's folders either**: with each
//!   top-level module and folder (`store/`, `app/`, `http/`) taken as one
//!   node, so a folder cannot hide a loop through its files (a domain
//!   module that imports the store and is called back by one of its files).
//! - **No file longer than [`MAX_LINES`]** (test modules not counted)
//!   unless its module doc gives a reason on a line starting `//! Size:`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lines of non-test code a file may have without saying why.
const MAX_LINES: usize = 600;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
        .to_path_buf()
}

/// Every library source file under `src`, by module path (`""` is the
/// crate root, `"app::commit"` is `app/commit.rs`). The binary root
/// (`main.rs`) is another crate and left out.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts == ["main"] {
            continue;
        }
        if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
            parts.pop();
        }
        out.insert(parts.join("::"), f);
    }
    out
}

/// The code of a file: comments and the test module (from a
/// `#[cfg(test)]` line to the end) removed.
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start() == "#[cfg(test)]" {
            break;
        }
        let line = match line.find("//") {
            // A `//` inside a string literal ("http://…") ends the line
            // early: harmless, a path after it on the same line is rare.
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The `crate::…` paths named in `code`, braces expanded
/// (`crate::a::{b, c::d}` gives `a::b` and `a::c::d`).
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while let Some(at) = code[i..].find("crate::") {
        let start = i + at;
        i = start + "crate::".len();
        let before = start.checked_sub(1).map(|j| bytes[j]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue; // `dcwatt_crate::` or the like
        }
        i = expand(code, i, String::new(), &mut out);
    }
    out
}

/// Reads a path (and braces) from `at`, adding each full path after
/// `prefix` to `out`; returns where it stopped.
fn expand(code: &str, mut at: usize, prefix: String, out: &mut BTreeSet<String>) -> usize {
    let bytes = code.as_bytes();
    let mut path = prefix;
    loop {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        if at < bytes.len() && bytes[at] == b'{' {
            at += 1;
            loop {
                while at < bytes.len() && (bytes[at].is_ascii_whitespace() || bytes[at] == b',') {
                    at += 1;
                }
                if at >= bytes.len() || bytes[at] == b'}' {
                    return at + 1;
                }
                at = expand(code, at, path.clone(), out);
                // Skip `as name` and anything else up to the next item.
                while at < bytes.len() && !matches!(bytes[at], b',' | b'}') {
                    at += 1;
                }
            }
        }
        let start = at;
        while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
            at += 1;
        }
        let ident = &code[start..at];
        if ident.is_empty() {
            if !path.is_empty() {
                out.insert(path);
            }
            return at;
        }
        if !path.is_empty() {
            path.push_str("::");
        }
        path.push_str(ident);
        if code[at..].starts_with("::") {
            at += 2;
        } else {
            out.insert(path);
            return at;
        }
    }
}

/// The module (file) that defines `path`: its longest prefix that is one.
fn owner<'a>(modules: &'a BTreeMap<String, PathBuf>, path: &str) -> Option<&'a str> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find_map(|p| modules.get_key_value(&p).map(|(k, _)| k.as_str()))
}

/// True when `a` is `b`'s ancestor or `b` is `a`'s (or they are the same).
fn nested(a: &str, b: &str) -> bool {
    let within = |outer: &str, inner: &str| {
        outer.is_empty() || inner == outer || inner.starts_with(&format!("{outer}::"))
    };
    within(a, b) || within(b, a)
}

/// The import graph of a crate: per module, the modules it names and the
/// paths it names them by.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn graph(src: &Path) -> Graph {
    let modules = modules(src);
    let mut g = Graph::new();
    for (m, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap();
        let edges = g.entry(m.clone()).or_default();
        for path in crate_paths(&code(&text)) {
            if let Some(to) = owner(&modules, &path) {
                if !nested(m, to) {
                    edges.entry(to.to_owned()).or_default().insert(path);
                }
            }
        }
    }
    g
}

/// The strongly connected components with more than one module (Tarjan).
fn loops(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flat_map(|e| e.keys()) {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// Fails naming every loop of `g` and the paths that make it.
fn assert_no_loop(krate: &str, g: &Graph) {
    let found = loops(g);
    if found.is_empty() {
        return;
    }
    let mut msg = format!("{krate}: import loops between files:\n");
    for comp in &found {
        msg += &format!("  loop among {comp:?}:\n");
        for m in comp {
            for (to, paths) in &g[m] {
                if comp.contains(to) {
                    msg += &format!("    {m} -> {to}: {paths:?}\n");
                }
            }
        }
    }
    panic!("{msg}");
}

/// `g` with each module taken as its top-level module or folder
/// (`store::ledger` as `store`), edges within one left out.
fn folders(g: &Graph) -> Graph {
    let top = |m: &str| m.split("::").next().unwrap_or_default().to_owned();
    let mut out = Graph::new();
    for (m, edges) in g {
        let from = out.entry(top(m)).or_default();
        for (to, paths) in edges {
            if top(to) != top(m) {
                from.entry(top(to))
                    .or_default()
                    .extend(paths.iter().cloned());
            }
        }
    }
    out
}

#[test]
fn the_parser_sees_grouped_nested_and_inline_paths() {
    let code = code(
        "use crate::a::{b, c::{d, e as f}};\n\
         // use crate::commented::Out;\n\
         fn x() { crate::g::h(); dcwatt_crate::no(); }\n\
         #[cfg(test)]\nmod tests { use crate::only_in_tests::X; }\n",
    );
    let got: Vec<String> = crate_paths(&code).into_iter().collect();
    assert_eq!(got, ["a::b", "a::c::d", "a::c::e", "g::h"]);
}

#[test]
fn a_loop_is_found_and_nesting_is_not_one() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("app")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a; pub mod b; pub mod app;").unwrap();
    std::fs::write(src.join("app/mod.rs"), "use crate::app::jobs::J;").unwrap();
    std::fs::write(
        src.join("app/jobs.rs"),
        "use crate::app::C; use crate::a::X;",
    )
    .unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::Y;").unwrap();
    std::fs::write(src.join("b.rs"), "pub fn y() { crate::a::x() }").unwrap();
    let g = graph(src);
    assert_eq!(loops(&g), vec![vec!["a".to_owned(), "b".to_owned()]]);
}

#[test]
fn a_folder_cannot_hide_a_loop_through_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("store")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a; pub mod store;").unwrap();
    std::fs::write(src.join("store/mod.rs"), "pub mod write; pub struct S;").unwrap();
    std::fs::write(src.join("store/write.rs"), "use crate::a::X;").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::store::S;").unwrap();
    let g = graph(src);
    assert!(loops(&g).is_empty(), "no loop between files");
    assert_eq!(
        loops(&folders(&g)),
        vec![vec!["a".to_owned(), "store".to_owned()]]
    );
}

#[test]
fn no_import_loop_between_files() {
    let root = workspace();
    for krate in ["agent", "collector", "wire", "verify"] {
        assert_no_loop(krate, &graph(&root.join(krate).join("src")));
    }
    let collector = graph(&root.join("collector/src"));
    assert_no_loop("collector (folders)", &folders(&collector));
}

#[test]
fn long_files_say_why() {
    let root = workspace();
    let mut long = Vec::new();
    for krate in ["collector", "wire"] {
        for file in modules(&root.join(krate).join("src")).values() {
            let text = std::fs::read_to_string(file).unwrap();
            let lines = text
                .lines()
                .take_while(|l| l.trim_start() != "#[cfg(test)]")
                .count();
            let says_why = text
                .lines()
                .take_while(|l| l.starts_with("//!") || l.trim().is_empty())
                .any(|l| l.starts_with("//! Size:"));
            if lines > MAX_LINES && !says_why {
                long.push(format!("{} ({lines} lines)", file.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "longer than {MAX_LINES} lines without a `//! Size:` line in the module doc: {long:?}"
    );
}
