//! The layering ARCHITECTURE.md states, checked on the source (in the spirit of
//! rust-analyzer's `tidy`): every `crate::<module>` a file names is an edge from its top-level
//! module to that one; the graph must have no cycle, the pure modules must name no I/O module,
//! and only the modules whose job it is may name the engine client, SQL or the cloud.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

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

/// The top-level module a file belongs to (`src/state/apply.rs` → `state`).
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(SRC).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// A file's code without comments and without its `#[cfg(test)] mod tests` part (tests may use
/// anything) — good enough for our own formatting (rustfmt, tests at the end).
fn code_of(text: &str, path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs")
        || path.components().any(|c| c.as_os_str() == "tests")
    {
        return String::new();
    }
    let body = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    body.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b` path a piece of code names, as `a::b` (or `a`).
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        out.insert(path.trim_end_matches(':').to_string());
    }
    out
}

struct Tree {
    /// module → (file, code)
    files: Vec<(String, PathBuf, String)>,
}

impl Tree {
    fn read() -> Tree {
        let mut paths = Vec::new();
        rust_files(Path::new(SRC), &mut paths);
        let files = paths
            .into_iter()
            .filter(|p| !matches!(module_of(p).as_str(), "main" | "lib" | "testutil"))
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                (module_of(&p), p.clone(), code_of(&text, &p))
            })
            .collect();
        Tree { files }
    }

    fn graph(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (m, _, code) in &self.files {
            let deps = g.entry(m.clone()).or_default();
            for path in crate_paths(code) {
                let top = path.split("::").next().unwrap().to_string();
                if top != *m && !top.is_empty() && top.chars().all(|c| c.is_lowercase() || c == '_')
                {
                    deps.insert(top);
                }
            }
        }
        g
    }

    /// Files of `module` that name any of `paths` (prefixes such as `engine` or
    /// `engine::Engine`), and which.
    fn naming(&self, module: &str, paths: &[&str]) -> Vec<String> {
        self.files
            .iter()
            .filter(|(m, _, _)| m == module)
            .flat_map(|(_, p, code)| {
                crate_paths(code)
                    .into_iter()
                    .filter(|c| {
                        paths
                            .iter()
                            .any(|x| c == x || c.starts_with(&format!("{x}::")))
                    })
                    .map(move |c| format!("{}: crate::{c}", p.display()))
            })
            .collect()
    }
}

#[test]
fn no_cycle_between_top_level_modules() {
    let g = Tree::read().graph();
    // Depth-first search for a back edge, reporting the cycle.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(cycle) = visit(n, &g, &mut Vec::new(), &mut done) {
            panic!("module cycle: {}", cycle.join(" -> "));
        }
    }
}

/// Modules that do I/O (engine, database, network, bus, files, processes, clocks of threads).
const IO: &[&str] = &[
    "engine",
    "db",
    "cloud",
    "balena_api",
    "api",
    "state",
    "dbus",
    "systemd",
    "http",
    "logs",
    "fsutil",
    "host",
    "locks",
    "host_config",
    "firewall",
    "boot_config",
    "dry_run",
];

#[test]
fn the_planner_and_the_compose_mapping_name_no_io_module() {
    let tree = Tree::read();
    for pure in ["planner", "compose", "encoding"] {
        // The engine's wire types (plain serde structs) are the compose mapping's input and output.
        let found: Vec<String> = tree
            .naming(pure, IO)
            .into_iter()
            .filter(|f| {
                !f.ends_with("crate::engine::types") && !f.contains("crate::engine::types::")
            })
            .collect();
        assert!(
            found.is_empty(),
            "{pure} names I/O modules:\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn only_the_state_engine_and_its_helpers_name_the_engine_client() {
    let tree = Tree::read();
    // The API asks the state engine; the cloud link reports what the state engine publishes.
    for m in ["api", "cloud", "balena_api", "protocol", "db"] {
        let found = tree.naming(m, &["engine"]);
        assert!(
            found.is_empty(),
            "{m} names the engine:\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn only_db_speaks_sql() {
    let tree = Tree::read();
    let found: Vec<String> = tree
        .files
        .iter()
        .filter(|(m, _, code)| m != "db" && code.contains("rusqlite"))
        .map(|(_, p, _)| p.display().to_string())
        .collect();
    assert!(found.is_empty(), "rusqlite outside db: {found:?}");
}

#[test]
fn the_cloud_link_does_not_reach_into_the_state_engine() {
    let tree = Tree::read();
    for m in ["cloud", "api", "logs", "balena_api"] {
        let found = tree.naming(m, &["state"]);
        assert!(
            found.is_empty(),
            "{m} names the state engine's internals:\n{}",
            found.join("\n")
        );
    }
}

/// Every `docs/contract/<file>.md <section>` a comment cites names a file of the repository's
/// contract and a section that file has, so a reader can follow it.
#[test]
fn comments_cite_contract_sections_that_exist() {
    let docs = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/contract"));
    let mut paths = Vec::new();
    rust_files(Path::new(SRC), &mut paths);
    let mut missing = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("docs/contract/") {
            rest = &rest[i + "docs/contract/".len()..];
            let Some(end) = rest.find(".md") else { break };
            let file = &rest[..end];
            rest = &rest[end + 3..];
            let Ok(doc) = std::fs::read_to_string(docs.join(format!("{file}.md"))) else {
                missing.push(format!("{}: no docs/contract/{file}.md", path.display()));
                continue;
            };
            // The section follows, possibly on the next comment line.
            let after =
                rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/' || c == '!');
            let token: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || matches!(c, '§' | '.' | '(' | ')'))
                .collect();
            let section = match token.strip_prefix('(') {
                // `(e)`, or `(e` cut by the comment's own parenthesis.
                Some(letter) => format!("({})", letter.trim_end_matches(['.', ')'])),
                // `§4` or `C.5`, maybe closed by the comment's parenthesis or sentence.
                None => token.trim_end_matches(['.', ')']).to_string(),
            };
            let is_section = section.starts_with('§')
                || section.starts_with('(')
                || section.chars().next().is_some_and(|c| c.is_ascii_digit())
                || section.contains('.');
            if is_section && !doc.contains(&section) {
                missing.push(format!("{}: {file}.md {section}", path.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "cited sections missing:\n{}",
        missing.join("\n")
    );
}
