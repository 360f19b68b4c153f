//! The layers of the crate, read from its source: each top-level module of
//! `src/` uses only modules of its own layer or below, and no two of them
//! depend on each other, directly or around a cycle. Test code (`tests.rs`
//! files and `#[cfg(test)] mod tests`) may reach anywhere and is not read.
//! Also: no source file other than tests grows past 1,000 lines, the engine
//! does no IO, and failpoints are compiled out of release builds
//! (ARCHITECTURE.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top. A module may use the modules of its layer and the ones
/// below; a new top-level module must be placed here.
const LAYERS: &[(&str, &[&str])] = &[
    ("leaves", &["units", "secret", "console", "text_enum"]),
    ("the engine", &["engine"]),
    (
        "what the engine reads and writes",
        &["policy", "sources", "procedure", "store", "trace"],
    ),
    (
        "acting, telling and replaying",
        &["act", "notify", "report", "telemetry", "drive", "backtest"],
    ),
    ("the sidecar", &["runtime", "server", "ha", "fleet"]),
    ("the commands", &["cmd"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn top_level_modules() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The files of a top-level module.
fn files_of(module: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let dir = src().join(module);
    if dir.is_dir() {
        rust_files(&dir, &mut files);
    }
    let file = src().join(format!("{module}.rs"));
    if file.is_file() {
        files.push(file);
    }
    files
}

fn is_test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "tests.rs")
}

/// The code of a file without comments and without its test module (by
/// convention the last item of the file).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `code` names through `crate::`, including inside
/// `use crate::{a::x, b};`.
fn uses(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the first segment of each path
            // at the group's top level.
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start => {
                        found.insert(ident(&group[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| modules.contains(m));
    found
}

fn graph() -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let modules: BTreeSet<String> = top_level_modules().into_iter().collect();
    let mut graph = BTreeMap::new();
    for module in &modules {
        let mut edges: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for file in files_of(module) {
            if is_test_file(&file) {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for used in uses(&code(&text), &modules) {
                if &used != module {
                    let shown = file.strip_prefix(src()).unwrap().display().to_string();
                    edges.entry(used).or_default().push(shown);
                }
            }
        }
        graph.insert(module.clone(), edges);
    }
    graph
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

#[test]
fn every_top_level_module_has_a_layer() {
    let unplaced: Vec<_> = top_level_modules()
        .into_iter()
        .filter(|m| layer_of(m).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "place these modules in a layer of tests/architecture.rs: {unplaced:?}"
    );
}

#[test]
fn no_module_uses_a_layer_above_its_own() {
    let mut wrong = Vec::new();
    for (module, edges) in graph() {
        let Some(own) = layer_of(&module) else {
            continue;
        };
        for (used, files) in edges {
            if let Some(theirs) = layer_of(&used)
                && theirs > own
            {
                wrong.push(format!(
                    "{module} ({}) uses {used} ({}) in {files:?}",
                    LAYERS[own].0, LAYERS[theirs].0
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_cycle_among_the_top_level_modules() {
    let graph = graph();
    // Depth-first search from every module; a module met again while still
    // on the path closes a cycle.
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeMap<String, Vec<String>>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut cycle = path[at..].to_vec();
            cycle.push(module.to_string());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_string());
        for used in graph.get(module).into_iter().flat_map(|e| e.keys()) {
            if let Some(cycle) = visit(used, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(module.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = visit(module, &graph, &mut Vec::new(), &mut done) {
            let hops: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} -> {} in {:?}", w[0], w[1], graph[&w[0]][&w[1]]))
                .collect();
            panic!("a cycle: {}\n{}", cycle.join(" -> "), hops.join("\n"));
        }
    }
}

#[test]
fn the_reader_sees_every_form_of_use() {
    let modules: BTreeSet<String> = ["engine", "store", "policy", "units", "act"]
        .into_iter()
        .map(String::from)
        .collect();
    let text = "use crate::engine::Engine;\n\
                use crate::{store::{Store, Fence}, units};\n\
                // crate::act in a comment\n\
                let p = crate::policy::load(x);\n\
                #[cfg(test)]\nmod tests {\n    use crate::act::actor;\n}\n";
    let found = uses(&code(text), &modules);
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["engine", "policy", "store", "units"]
    );
}

/// The engine does no IO, reads no clock and no environment, and is not async.
#[test]
fn the_engine_imports_no_io_clock_or_runtime() {
    let forbidden = [
        "tokio",
        "reqwest",
        "sqlx",
        "lettre",
        "SystemTime",
        "Instant",
        "Utc::now",
        "Local::now",
        "std::fs",
        "std::net",
        "std::env",
        "std::process",
        "std::thread",
        "async ",
    ];
    let mut files = Vec::new();
    rust_files(&src().join("engine"), &mut files);
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in forbidden {
                assert!(
                    !code.contains(word),
                    "{}:{}: the engine must not use {word}: {line}",
                    path.display(),
                    number + 1
                );
            }
        }
    }
    assert!(
        files.len() >= 5,
        "expected the engine's modules in src/engine"
    );
}

/// A release binary has no way to be told to kill itself: everything in
/// `act/failpoint.rs` that reads `ROLLWATCH_FAILPOINT` is compiled only with
/// debug assertions, which the release profile leaves off.
#[test]
fn failpoints_are_compiled_out_of_release_builds() {
    let text = std::fs::read_to_string(src().join("act/failpoint.rs")).unwrap();
    let code = code(&text);
    // Each item (a blank-line separated block) that names the variable, or
    // arms a point, carries `#[cfg(debug_assertions)]`.
    let mut armed_items = 0;
    for item in code.split("\n\n") {
        let arms = item.contains("ROLLWATCH_FAILPOINT")
            || item.contains("libc::kill")
            || item.contains("ARMED");
        if arms && (item.contains("fn ") || item.contains("static ")) {
            armed_items += 1;
            assert!(
                item.contains("#[cfg(debug_assertions)]"),
                "compiled into release builds:\n{item}"
            );
        }
    }
    assert!(
        armed_items >= 2,
        "expected the armed points in failpoint.rs"
    );
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let release = manifest
        .split("[profile.release]")
        .nth(1)
        .map(|rest| rest.split("\n[").next().unwrap_or(""))
        .unwrap_or("");
    assert!(
        !release.contains("debug-assertions"),
        "the release profile must not turn debug assertions on: {release}"
    );
}

#[test]
fn no_source_file_other_than_tests_is_over_1000_lines() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut long: Vec<_> = files
        .iter()
        .filter(|f| !is_test_file(f))
        .map(|f| {
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            (f.strip_prefix(src()).unwrap().display().to_string(), lines)
        })
        .filter(|(_, lines)| *lines > 1000)
        .collect();
    long.sort();
    assert!(long.is_empty(), "split these files: {long:?}");
}
