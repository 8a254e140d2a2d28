//! One-way layering of `src/`: every top-level module sits at one place in a total order
//! ([`LAYERS`], grouped in layers), and may import (`crate::…`, or a `super::…` that climbs
//! out of its own top-level module) only itself and modules listed before it — any lower
//! layer, or earlier in its own layer. A top-level module missing from the map fails the test
//! too. The map is documented in ARCHITECTURE.md; keep both in step.
//!
//! The checker is a set of pure functions over (path relative to the crate root, file text),
//! so the unit tests below can feed it synthetic sources. It strips comments, string and char
//! literals, drops test-only code (`tests.rs`, `tests/` directories inside `src/`, and the
//! item a `#[cfg(test)]` line applies to, up to its `;` or its matching `}`), then reads the
//! paths.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

/// The layer map: layers bottom-up, each with its modules in order. A module may import only
/// modules that come before it in this flattened list, and itself.
#[rustfmt::skip]
const LAYERS: &[(&str, &[&str])] = &[
    ("leaves", &["secret", "clock", "metrics", "api", "catalog", "mock"]),
    ("domain", &["pricing", "telemetry", "routing", "access", "usage", "batch", "store"]),
    ("edges", &["translate", "upstream", "proxy", "console", "admin"]),
    ("wiring", &["config", "demo", "server", "cli"]),
];

/// Where a module sits in the map: its index in the total order and its layer's name.
#[derive(Debug, Clone, Copy)]
struct Place {
    index: usize,
    layer: &'static str,
}

/// One import of another top-level module, at its first line in a file.
#[derive(Debug, Clone)]
struct Edge {
    file: String,
    line: usize,
    from: String,
    to: String,
}

/// A lexical token of stripped source; only what path reading needs is told apart.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Other,
}

/// A token and the 1-based line it starts on.
#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

// ---------------------------------------------------------------------------------------------
// The map

/// The place of `module` in [`LAYERS`], or `None` if it is not in the map.
fn place(module: &str) -> Option<Place> {
    LAYERS
        .iter()
        .flat_map(|(layer, modules)| modules.iter().map(move |m| (*layer, *m)))
        .enumerate()
        .find(|(_, (_, m))| *m == module)
        .map(|(index, (layer, _))| Place { index, layer })
}

// ---------------------------------------------------------------------------------------------
// Paths of files

/// The components of `rel` under `src/` (`src/foo/bar.rs` → `["foo", "bar.rs"]`).
fn components(rel: &str) -> Option<Vec<&str>> {
    let rest = rel.strip_prefix("src/")?;
    rest.ends_with(".rs").then(|| rest.split('/').collect())
}

/// Whether `rel` is the crate root or the binary, which are not modules of the map.
fn is_root_file(rel: &str) -> bool {
    rel == "src/lib.rs" || rel == "src/main.rs"
}

/// Whether `rel` holds only test code: a `tests.rs`, or a file under a `tests/` directory.
fn is_test_file(rel: &str) -> bool {
    let parts = components(rel).unwrap_or_default();
    parts
        .split_last()
        .is_some_and(|(file, dirs)| *file == "tests.rs" || dirs.contains(&"tests"))
}

/// The top-level module a source file belongs to (`src/foo/bar/baz.rs` → `foo`).
fn top_module(rel: &str) -> Option<String> {
    if is_root_file(rel) {
        return None;
    }
    let first = *components(rel)?.first()?;
    Some(first.strip_suffix(".rs").unwrap_or(first).to_string())
}

/// The module path of a non-test source file (`src/foo/bar.rs` and `src/foo/bar/mod.rs` →
/// `["foo", "bar"]`), or `None` for files the check skips.
fn module_path(rel: &str) -> Option<Vec<String>> {
    if is_root_file(rel) || is_test_file(rel) {
        return None;
    }
    let mut path: Vec<String> = components(rel)?
        .iter()
        .map(|c| c.strip_suffix(".rs").unwrap_or(c).to_string())
        .collect();
    if path.len() > 1 && path.last().is_some_and(|last| last == "mod") {
        path.pop();
    }
    Some(path)
}

// ---------------------------------------------------------------------------------------------
// Stripping comments, literals and test code

/// `src` with comments and string/char literals blanked out; newlines are kept, so line
/// numbers stay those of the original text.
fn strip_comments_and_strings(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < chars.len() {
        i = strip_step(&chars, i, &mut out);
    }
    out
}

