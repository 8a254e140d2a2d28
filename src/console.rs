//! The web console's files: everything under `console/` in the repository (HTML, CSS, the
//! JavaScript modules and the vendored uPlot), compiled into the binary, and how one is
//! answered on the admin listener under `/console/` — content type, `ETag`, caching and the
//! security headers every console response carries (a strict `Content-Security-Policy`: only
//! this origin's scripts, styles and API; no inline code; no framing).
//!
//! Markdown files (the console's own README) are documentation, not served. With the
//! environment variable `JOULE_CONSOLE_DIR` set, files are read from that directory on every
//! request instead (editing the console without rebuilding joule); that mode reads files
//! synchronously and is for development only.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;

use include_dir::{include_dir, Dir};
use sha2::{Digest, Sha256};

static FILES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/console");

/// The policy of every console response: scripts, styles, images and API calls from this
/// origin only (no inline script or style, no `eval`), nothing framed, no forms posted
/// elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Headers every console response carries, besides its content type.
pub const SECURITY_HEADERS: [(&str, &str); 4] = [
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
];

/// The entry page, answered for `/console/`.
const INDEX: &str = "index.html";

/// One servable file.
#[derive(Debug, Clone)]
pub struct Asset {
    pub body: std::borrow::Cow<'static, [u8]>,
    pub content_type: &'static str,
    /// A strong validator: the first 16 bytes of the body's SHA-256, quoted.
    pub etag: String,
}

/// How a request for a console path is answered.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 200 with the file.
    File(Asset),
    /// 304: the client's `If-None-Match` names the current version.
    NotModified { etag: String },
    /// 308 to this location (`/console` → `/console/`).
    Redirect(&'static str),
    /// No such file.
    NotFound,
}

/// Answers `path` (the whole request path, starting `/console`), given the request's
/// `If-None-Match`.
pub fn answer(path: &str, if_none_match: Option<&str>) -> Answer {
    if path == "/console" {
        return Answer::Redirect("/console/");
    }
    let Some(rel) = path.strip_prefix("/console/") else { return Answer::NotFound };
    let rel = if rel.is_empty() { INDEX } else { rel };
    let asset = match std::env::var_os("JOULE_CONSOLE_DIR") {
        Some(dir) => from_disk(Path::new(&dir), rel),
        None => EMBEDDED.get(rel).cloned(),
    };
    let Some(asset) = asset else { return Answer::NotFound };
    if if_none_match.is_some_and(|v| matches(v, &asset.etag)) {
        return Answer::NotModified { etag: asset.etag };
    }
    Answer::File(asset)
}

/// Every embedded file by its path under `console/`.
static EMBEDDED: LazyLock<HashMap<String, Asset>> = LazyLock::new(|| {
    let mut out = HashMap::new();
    let mut dirs = vec![&FILES];
    while let Some(d) = dirs.pop() {
        for f in d.files() {
            let Some(rel) = f.path().to_str() else { continue };
            if servable(rel) {
                out.insert(rel.to_string(), asset(rel, std::borrow::Cow::Borrowed(f.contents())));
            }
        }
        dirs.extend(d.dirs());
    }
    out
});

/// The paths of every embedded file (for tests and diagnostics), sorted.
pub fn paths() -> Vec<String> {
    let mut v: Vec<String> = EMBEDDED.keys().cloned().collect();
    v.sort();
    v
}

/// Served files: not documentation, not hidden.
fn servable(rel: &str) -> bool {
    !rel.ends_with(".md") && !rel.split('/').any(|seg| seg.starts_with('.'))
}

fn asset(rel: &str, body: std::borrow::Cow<'static, [u8]>) -> Asset {
    let digest = Sha256::digest(&body);
    Asset { etag: format!("\"{}\"", hex::encode(&digest[..16])), content_type: content_type(rel), body }
}

/// `rel` read from `dir`, refusing anything that could leave it (`..`, absolute paths).
fn from_disk(dir: &Path, rel: &str) -> Option<Asset> {
    let rel_path = PathBuf::from(rel);
    if !servable(rel) || rel.contains('\\') || !rel_path.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    let body = std::fs::read(dir.join(rel_path)).ok()?;
    Some(asset(rel, std::borrow::Cow::Owned(body)))
}

fn content_type(rel: &str) -> &'static str {
    match Path::new(rel).extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" | "" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// `If-None-Match` names `etag` (a list, `*`, or weak forms of it).
fn matches(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|v| v == "*" || v.strip_prefix("W/").unwrap_or(v) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_page_is_embedded_and_markdown_is_not() {
        let paths = paths();
        assert!(paths.iter().any(|p| p == INDEX), "{paths:?}");
        assert!(paths.iter().all(|p| !p.ends_with(".md")), "{paths:?}");
        match answer("/console/", None) {
            Answer::File(a) => assert!(a.content_type.starts_with("text/html")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn etags_revalidate_and_unknown_paths_are_not_found() {
        let Answer::File(a) = answer("/console/index.html", None) else { panic!("no index") };
        assert!(matches!(answer("/console/index.html", Some(&a.etag)), Answer::NotModified { .. }));
        assert!(matches!(answer("/console/index.html", Some(&format!("\"x\", W/{}", a.etag))), Answer::NotModified { .. }));
        assert!(matches!(answer("/console/index.html", Some("\"other\"")), Answer::File(_)));
        assert!(matches!(answer("/console", None), Answer::Redirect("/console/")));
        for p in ["/console/nope.js", "/console/../Cargo.toml", "/console/README.md", "/consolex", "/console//etc/passwd"] {
            assert!(matches!(answer(p, None), Answer::NotFound), "{p}");
        }
    }

    #[test]
    fn the_disk_mode_stays_inside_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.js"), "x").unwrap();
        assert!(from_disk(dir.path(), "a.js").is_some());
        for p in ["../a.js", "/etc/passwd", "x/../../a.js", "a\\b.js", ".hidden", "README.md"] {
            assert!(from_disk(dir.path(), p).is_none(), "{p}");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("vendor/uplot/uPlot.min.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("vendor/uplot/LICENSE"), "text/plain; charset=utf-8");
        assert_eq!(content_type("x.bin"), "application/octet-stream");
    }
}
