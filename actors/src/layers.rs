//! The engine's layers, checked: a module may use only modules of a lower
//! layer (and its own files). Plain data and pure rules sit at the bottom,
//! actors on top, so a change to a rule never has to reach up into an actor
//! and no import circle can form again.
//!
//! The check reads this crate's sources: every `crate::name` (alone, in a
//! `crate::{…}` group, or as a `super::` path that climbs to the crate's
//! root) that a module's non-test code mentions must name a module of a
//! lower layer. Comment lines do not count: a doc link is not a dependency.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Bottom first. A module may use the modules of any layer before its own.
const LAYERS: &[&[&str]] = &[
    // Text-to-number rules the frame rules call (the EdgeWatch bridge's
    // lax coercions).
    &["lax"],
    // Plain data and pure rules, with no dependency inside the crate: topic
    // names and filters, the topic families, the domain types (frame, device
    // id, rejection), the in-flight byte budget, Slack's message and labels.
    &["topic", "families", "frame", "inflight", "notice"],
    // The event envelope and its wire forms; the metrics; what the registry
    // tells others about devices.
    &["event", "telemetry", "devices"],
    // Rules over events: the reject event, subscription predicates.
    &["reject", "subscription"],
    // The bus and its delivery protocol (queues, deliveries, snapshots).
    &["bus"],
    // Actors that only talk to the bus, or to nobody.
    &["registry", "session"],
    // The Redis stream: feeds the registry and bus, fed by ingest and HTTP.
    &["cluster"],
    // Slack: in cluster mode its outbox is in Redis, delivered by the
    // cluster's leader.
    &["slack"],
    // Actors that feed others.
    &["ingest", "alerts"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every `.rs` file under `dir`, with the top-level module it belongs to and
/// how many `super::` climb from its code to the crate's root.
fn sources(dir: &Path) -> Vec<(String, PathBuf, usize)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut stack = vec![path.clone()];
            while let Some(d) = stack.pop() {
                for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|x| x == "rs") {
                        // `m/mod.rs` is module `m` (one climb to the root),
                        // `m/x.rs` is `m::x` (two), and so on.
                        let below = p.strip_prefix(dir).map_or(1, |r| r.components().count());
                        let depth = if p.file_name().is_some_and(|n| n == "mod.rs") {
                            below - 1
                        } else {
                            below
                        };
                        out.push((name.clone(), p, depth));
                    }
                }
            }
        } else if let Some(stem) = name.strip_suffix(".rs") {
            out.push((stem.to_owned(), path, 1));
        }
    }
    out
}

/// The identifier at the start of `text`.
fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The first segment of every path in a `{a, b::c, d::{e, f}}` group that
/// `text` starts with (after the `{`).
fn group_heads(text: &str, used: &mut BTreeSet<String>) {
    let mut depth = 0usize;
    let mut at_item = true;
    for (i, c) in text.char_indices() {
        match c {
            '{' => {
                depth += 1;
                at_item = depth == 0;
            }
            '}' if depth == 0 => return,
            '}' => depth -= 1,
            ',' if depth == 0 => at_item = true,
            c if at_item && (c.is_ascii_alphabetic() || c == '_') => {
                let name = ident(&text[i..]);
                if name != "self" {
                    used.insert(name.to_owned());
                }
                at_item = false;
            }
            _ => {}
        }
    }
}

/// The crate-root modules named after each `root` prefix in `code`.
fn heads_after(code: &str, root: &str, used: &mut BTreeSet<String>) {
    for (at, _) in code.match_indices(root) {
        // `super::super::x` seen with `root = "super::"` is not a root path.
        if root.starts_with("super::") && code[..at].ends_with("super::") {
            continue;
        }
        let rest = &code[at + root.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            group_heads(group, used);
        } else {
            let rest = rest.strip_prefix("super::").map_or(rest, |_| "");
            let name = ident(rest);
            if !name.is_empty() {
                used.insert(name.to_owned());
            }
        }
    }
}

/// The crate-root modules a file's non-test code mentions: a `tests.rs`
/// file counts for nothing, and a file's inline tests start at
/// `#[cfg(test)]` (a `#[cfg(test)] mod tests;` line counts for nothing).
fn used_modules(path: &Path, depth: usize) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return used;
    }
    let Ok(text) = fs::read_to_string(path) else {
        return used;
    };
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            match lines.peek() {
                Some(next) if next.trim_end().ends_with(';') => {
                    lines.next();
                    continue;
                }
                _ => break,
            }
        }
        if trimmed.starts_with("//") {
            continue;
        }
        code.push_str(line);
        code.push('\n');
    }
    heads_after(&code, "crate::", &mut used);
    if depth > 0 {
        heads_after(&code, &"super::".repeat(depth), &mut used);
    }
    used
}

/// Every breach of the layers in the sources under `src`.
fn breaches(src: &Path) -> Vec<String> {
    let mut breaches = Vec::new();
    for (module, path, depth) in sources(src) {
        if module == "lib" || module == "layers" {
            continue;
        }
        let Some(own) = layer_of(&module) else {
            breaches.push(format!(
                "module `{module}` is in no layer: add it to LAYERS"
            ));
            continue;
        };
        for used in used_modules(&path, depth) {
            if used == module {
                continue;
            }
            match layer_of(&used) {
                Some(layer) if layer < own => {}
                _ => breaches.push(format!(
                    "{} uses `crate::{used}`, which is not below `{module}`",
                    path.strip_prefix(src).unwrap_or(&path).display()
                )),
            }
        }
    }
    breaches.sort();
    breaches
}

#[test]
fn every_module_uses_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let breaches = breaches(&src);
    assert!(
        breaches.is_empty(),
        "layer breaches:\n{}",
        breaches.join("\n")
    );
}

#[test]
fn the_check_sees_every_spelling_of_a_path() {
    let mut used = BTreeSet::new();
    heads_after(
        "use crate::event::Event;\nuse crate::{bus::{self, Bus}, topic};\nlet x = crate::slack::now();",
        "crate::",
        &mut used,
    );
    let names: Vec<&str> = used.iter().map(String::as_str).collect();
    assert_eq!(names, ["bus", "event", "slack", "topic"]);

    let mut used = BTreeSet::new();
    heads_after(
        "use super::super::alerts::Engine;\nuse super::sibling;",
        "super::super::",
        &mut used,
    );
    assert_eq!(used.into_iter().collect::<Vec<_>>(), ["alerts"]);
}

#[test]
fn a_lower_module_importing_a_higher_one_is_a_breach() {
    let dir = std::env::temp_dir().join(format!("edgebus-layers-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("bus")).unwrap();
    fs::write(dir.join("topic.rs"), "use crate::families::Route;\n").unwrap();
    fs::write(
        dir.join("bus/queue.rs"),
        "use super::super::session::WsSession;\n#[cfg(test)]\nmod tests { use crate::alerts::Engine; }\n",
    )
    .unwrap();
    fs::write(
        dir.join("event.rs"),
        "// A doc line may name [`crate::alerts`].\nuse crate::{frame::MetricsFrame, ingest};\n",
    )
    .unwrap();
    let found = breaches(&dir);
    let _ = fs::remove_dir_all(&dir);
    assert_eq!(
        found,
        [
            "bus/queue.rs uses `crate::session`, which is not below `bus`",
            "event.rs uses `crate::ingest`, which is not below `event`",
            "topic.rs uses `crate::families`, which is not below `topic`",
        ]
    );
}