/// Copies or blanks the item starting at `i`; returns where the next item starts.
fn strip_step(c: &[char], i: usize, out: &mut String) -> usize {
    match (c[i], c.get(i + 1).copied()) {
        ('/', Some('/')) => skip_line_comment(c, i),
        ('/', Some('*')) => skip_block_comment(c, i, out),
        ('"', _) => skip_string(c, i + 1, out),
        ('\'', _) => skip_char_or_lifetime(c, i, out),
        (ch, _) if is_ident_start(ch) => copy_ident_or_prefixed_literal(c, i, out),
        (ch, _) => {
            out.push(ch);
            i + 1
        }
    }
}

/// Skips a `//` comment (also `//!`, `///`) up to, not including, its newline.
fn skip_line_comment(c: &[char], i: usize) -> usize {
    (i..c.len()).find(|&j| c[j] == '\n').unwrap_or(c.len())
}

/// Skips a (possibly nested) `/* */` comment, keeping its newlines.
fn skip_block_comment(c: &[char], i: usize, out: &mut String) -> usize {
    out.push(' ');
    let (mut j, mut depth) = (i + 2, 1);
    while j < c.len() {
        match (c[j], c.get(j + 1).copied()) {
            ('/', Some('*')) => (depth, j) = (depth + 1, j + 2),
            ('*', Some('/')) => (depth, j) = (depth - 1, j + 2),
            (ch, _) => {
                keep_newline(ch, out);
                j += 1;
            }
        }
        if depth == 0 {
            return j;
        }
    }
    j
}

/// Skips the body of a `"…"` literal starting at `start` (after the quote), honouring
/// escapes; emits `""` and the body's newlines.
fn skip_string(c: &[char], start: usize, out: &mut String) -> usize {
    out.push_str("\"\"");
    let mut j = start;
    while j < c.len() {
        match c[j] {
            '\\' => {
                c.get(j + 1)
                    .into_iter()
                    .for_each(|&ch| keep_newline(ch, out));
                j += 2;
            }
            '"' => return j + 1,
            ch => {
                keep_newline(ch, out);
                j += 1;
            }
        }
    }
    j
}

