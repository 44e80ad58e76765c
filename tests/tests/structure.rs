//! The repository's shape, checked so that it stays as ARCHITECTURE.md describes it:
//! - no module of a crate imports a module that imports it back. A module and its
//!   direct submodules may name each other (a submodule implements part of its parent:
//!   the store's `impl Store` is spread over `store/*.rs`); any two other modules,
//!   siblings included, may not;
//! - only `server/src/runtime.rs` names glommio among the server's modules;
//! - `engram-server` links neither `engram-control` nor tokio, and `engram-proto` links
//!   no async runtime;
//! - no file of the repository names a path outside it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The crates whose modules are checked for cycles, by their folder: all of them.
const CRATES: [&str; 9] = [
    "proto",
    "proto/metrics-http",
    "proto/link-tokio",
    "proto/tls",
    "server",
    "client",
    "control-plane",
    "tools",
    "tests",
];

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

fn rust_files(folder: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![folder.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory).expect("readable folder") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// `a::b` for `src/a/b.rs` or `src/a/b/mod.rs`; the crate root is "".
fn module_path(source: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(source).expect("file under src").with_extension("");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without comments and without its `#[cfg(test)]` tail: tests may
/// reach anywhere.
fn production_code(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths a file's code names through `crate::…`, `super::…` and
/// `use crate::{…}` groups, each cut to the longest prefix that is a module.
fn imported_modules(module: &str, code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let parent = module.rsplit_once("::").map_or("", |(parent, _)| parent);
    let mut paths: Vec<String> = Vec::new();
    for (prefix, base) in [("crate::", ""), ("super::", parent)] {
        for (index, _) in code.match_indices(prefix) {
            let rest = &code[index + prefix.len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or_default();
                paths.extend(inner.split(',').map(|item| join(base, item.trim())));
            } else {
                let path: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                paths.push(join(base, &path));
            }
        }
    }
    paths
        .iter()
        .filter_map(|path| longest_module(path, modules))
        .filter(|imported| imported != module && !imported.is_empty())
        .collect()
}

fn join(base: &str, path: &str) -> String {
    match (base.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (false, true) => base.to_string(),
        (false, false) => format!("{base}::{path}"),
    }
}

fn longest_module(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").filter(|part| !part.is_empty()).collect();
    (1..=parts.len())
        .rev()
        .map(|length| parts[..length].join("::"))
        .find(|candidate| modules.contains(candidate))
}

fn import_cycles(crate_folder: &Path) -> Vec<(String, String)> {
    let source = crate_folder.join("src");
    let files = rust_files(&source);
    let modules: BTreeSet<String> = files.iter().map(|file| module_path(&source, file)).collect();
    let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = module_path(&source, file);
        if module.split("::").any(|part| part == "tests") {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("readable source");
        imports.insert(
            module.clone(),
            imported_modules(&module, &production_code(&text), &modules),
        );
    }
    let mut cycles = Vec::new();
    for (module, imported) in &imports {
        for other in imported {
            let nested = is_parent(module, other) || is_parent(other, module);
            if module < other && !nested && imports.get(other).is_some_and(|back| back.contains(module)) {
                cycles.push((module.clone(), other.clone()));
            }
        }
    }
    cycles
}

/// Whether `module` is a direct submodule of `parent`.
fn is_parent(parent: &str, module: &str) -> bool {
    module.rsplit_once("::").is_some_and(|(above, _)| above == parent)
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let repository = repository();
    let cycles: Vec<String> = CRATES
        .iter()
        .flat_map(|folder| {
            import_cycles(&repository.join(folder))
                .into_iter()
                .map(move |(a, b)| format!("{folder}: {a} <-> {b}"))
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "modules importing each other:\n{}",
        cycles.join("\n")
    );
}

/// The check finds real pairs (`c`, `d`; siblings `a::inner`, `a::other`) and is not
/// fooled by imports in comments or in test code, which would make pairs of
/// (`a::inner`, `b`) and (`a`, `b`); a parent and its submodule naming each other (`a`,
/// `a::inner`) are allowed.
#[test]
fn the_cycle_check_sees_a_cycle() {
    let scratch = std::env::temp_dir().join(format!("engram-structure-{}", std::process::id()));
    let source = scratch.join("src");
    std::fs::create_dir_all(source.join("a")).expect("scratch crate");
    let files = [
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\npub mod d;\n"),
        (
            "a/mod.rs",
            "use crate::{b::Thing, c};\nuse crate::a::inner::Deep;\npub mod inner;\npub mod other;\n",
        ),
        (
            "a/inner.rs",
            "use super::Thing; // crate::b in a comment\nuse super::other::Near;\n",
        ),
        ("a/other.rs", "use crate::a::inner::Far;\n"),
        ("b.rs", "use crate::a::inner::Other;\n#[cfg(test)]\nuse crate::a;\n"),
        ("c.rs", "use crate::d::Far;\n"),
        ("d.rs", "use super::c::Near;\n"),
    ];
    for (name, text) in files {
        std::fs::write(source.join(name), text).expect("scratch file");
    }
    let cycles = import_cycles(&scratch);
    std::fs::remove_dir_all(&scratch).expect("scratch removed");
    let pairs = [("a::inner", "a::other"), ("c", "d")];
    assert_eq!(cycles, pairs.map(|(a, b)| (a.to_string(), b.to_string())).to_vec());
}

#[test]
fn only_the_runtime_module_names_glommio_in_the_server() {
    let source = repository().join("server/src");
    let naming: Vec<String> = rust_files(&source)
        .into_iter()
        .filter(|file| std::fs::read_to_string(file).is_ok_and(|text| text.contains("glommio")))
        .map(|file| module_path(&source, &file))
        .collect();
    assert_eq!(naming, vec!["runtime".to_string()]);
}

/// The normal (non-dev) dependency tree of `package`, one crate name per line.
fn dependencies(package: &str) -> String {
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .current_dir(repository())
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 tree")
}

fn links(tree: &str, name: &str) -> bool {
    tree.lines().any(|line| line.split(' ').next() == Some(name))
}

#[test]
fn crate_edges_point_down() {
    let server = dependencies("engram-server");
    assert!(links(&server, "engram-proto"), "the tree is read right:\n{server}");
    for forbidden in ["engram-control", "tokio"] {
        assert!(!links(&server, forbidden), "engram-server links {forbidden}");
    }
    let proto = dependencies("engram-proto");
    for runtime in ["tokio", "glommio", "async-std", "smol"] {
        assert!(!links(&proto, runtime), "engram-proto links {runtime}");
    }
}

/// Files that name somewhere outside the repository: an absolute path into a developer's
/// machine, or a relative one climbing out of it.
#[test]
fn no_file_names_a_path_outside_the_repository() {
    let repository = repository();
    let listed = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&repository)
        .output()
        .expect("git ls-files runs");
    assert!(listed.status.success(), "git ls-files failed");
    // Built from parts, so this file is checked like every other.
    let outside = [
        ["..", "/shared/"].concat(),
        ["/wo", "rk/"].concat(),
        ["DESIGN", ".md"].concat(),
    ];
    let mut offenders = Vec::new();
    for file in listed.stdout.split(|byte| *byte == 0).filter(|name| !name.is_empty()) {
        let name = String::from_utf8_lossy(file).into_owned();
        let Ok(text) = std::fs::read_to_string(repository.join(&name)) else {
            continue;
        };
        offenders.extend(
            outside
                .iter()
                .filter(|pattern| text.contains(*pattern))
                .map(|pattern| format!("{name} names {pattern}")),
        );
    }
    assert!(offenders.is_empty(), "{}", offenders.join("\n"));
}
