//! `GET /metrics` (Prometheus text) and `GET /healthz`: the admin listener's two open
//! endpoints, without the admin token.

use super::Reply;
use crate::proxy::Gateway;

/// Every metric, deployment gauges refreshed first.
pub(super) fn metrics(gw: &Gateway) -> Reply {
    let world = gw.world.load();
    world.telemetry.export(&world.catalog, &gw.metrics);
    Reply::Metrics(gw.metrics.render())
}

/// `{"status":"ok"}` while the process serves.
pub(super) fn healthz() -> Reply {
    Reply::Json(200, br#"{"status":"ok"}"#.to_vec())
}