/// Skips a raw string whose opening `#`s start at `start` (`r"…"`, `r#"…"#`, …), or returns
/// `None` if no quote follows them (a raw identifier such as `r#type`).
fn skip_raw_string(c: &[char], start: usize, out: &mut String) -> Option<usize> {
    let hashes = c[start..].iter().take_while(|&&ch| ch == '#').count();
    if c.get(start + hashes) != Some(&'"') {
        return None;
    }
    out.push_str("\"\"");
    let body = start + hashes + 1;
    for j in body..c.len() {
        if c[j] == '"'
            && c[j + 1..]
                .iter()
                .take(hashes)
                .filter(|&&ch| ch == '#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        keep_newline(c[j], out);
    }
    Some(c.len())
}

/// Skips a char literal (`'"'`, `'\''`, `'\u{1F600}'`) or copies a lifetime's quote.
fn skip_char_or_lifetime(c: &[char], i: usize, out: &mut String) -> usize {
    if c.get(i + 1) == Some(&'\\') {
        let close = (i + 3..c.len()).find(|&j| c[j] == '\'').unwrap_or(c.len());
        out.push(' ');
        return close + 1;
    }
    if c.get(i + 2) == Some(&'\'') {
        out.push(' ');
        return i + 3;
    }
    out.push('\'');
    i + 1
}

/// Copies an identifier, or skips the literal it prefixes (`b"…"`, `c"…"`, `b'…'`, `r#"…"#`,
/// `br"…"`, `cr"…"`).
fn copy_ident_or_prefixed_literal(c: &[char], i: usize, out: &mut String) -> usize {
    let end = ident_end(c, i);
    let word: String = c[i..end].iter().collect();
    let next = c.get(end).copied();
    let skipped = match (word.as_str(), next) {
        ("r" | "br" | "cr", Some('"' | '#')) => skip_raw_string(c, end, out),
        ("b" | "c", Some('"')) => Some(skip_string(c, end + 1, out)),
        ("b", Some('\'')) => Some(skip_char_or_lifetime(c, end, out)),
        _ => None,
    };
    skipped.unwrap_or_else(|| {
        out.push_str(&word);
        end
    })
}

/// Emits `ch` if it is a newline, so blanked text keeps its line numbers.
fn keep_newline(ch: char, out: &mut String) {
    if ch == '\n' {
        out.push('\n');
    }
}

/// Whether `ch` can start an identifier.
fn is_ident_start(ch: char) -> bool {
    ch.is_alphabetic() || ch == '_'
}

/// The end of the identifier starting at `i`.
fn ident_end(c: &[char], i: usize) -> usize {
    (i..c.len())
        .find(|&j| !(c[j].is_alphanumeric() || c[j] == '_'))
        .unwrap_or(c.len())
}

/// `code` with every item under a `#[cfg(test)]` line blanked (newlines kept, so line numbers
/// stay right).
fn drop_test_code(code: &str) -> String {
    let bytes = code.as_bytes();
    let mut out = code.as_bytes().to_vec();
    let mut offset = 0;
    for line in code.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        if line.trim() != "#[cfg(test)]" {
            continue;
        }
        // The item the attribute applies to ends at its first `;` (`mod tests;`) or at the
        // brace closing its first `{` (`mod tests { … }`); code after it is checked again.
        let mut depth = 0usize;
        let mut end = bytes.len();
        for (i, &b) in bytes.iter().enumerate().skip(offset) {
            match b {
                b';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                b'{' => depth += 1,
                b'}' if depth > 0 => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        for b in &mut out[start..end] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Reading paths

/// Splits stripped code into tokens with their line numbers.
fn tokenize(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let (mut tokens, mut i, mut line) = (Vec::new(), 0, 1);
    while let Some(&ch) = chars.get(i) {
        if ch.is_whitespace() {
            line += usize::from(ch == '\n');
            i += 1;
            continue;
        }
        let (tok, next) = match ch {
            _ if is_ident_start(ch) => {
                let end = ident_end(&chars, i);
                (Tok::Ident(chars[i..end].iter().collect()), end)
            }
            ':' if chars.get(i + 1) == Some(&':') => (Tok::PathSep, i + 2),
            '{' => (Tok::Open, i + 1),
            '}' => (Tok::Close, i + 1),
            ',' => (Tok::Comma, i + 1),
            _ => (Tok::Other, i + 1),
        };
        tokens.push(Token { tok, line });
        i = next;
    }
    tokens
}

/// The identifier at `i`, if any.
fn ident_at(tokens: &[Token], i: usize) -> Option<&str> {
    match tokens.get(i).map(|t| &t.tok) {
        Some(Tok::Ident(name)) => Some(name),
        _ => None,
    }
}

/// Whether the token at `i` is `::`.
fn is_sep(tokens: &[Token], i: usize) -> bool {
    tokens.get(i).is_some_and(|t| t.tok == Tok::PathSep)
}

/// Every crate-root item a path names, with its line: `crate::x…`, `crate::{a…, b…}`, and
/// `super::…` chains that climb from `own` (the file's module path) to the crate root.
fn root_targets(tokens: &[Token], own: &[String]) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    for i in 0..tokens.len() {
        if i > 0 && is_sep(tokens, i - 1) {
            continue;
        }
        let root = match ident_at(tokens, i) {
            Some("crate") if is_sep(tokens, i + 1) => Some(i + 2),
            Some("super") => super_chain_to_root(tokens, i, own.len()),
            _ => None,
        };
        found.extend(root.map(|r| heads(tokens, r)).unwrap_or_default());
    }
    found
}

/// Where a `super::super::…` chain starting at `i` continues, if it climbs exactly from a
/// module `depth` deep to the crate root (shorter chains stay inside the top-level module).
fn super_chain_to_root(tokens: &[Token], i: usize, depth: usize) -> Option<usize> {
    let (mut j, mut ups) = (i, 0);
    while ident_at(tokens, j) == Some("super") && is_sep(tokens, j + 1) {
        (j, ups) = (j + 2, ups + 1);
    }
    (ups > 0 && ups == depth).then_some(j)
}

/// The first identifiers of the path continuing at `i`: one for `x::…`, one per item of a
/// `{a::…, b, …}` group.
fn heads(tokens: &[Token], i: usize) -> Vec<(String, usize)> {
    match tokens.get(i) {
        Some(Token {
            tok: Tok::Ident(name),
            line,
        }) => vec![(name.clone(), *line)],
        Some(Token { tok: Tok::Open, .. }) => group_heads(&tokens[i + 1..]),
        _ => Vec::new(),
    }
}

/// The first identifier of each top-level item of a brace group whose `{` precedes `tokens`.
fn group_heads(tokens: &[Token]) -> Vec<(String, usize)> {
    let (mut found, mut depth, mut at_item_start) = (Vec::new(), 1, true);
    for t in tokens {
        match &t.tok {
            Tok::Open => depth += 1,
            Tok::Close if depth == 1 => break,
            Tok::Close => depth -= 1,
            Tok::Comma if depth == 1 => {
                at_item_start = true;
                continue;
            }
            Tok::Ident(name) if depth == 1 && at_item_start => found.push((name.clone(), t.line)),
            _ => {}
        }
        at_item_start = false;
    }
    found
}

// ---------------------------------------------------------------------------------------------
// The check

/// The imports of other existing top-level `modules` in the file `rel` with text `text`.
fn file_edges(rel: &str, text: &str, modules: &BTreeSet<String>) -> Vec<Edge> {
    let Some(own) = module_path(rel) else {
        return Vec::new();
    };
    let stripped = strip_comments_and_strings(text);
    let tokens = tokenize(&drop_test_code(&stripped));
    root_targets(&tokens, &own)
        .into_iter()
        .filter(|(to, _)| *to != own[0] && modules.contains(to))
        .map(|(to, line)| Edge {
            file: rel.to_string(),
            line,
            from: own[0].clone(),
            to,
        })
        .collect()
}

/// The top-level modules that the files make up.
fn existing_modules(files: &[(String, String)]) -> BTreeSet<String> {
    files
        .iter()
        .filter_map(|(rel, _)| top_module(rel))
        .collect()
}

/// One message per existing top-level module that the map does not place.
fn unplaced(files: &[(String, String)]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    for (rel, _) in files {
        let Some(module) = top_module(rel) else {
            continue;
        };
        if place(&module).is_none() && seen.insert(module.clone()) {
            let at = if rel.matches('/').count() > 1 {
                format!("src/{module}/")
            } else {
                rel.clone()
            };
            problems.push(format!(
                "{at}: top-level module `{module}` is not in the layer map — place it in a \
                 layer of the layer map in tests/layers.rs and ARCHITECTURE.md"
            ));
        }
    }
    problems
}

/// The message for an edge that points up or forward in the map, or `None` if it is allowed.
fn violation(edge: &Edge) -> Option<String> {
    let (from, to) = (place(&edge.from)?, place(&edge.to)?);
    if to.index <= from.index {
        return None;
    }
    let at = format!("{}:{}", edge.file, edge.line);
    let (f, t) = (&edge.from, &edge.to);
    Some(if from.layer == to.layer {
        format!(
            "{at}: {f} ({}) imports {t} ({}, after {f} in the same layer) — same layer must \
             import only modules listed before it",
            from.layer, to.layer
        )
    } else {
        format!(
            "{at}: {f} ({}) imports {t} ({}) — upward",
            from.layer, to.layer
        )
    })
}

/// Every layering problem in the source files: unplaced modules, then one violation per
/// offending (from, to) pair at its first occurrence (files in path order).
fn check(files: &[(String, String)]) -> Vec<String> {
    let mut files = files.to_vec();
    files.sort();
    let modules = existing_modules(&files);
    let mut seen = BTreeSet::new();
    let violations = files
        .iter()
        .flat_map(|(rel, text)| file_edges(rel, text, &modules))
        .filter(|e| seen.insert((e.from.clone(), e.to.clone())))
        .filter_map(|e| violation(&e));
    unplaced(&files).into_iter().chain(violations).collect()
}

/// The failure message listing every problem, one per line.
fn report(problems: &[String]) -> String {
    format!(
        "src/ must import only down the layer map (tests/layers.rs, ARCHITECTURE.md); \
         {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    )
}

// ---------------------------------------------------------------------------------------------
// The real tree

/// Reads every `.rs` file under `dir` as (path relative to the crate root, text).
fn read_tree(dir: &Path, rel: &str, out: &mut Vec<(String, String)>) {
    for entry in fs::read_dir(dir).expect("list a directory under src/") {
        let entry = entry.expect("read a directory entry under src/");
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let rel = format!("{rel}/{name}");
        if path.is_dir() {
            read_tree(&path, &rel, out);
        } else if name.ends_with(".rs") {
            out.push((
                rel,
                fs::read_to_string(&path).expect("read a source file under src/"),
            ));
        }
    }
}

/// The real check over this crate's `src/`.
#[test]
fn src_layers_point_down() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_tree(&root, "src", &mut files);
    let problems = check(&files);
    assert!(problems.is_empty(), "{}", report(&problems));
}

// ---------------------------------------------------------------------------------------------
// The checker on synthetic sources

/// Checks `files` plus an empty `src/<m>.rs` for every mapped module not among them.
fn check_with_stubs(files: &[(&str, &str)]) -> Vec<String> {
    let mut all: Vec<(String, String)> = files
        .iter()
        .map(|(rel, text)| (rel.to_string(), text.to_string()))
        .collect();
    let present = existing_modules(&all);
    let stubs = LAYERS.iter().flat_map(|(_, modules)| modules.iter());
    for module in stubs.filter(|m| !present.contains(**m)) {
        all.push((format!("src/{module}.rs"), String::new()));
    }
    check(&all)
}

/// An upward import planted in a leaf is reported once, naming both modules.
#[test]
fn planted_upward_import_is_caught() {
    let problems = check_with_stubs(&[("src/catalog.rs", "use crate::proxy::World;\n")]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].contains("catalog (leaves) imports proxy (edges)"),
        "{problems:#?}"
    );
    assert!(
        problems[0].starts_with("src/catalog.rs:1:"),
        "{problems:#?}"
    );
}

/// Every item of a grouped use tree is an edge.
#[test]
fn grouped_use_tree_is_parsed() {
    let src = "use crate::{secret::Secret,\n    server::x};\n";
    let problems = check_with_stubs(&[("src/api/mod.rs", src)]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].starts_with("src/api/mod.rs:2: api (leaves) imports server (wiring)"));
}

/// Nested groups yield only their top-level heads.
#[test]
fn nested_group_heads_are_the_targets() {
    let src = "pub(crate) use crate::{clock::{A, server}, proxy::{B, C}, usage};\n";
    let problems = check_with_stubs(&[("src/pricing/mod.rs", src)]);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0].contains("pricing (domain) imports proxy (edges)"),
        "{problems:#?}"
    );
    assert!(
        problems[1].contains("imports usage (domain, after pricing"),
        "{problems:#?}"
    );
}

