//! The fuzz targets' properties (`fuzz/checks.rs`) over the committed seeds and every input a
//! fuzzing run found (`fuzz/regressions/<target>/`): what a fuzzer once broke stays fixed in
//! the ordinary suite, and the checks themselves are kept compiling and true.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                out.push((format!("{dir}/{target}/{name}"), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    assert!(!out.is_empty(), "no seeds for {target}");
    out
}

fn run(target: &str, check: fn(&[u8])) {
    for (name, data) in inputs(target) {
        let r = std::panic::catch_unwind(|| check(&data));
        assert!(r.is_ok(), "{name} fails the {target} check");
    }
}

#[test]
fn inspect() {
    run("inspect", checks::check_inspect);
}

#[test]
fn sse() {
    run("sse", checks::check_sse);
}

#[test]
fn upstream_doc() {
    run("upstream_doc", checks::check_upstream_doc);
}

#[test]
fn anthropic() {
    run("anthropic", checks::check_anthropic);
}

#[test]
fn messages() {
    run("messages", checks::check_messages);
}

#[test]
fn responses() {
    run("responses", checks::check_responses);
}
