//! Metrics (`/metrics`, Prometheus text) and introspection (`/debug/pool`, `/debug/disks`, JSON) on a loopback port.

use std::sync::Arc;

use axum::routing::get;
use berth_cloud::Cloud;

use crate::attach::DiskAttacher;
use crate::eni_pool::EniPool;
use crate::metrics::Metrics;

pub fn router<C: Cloud + 'static>(pool: Arc<EniPool<C>>, disks: Arc<DiskAttacher<C>>, metrics: Arc<Metrics>) -> axum::Router {
    berth_daemon::metrics::router(move || metrics.render())
        .route("/debug/pool", get(move || async move { axum::Json(pool.describe()) }))
        .route("/debug/disks", get(move || async move { axum::Json(disks.describe_json()) }))
        .route("/healthz", get(|| async { "ok\n" }))
}