/// `super::super::` from `src/api/sse.rs` reaches the crate root.
#[test]
fn super_super_path_reaches_the_root() {
    let src = "fn f() -> super::super::server::X { todo!() }\n";
    let problems = check_with_stubs(&[("src/api/sse.rs", src)]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("api (leaves) imports server (wiring) — upward"));
}

/// `super::` that stays inside the top-level module is not an edge; one that leaves it is.
#[test]
fn super_within_own_module_is_ignored() {
    let inner = ("src/api/sse.rs", "use super::{server, X};\n");
    assert!(check_with_stubs(&[inner]).is_empty());
    let root = ("src/api/mod.rs", "use super::{secret, server};\n");
    let problems = check_with_stubs(&[root]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("api (leaves) imports server (wiring)"));
}

/// Paths inside comments, strings, raw strings and char literals are not edges.
#[test]
fn comments_and_strings_are_ignored() {
    let src = r##"//! See crate::server.
/// Uses [`crate::server`].
/* block crate::server /* nested crate::server */ still crate::server */
const URL: &str = "http://x/crate::server"; // crate::server
const ESC: &str = "quote \" crate::server \\";
const RAW: &str = r#"crate::server "quoted" "#;
const BYTES: &[u8] = br"crate::server";
const Q: char = '"';
fn f<'a>(x: &'a str) -> &'a str { x }
use crate::secret::Secret;
"##;
    assert!(check_with_stubs(&[("src/api/mod.rs", src)]).is_empty());
}

