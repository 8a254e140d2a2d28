//! The web console's side of the admin listener: its files (headers, revalidation, every
//! referenced file served) and the admin endpoints it reads — the session, models, prices,
//! data centers, usage series — with the read-only project view an API key gets. The browser
//! tests are in tests/python/test_console.py.

mod common;

use std::time::{Duration, Instant};

use common::*;
use joule::secret::KeyHash;
use serde_json::{json, Value};

const ADMIN: &str = "console-admin-token-0123";
const MODEL: &str = "llama-console";
const OTHER: &str = "qwen-console";

fn config(m: &MockServer) -> String {
    let mut s = format!("[admin]\ntoken_sha256 = \"{}\"\n\n", KeyHash::of(ADMIN).to_hex());
    s += "[[data_centers]]\nid = \"dc0\"\nname = \"Site Zero\"\npue = 1.2\n\n[[data_centers]]\nid = \"dc1\"\npue = 1.1\n\n";
    for (i, id) in [MODEL, OTHER].iter().enumerate() {
        s += &format!(
            "[[models]]\nid = \"{id}\"\ncategory = \"hosted\"\n[[models.deployments]]\nid = \"dep{i}\"\ndata_center = \"dc{i}\"\nurl = \"{}\"\nbase_price_input = 1.0\nbase_price_output = 2.0\n\n",
            m.base_url()
        );
    }
    s
}

async fn get(gw: &Gateway, c: &reqwest::Client, cred: &str, path: &str) -> (u16, Value) {
    admin_call(gw, c, cred, "GET", path, None).await
}

/// The ids of a list document's `data`.
fn ids(v: &Value, field: &str) -> Vec<String> {
    v["data"].as_array().unwrap().iter().map(|m| m[field].as_str().unwrap().to_string()).collect()
}

/// Every quoted value following one of `markers` (`src="`, `from '`…) in `text`.
fn references(text: &str, markers: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for marker in markers {
        let quote = &marker[marker.len() - 1..];
        for (at, _) in text.match_indices(marker) {
            let rest = &text[at + marker.len()..];
            if let Some(end) = rest.find(quote) {
                out.push(rest[..end].to_string());
            }
        }
    }
    out
}

