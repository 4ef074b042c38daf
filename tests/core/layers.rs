//! The layer order that src/lib.rs states holds: every `crate::x` a module names is a
//! module listed before it there. The list is read from lib.rs itself, so the two cannot
//! drift apart; a module lib.rs does not list fails too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The numbered list in lib.rs's documentation: module name -> position.
fn stated_order() -> HashMap<String, usize> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut order = HashMap::new();
    for line in lib.lines() {
        let Some(item) = line.strip_prefix("//! ") else {
            continue;
        };
        let Some((number, rest)) = item.split_once(". `") else {
            continue;
        };
        if let (Ok(n), Some((name, _))) = (number.parse::<usize>(), rest.split_once('`')) {
            order.insert(name.to_string(), n);
        }
    }
    order
}

/// Every `.rs` file of a module: `src/name.rs`, or everything under `src/name/`.
fn files_of(module: &str) -> Vec<PathBuf> {
    let file = src().join(format!("{module}.rs"));
    if file.exists() {
        return vec![file];
    }
    let mut out = Vec::new();
    let mut stack = vec![src().join(module)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out
}

/// The crate modules a file names (`crate::x`, `crate::{x, y}` is not used here).
fn named_modules(text: &str) -> Vec<String> {
    text.match_indices("crate::")
        .map(|(at, _)| {
            text[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// `pub mod x;` lines of lib.rs: the crate's top-level modules.
fn declared_modules() -> Vec<String> {
    std::fs::read_to_string(src().join("lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').to_string())
        .collect()
}

/// Edges against the order, as "file: module (n) uses later (m)".
fn violations(order: &HashMap<String, usize>) -> Vec<String> {
    let mut out = Vec::new();
    for module in declared_modules() {
        let Some(&rank) = order.get(&module) else {
            out.push(format!("lib.rs's layer list does not name `{module}`"));
            continue;
        };
        for file in files_of(&module) {
            let text = std::fs::read_to_string(&file).unwrap();
            for used in named_modules(&text) {
                match order.get(&used) {
                    Some(&r) if r < rank || used == module => {}
                    Some(&r) => out.push(format!(
                        "{}: `{module}` ({rank}) uses `{used}` ({r}), listed after it",
                        file.strip_prefix(src()).unwrap().display()
                    )),
                    None => out.push(format!(
                        "{}: `{module}` uses `{used}`, which lib.rs's list does not name",
                        file.strip_prefix(src()).unwrap().display()
                    )),
                }
            }
        }
    }
    out
}

#[test]
fn every_import_follows_the_layer_order_lib_rs_states() {
    let order = stated_order();
    assert!(order.len() >= 15, "lib.rs's list was not found: {order:?}");
    let found = violations(&order);
    assert!(
        found.is_empty(),
        "imports against the layer order:\n{}",
        found.join("\n")
    );
}

/// The check itself: an order with two modules swapped is caught.
#[test]
fn an_import_against_the_order_is_caught() {
    let mut order = stated_order();
    let (model, engine) = (order["model"], order["engine"]);
    order.insert("model".into(), engine);
    order.insert("engine".into(), model);
    let found = violations(&order);
    assert!(
        found
            .iter()
            .any(|v| v.contains("`engine`") && v.contains("uses `model`")),
        "{found:?}"
    );
    order.remove("worker");
    assert!(violations(&order)
        .iter()
        .any(|v| v.contains("does not name `worker`")));
}