/// A char literal `'"'` does not open a string that would hide a later import.
#[test]
fn char_quote_does_not_hide_code() {
    let src = "const Q: char = '\"';\nuse crate::server::X;\n";
    let problems = check_with_stubs(&[("src/api/mod.rs", src)]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with("src/api/mod.rs:2:"),
        "{problems:#?}"
    );
}

/// Code from a `#[cfg(test)]` line on, and test-only files, are not checked.
#[test]
fn test_code_is_ignored() {
    let src =
        "use crate::secret::S;\n\n    #[cfg(test)]\nmod tests {\n    use crate::server::X;\n}\n";
    let decl = "#[cfg(test)]\nmod tests;\nuse crate::secret::S;\n";
    let files = [
        ("src/api/mod.rs", src),
        ("src/api/chat.rs", decl),
        ("src/api/tests.rs", "use crate::server::X;\n"),
        ("src/api/tests/more.rs", "use crate::server::X;\n"),
    ];
    assert!(check_with_stubs(&files).is_empty());
}

/// Only the test item is skipped: code after it is checked like any other.
#[test]
fn code_after_a_test_item_is_checked() {
    let after_block = "#[cfg(test)]\nmod tests {\n    fn f() { let _ = 1; }\n}\n\nuse crate::server::X;\n";
    let v = check_with_stubs(&[("src/api/mod.rs", after_block)]);
    assert_eq!(v.len(), 1, "{v:#?}");
    assert!(v[0].contains("src/api/mod.rs:6"), "{v:#?}");
    let after_decl = "#[cfg(test)]\nmod tests;\n\nuse crate::server::X;\n";
    assert_eq!(check_with_stubs(&[("src/api/sse.rs", after_decl)]).len(), 1);
}