/// `reference` as a path, resolved against the file at `base` (a path under `/console/`).
fn resolve(base: &str, reference: &str) -> Option<String> {
    if reference.starts_with("http:") || reference.starts_with("https:") || reference.starts_with("data:") || reference.starts_with('#') {
        return None;
    }
    if reference.starts_with('/') {
        return Some(reference.to_string());
    }
    let mut parts: Vec<&str> = base.split('/').collect();
    parts.pop();
    for seg in reference.split('/') {
        match seg {
            "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_files_are_served_with_their_headers() {
    let m = mock(MockConfig::default()).await;
    let gw = Gateway::start(&config(&m)).await;
    let c = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    let r = c.get(format!("{}/console", gw.admin())).send().await.unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "/console/");

    let r = c.get(format!("{}/console/", gw.admin())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_string();
    for directive in ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let index = r.text().await.unwrap();
    assert!(!index.contains("<script>") && !index.contains(" style=") && !index.contains(" onclick="), "no inline code under this CSP");

    let r = c.get(format!("{}/console/", gw.admin())).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);

    // Every file the page references, and every module those import, is served with the CSP.
    let mut queue: Vec<(String, String)> =
        references(&index, &["src=\"", "href=\""]).into_iter().filter_map(|r| resolve("/console/index.html", &r)).map(|p| ("/console/index.html".to_string(), p)).collect();
    let mut seen = Vec::new();
    while let Some((from, path)) = queue.pop() {
        if seen.contains(&path) {
            continue;
        }
        let r = c.get(format!("{}{path}", gw.admin())).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} (referenced by {from})");
        assert_eq!(r.headers()["content-security-policy"].to_str().unwrap(), csp, "{path}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        if path.ends_with(".js") && !path.contains("/vendor/") {
            assert!(ct.starts_with("text/javascript"), "{path}: {ct}");
            let text = r.text().await.unwrap();
            for m in references(&text, &["from '", "from \"", "import '", "import \"", "import('", "import(\""]) {
                if let Some(p) = resolve(&path, &m) {
                    queue.push((path.clone(), p));
                }
            }
        }
        seen.push(path);
    }
    assert!(seen.iter().any(|p| p.ends_with(".js")) && seen.iter().any(|p| p.ends_with(".css")), "{seen:?}");
    assert!(seen.iter().any(|p| p.contains("uPlot")), "uPlot is vendored and referenced: {seen:?}");

    let r = c.get(format!("{}/console/no-such-file.js", gw.admin())).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers().contains_key("content-security-policy"));
    assert_eq!(c.get(format!("{}/console/README.md", gw.admin())).send().await.unwrap().status(), 404, "documentation is not served");
    let r = c.post(format!("{}/console/", gw.admin())).send().await.unwrap();
    assert_eq!(r.status(), 405);

    // Without `public_url`, the API base is the cleartext listener's.
    let (s, v) = get(&gw, &c, ADMIN, "/session").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["role"], "operator");
    assert_eq!(v["api_base"], gw.base());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_gets_the_read_only_view_of_its_project() {
    let m = mock(MockConfig { ttft_ms: 1, ..Default::default() }).await;
    let gw = Gateway::start_with(&config(&m), "public_url = \"https://api.example.com/v1/\"\n", &[]).await;
    let c = client();

    for (name, allowed) in [("alpha", json!([MODEL])), ("beta", Value::Null)] {
        let (s, v) = admin_call(&gw, &c, ADMIN, "POST", "/projects", Some(json!({"name": name, "allowed_models": allowed}))).await;
        assert_eq!(s, 201, "{v}");
    }
    let mut keys = Vec::new();
    for (name, project) in [("ka", "alpha"), ("kb", "beta")] {
        let (s, v) = admin_call(&gw, &c, ADMIN, "POST", "/keys", Some(json!({"name": name, "project": project}))).await;
        assert_eq!(s, 201, "{v}");
        keys.push((v["id"].as_str().unwrap().to_string(), v["key"].as_str().unwrap().to_string()));
    }
    let (ka, kb) = (&keys[0].1, &keys[1].1);
    for (key, n) in [(ka.as_str(), 2), (kb.as_str(), 1), (KEY, 1)] {
        for _ in 0..n {
            let r = c.post(format!("{}/chat/completions", gw.base())).bearer_auth(key).json(&chat_body(MODEL, false)).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&gw, &c, ADMIN, "/usage/summary").await.1["requests"] != 4 {
        assert!(Instant::now() < deadline, "usage records not written\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Who each credential is.
    let (s, v) = get(&gw, &c, ADMIN, "/session").await;
    assert_eq!((s, &v["role"], &v["api_base"], &v["store"]), (200, &json!("operator"), &json!("https://api.example.com/v1"), &json!("sqlite")));
    let (s, v) = get(&gw, &c, ka, "/session").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!((&v["role"], &v["key"]["name"], &v["project"]["name"]), (&json!("project"), &json!("ka"), &json!("alpha")));
    assert_eq!(v["key"]["id"], json!(keys[0].0));
    assert!(v.get("key").and_then(|k| k.get("key")).is_none(), "the session never echoes a secret: {v}");
    let (_, v) = get(&gw, &c, KEY, "/session").await;
    assert_eq!((&v["role"], &v["project"]), (&json!("project"), &Value::Null));
    for bad in ["", "wrong", "sk-joule-not-a-key"] {
        let (s, v) = get(&gw, &c, bad, "/session").await;
        assert_eq!((s, v["error"]["code"].as_str()), (401, Some("invalid_admin_token")), "{bad}");
    }

    // A key reads; it changes and lists nothing else.
    for (method, path) in [("GET", "/keys"), ("GET", "/projects"), ("POST", "/projects"), ("GET", "/deployments"), ("GET", "/plugins"), ("POST", "/reload"), ("DELETE", "/keys/ka")] {
        let body = (method == "POST").then(|| json!({"name": "x"}));
        let (s, v) = admin_call(&gw, &c, ka, method, path, body).await;
        assert_eq!((s, v["error"]["code"].as_str()), (403, Some("admin_only")), "{method} {path}: {v}");
    }
    assert_eq!(get(&gw, &c, ADMIN, "/keys").await.1["keys"].as_array().unwrap().len(), 3, "nothing was revoked");

    // Models, prices and data centers: the project's allowed models only.
    let (_, all) = get(&gw, &c, ADMIN, "/models").await;
    assert_eq!(ids(&all, "id"), [MODEL, OTHER]);
    let (_, mine) = get(&gw, &c, ka, "/models").await;
    assert_eq!(ids(&mine, "id"), [MODEL]);
    assert_eq!(mine["data"][0]["category"], "hosted");
    assert!(mine["data"][0]["price"]["input"].as_f64().unwrap() > 0.0, "{mine}");
    let (s, p) = get(&gw, &c, ADMIN, "/prices?window=4h").await;
    assert_eq!(s, 200, "{p}");
    assert_eq!((&p["window"], ids(&p, "model")), (&json!("4h"), vec![MODEL.to_string(), OTHER.to_string()]));
    assert_eq!(p["data"][0]["data_centers"][0]["data_center"], "dc0");
    assert_eq!(ids(&get(&gw, &c, kb, "/prices").await.1, "model"), [MODEL, OTHER]);
    assert_eq!(ids(&get(&gw, &c, ka, "/prices?window=7d").await.1, "model"), [MODEL]);
    let (s, v) = get(&gw, &c, ka, "/prices?window=1y").await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("window")));
    let (s, v) = get(&gw, &c, ka, "/prices?model=x").await;
    assert_eq!(s, 400, "unknown parameters are refused: {v}");
    let (_, dcs) = get(&gw, &c, ADMIN, "/data-centers").await;
    assert_eq!(ids(&dcs, "id"), ["dc0", "dc1"]);
    assert_eq!((&dcs["data"][0]["name"], &dcs["data"][0]["models"]), (&json!("Site Zero"), &json!([MODEL])));
    assert_eq!(ids(&get(&gw, &c, ka, "/data-centers").await.1, "id"), ["dc0"]);

    // Usage: the key's project only; naming another is refused.
    let (s, v) = get(&gw, &c, ka, "/usage").await;
    assert_eq!(s, 200, "{v}");
    let records = v["records"].as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r["key_name"] == "ka"), "{v}");
    assert_eq!(get(&gw, &c, ka, "/usage?project=alpha").await.1["records"].as_array().unwrap().len(), 2);
    assert_eq!(get(&gw, &c, ka, "/usage/summary").await.1["requests"], 2);
    for q in ["/usage?project=beta", "/usage/summary?project=beta"] {
        assert_eq!(get(&gw, &c, ka, q).await.0, 403, "{q}");
    }
    assert_eq!(get(&gw, &c, ka, &format!("/usage?key={}", keys[1].0)).await.1["records"].as_array().unwrap().len(), 0, "within its project only");
    let (_, v) = get(&gw, &c, ka, "/usage?format=csv").await;
    assert_eq!(v.as_str().unwrap().lines().count(), 3, "CSV: header and two records");
    // A key without a project sees its own records.
    let (_, v) = get(&gw, &c, KEY, "/usage").await;
    assert_eq!(v["records"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["records"][0]["key_id"], "config:test");
    assert_eq!(get(&gw, &c, KEY, &format!("/usage?key={}", keys[0].0)).await.0, 403);
    assert_eq!(get(&gw, &c, KEY, "/usage?project=alpha").await.0, 403);

    // The series behind the usage chart adds up to the totals.
    let since = joule::clock::now_ms() - 3_600_000;
    let (s, v) = get(&gw, &c, ADMIN, &format!("/usage/summary?since={since}&step=60")).await;
    assert_eq!(s, 200, "{v}");
    let series = v["series"].as_array().unwrap();
    assert!(!series.is_empty());
    assert_eq!(series.iter().map(|b| b["requests"].as_u64().unwrap()).sum::<u64>(), 4);
    let cost: f64 = series.iter().map(|b| b["cost_usd"].as_f64().unwrap()).sum();
    assert!((cost - v["cost_usd"].as_f64().unwrap()).abs() < 1e-12 && cost > 0.0, "{v}");
    assert!(series.iter().all(|b| b["t"].as_i64().unwrap() % 60_000 == 0), "{v}");
    let (_, v) = get(&gw, &c, ka, &format!("/usage/summary?since={since}&step=60")).await;
    assert_eq!(v["series"].as_array().unwrap().iter().map(|b| b["requests"].as_u64().unwrap()).sum::<u64>(), 2);
    for q in ["/usage/summary?step=60", &format!("/usage/summary?since={since}&step=0"), &format!("/usage/summary?since={since}&step=1")] {
        let (s, v) = get(&gw, &c, ADMIN, q).await;
        assert_eq!((s, v["error"]["type"].as_str()), (400, Some("invalid_request_error")), "{q}: {v}");
    }
}
