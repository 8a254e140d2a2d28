//! The route table: every route to its endpoint, 404 vs 405, trailing slashes, parameters.

use super::*;

fn route(method: Method, path: &str) -> Result<(Endpoint, Option<&str>), u16> {
    resolve(path, &method).map_err(|e| e.status())
}

#[test]
fn the_table_is_valid() {
    let mut router = matchit::Router::new();
    for r in TABLE {
        router.insert(r.path, ()).unwrap_or_else(|e| panic!("{}: {e}", r.path));
    }
}

#[test]
fn each_route_reaches_its_endpoint() {
    use Endpoint as E;
    for (m, path, want, param) in [
        (Method::GET, "/metrics", E::Metrics, None),
        (Method::GET, "/healthz", E::Healthz, None),
        (Method::GET, "/admin/deployments", E::Deployments, None),
        (Method::GET, "/admin/plugins", E::ListPlugins, None),
        (Method::POST, "/admin/plugins", E::UploadPlugin, None),
        (Method::POST, "/admin/plugins/price/rollback", E::RollbackPlugin, Some("price")),
        (Method::POST, "/admin/energy/prices", E::PushPrices, None),
        (Method::GET, "/admin/projects", E::ListProjects, None),
        (Method::POST, "/admin/projects", E::CreateProject, None),
        (Method::GET, "/admin/projects/alpha", E::GetProject, Some("alpha")),
        (Method::PATCH, "/admin/projects/alpha", E::UpdateProject, Some("alpha")),
        (Method::DELETE, "/admin/projects/alpha", E::DeleteProject, Some("alpha")),
        (Method::GET, "/admin/keys", E::ListKeys, None),
        (Method::POST, "/admin/keys", E::CreateKey, None),
        (Method::DELETE, "/admin/keys/config:test", E::RevokeKey, Some("config:test")),
        (Method::GET, "/admin/usage", E::Usage, None),
        (Method::GET, "/admin/usage/summary", E::UsageSummary, None),
    ] {
        assert_eq!(route(m.clone(), path), Ok((want, param)), "{m} {path}");
    }
}

#[test]
fn unknown_paths_are_404_and_other_methods_405_or_404() {
    for path in ["/", "", "/admin", "/admin/", "/admin/nope", "/admin/project", "/adminx/projects", "/v1/models", "/admin/usage/other", "/admin/plugins/rollback"] {
        assert_eq!(route(Method::GET, path), Err(404), "{path}");
    }
    // The store-backed resources name the method.
    for (m, path) in [(Method::PUT, "/admin/usage"), (Method::DELETE, "/admin/projects"), (Method::POST, "/admin/projects/a"), (Method::GET, "/admin/keys/k"), (Method::POST, "/admin/usage/summary/")] {
        assert_eq!(route(m.clone(), path), Err(405), "{m} {path}");
    }
    let e = resolve("/admin/usage", &Method::PUT).unwrap_err();
    assert_eq!(e, ApiError::MethodNotAllowed { method: "PUT".into(), path: "/admin/usage".into(), allow: "GET".into() });
    // The others answer as for an unknown path.
    let others = [(Method::POST, "/metrics"), (Method::POST, "/healthz"), (Method::POST, "/admin/deployments"), (Method::DELETE, "/admin/plugins")];
    for (m, path) in others.into_iter().chain([(Method::GET, "/admin/plugins/price/rollback"), (Method::GET, "/admin/energy/prices")]) {
        assert_eq!(resolve(path, &m).unwrap_err(), ApiError::NotFound { path: path.into() }, "{m} {path}");
    }
    let long = format!("/admin/{}", "x".repeat(300));
    assert_eq!(resolve(&long, &Method::GET).unwrap_err(), ApiError::NotFound { path: long[..200].into() });
}

#[test]
fn trailing_slashes_count_only_on_the_store_backed_resources() {
    use Endpoint as E;
    assert_eq!(route(Method::GET, "/admin/projects/"), Ok((E::ListProjects, None)));
    assert_eq!(route(Method::GET, "/admin/projects//"), Ok((E::ListProjects, None)));
    assert_eq!(route(Method::GET, "/admin/projects/alpha/"), Ok((E::GetProject, Some("alpha"))));
    assert_eq!(route(Method::GET, "/admin/keys/"), Ok((E::ListKeys, None)));
    assert_eq!(route(Method::GET, "/admin/usage/summary/"), Ok((E::UsageSummary, None)));
    for path in ["/metrics/", "/healthz/", "/admin/deployments/", "/admin/plugins/", "/admin/plugins//", "/admin/plugins/price/rollback/", "/admin/energy/prices/"] {
        for m in [Method::GET, Method::POST] {
            assert_eq!(route(m.clone(), path), Err(404), "{m} {path}");
        }
    }
}

#[test]
fn parameters_are_taken_as_sent() {
    use Endpoint as E;
    assert_eq!(route(Method::PATCH, "/admin/projects/%27%3B--"), Ok((E::UpdateProject, Some("%27%3B--"))));
    assert_eq!(route(Method::GET, "/admin/projects/a/b"), Ok((E::GetProject, Some("a/b"))), "the store refuses it");
    assert_eq!(route(Method::DELETE, "/admin/keys/key_1"), Ok((E::RevokeKey, Some("key_1"))));
    assert_eq!(route(Method::POST, "/admin/plugins/my%20tag/rollback"), Ok((E::RollbackPlugin, Some("my%20tag"))));
    // A tag is one segment.
    assert_eq!(route(Method::POST, "/admin/plugins/a/b/rollback"), Err(404));
    assert_eq!(route(Method::POST, "/admin/plugins//rollback"), Err(404));
    assert_eq!(route(Method::POST, "/admin/plugins/rollback"), Err(404), "no tag (this panicked before the router)");
}