/// A downward import is fine.
#[test]
fn downward_import_is_fine() {
    let src = "use crate::api::{self, ChatRequest};\nuse crate::proxy::World;\n";
    assert!(check_with_stubs(&[("src/proxy/mod.rs", src)]).is_empty());
    assert!(check_with_stubs(&[("src/proxy/chat.rs", "use crate::api::X;\n")]).is_empty());
}

/// Within a layer, a module may import only modules listed before it.
#[test]
fn same_layer_imports_follow_list_order() {
    let up = check_with_stubs(&[("src/usage.rs", "use crate::store::Store;\n")]);
    assert_eq!(up.len(), 1, "{up:#?}");
    assert!(up[0].contains("usage (domain) imports store (domain, after usage in the same layer)"));
    assert!(up[0].contains("same layer must import only modules listed before it"));
    let down = check_with_stubs(&[("src/store/mod.rs", "use crate::usage::UsageRecord;\n")]);
    assert!(down.is_empty(), "{down:#?}");
}

/// Each offending pair is reported once, at its first file and line.
#[test]
fn each_edge_is_reported_once_at_first_occurrence() {
    let files = [
        (
            "src/proxy/mod.rs",
            "\n\nuse crate::server::A;\nuse crate::server::B;\n",
        ),
        ("src/proxy/chat.rs", "use crate::server::C;\n"),
    ];
    let problems = check_with_stubs(&files);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].starts_with("src/proxy/chat.rs:1: proxy (edges) imports server"));
}

/// Crate-root items that are not modules in `src/` (macros, re-exports, mapped modules not
/// written yet) are not edges.
#[test]
fn non_module_targets_are_ignored() {
    let src = "use crate::SomeMacro;\nuse crate::translate::X;\n";
    let files = [("src/api/mod.rs".to_string(), src.to_string())];
    assert!(check(&files).is_empty());
}

/// A top-level module missing from the map fails with a hint to place it.
#[test]
fn unknown_module_fails_with_placement_hint() {
    let problems = check_with_stubs(&[("src/gizmo/mod.rs", ""), ("src/gizmo/part.rs", "")]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let hint = "src/gizmo/: top-level module `gizmo` is not in the layer map";
    assert!(problems[0].starts_with(hint), "{problems:#?}");
    assert!(problems[0].contains("tests/layers.rs and ARCHITECTURE.md"));
    let file = check_with_stubs(&[("src/widget.rs", "")]);
    assert!(
        file[0].starts_with("src/widget.rs: top-level module `widget`"),
        "{file:#?}"
    );
}

/// Module paths follow Rust's file layout.
#[test]
fn module_paths_follow_file_layout() {
    let path = |rel| module_path(rel).unwrap_or_default();
    assert_eq!(path("src/foo.rs"), ["foo"]);
    assert_eq!(path("src/foo/mod.rs"), ["foo"]);
    assert_eq!(path("src/foo/bar.rs"), ["foo", "bar"]);
    assert_eq!(path("src/foo/bar/mod.rs"), ["foo", "bar"]);
    assert_eq!(module_path("src/lib.rs"), None);
    assert_eq!(module_path("src/foo/tests.rs"), None);
}
