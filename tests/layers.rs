//! The layers of ARCHITECTURE.md hold in the code: every module of `src/` is in the table, and
//! none names a module of its own layer or a higher one (unit tests aside, which may reach
//! anywhere). The table is read from ARCHITECTURE.md itself, so the page and the code cannot
//! drift apart.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Each module's layer, from the rows `| N | `a`, `b` | ... |` of the table.
fn layers() -> BTreeMap<String, u32> {
    let page = fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut layers = BTreeMap::new();
    for row in page.lines() {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(layer) = cells.get(1).and_then(|cell| cell.parse::<u32>().ok()) else {
            continue;
        };
        for module in cells[2].split(',') {
            let name = module.trim().trim_matches('`');
            assert!(
                layers.insert(name.to_owned(), layer).is_none(),
                "{name} is in two layers"
            );
        }
    }
    layers
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The top-level module a file of `src/` belongs to (`src/store/write.rs` → `store`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The crate modules a file names outside comments and before its unit tests.
fn named_modules(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut names = Vec::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (at, _) in line.match_indices("crate::") {
            let rest = &line[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.push(name);
            }
        }
    }
    names
}

#[test]
fn every_module_uses_only_modules_of_lower_layers() {
    let layers = layers();
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(&layer) = layers.get(&module) else {
            wrong.push(format!("{module} ({}) is in no layer", file.display()));
            continue;
        };
        for named in named_modules(&fs::read_to_string(file).unwrap()) {
            let Some(&other) = layers.get(&named) else {
                // A re-export at the crate root (`crate::publish`) hides where it comes from.
                wrong.push(format!(
                    "{} names crate::{named}, in no layer",
                    file.display()
                ));
                continue;
            };
            if named != module && other >= layer {
                wrong.push(format!(
                    "{} (layer {layer}) uses {named} (layer {other})",
                    file.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "against ARCHITECTURE.md:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_table_knows_the_modules_it_checks() {
    let layers = layers();
    for module in [
        "observable",
        "store",
        "chain",
        "pipeline",
        "consumer",
        "app",
        "cli",
    ] {
        assert!(layers.contains_key(module), "{module} missing: {layers:?}");
    }
}
