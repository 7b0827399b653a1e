//! Prometheus metrics of the CSI driver: every gRPC call counted by method and status code with its
//! duration (a tower layer around the services, so no handler can forget it), and the node's OSS
//! FUSE mounts by health, read at each scrape.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::codegen::http;

use crate::oss::Health;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    operations: Family<Labels, Counter>,
    operation_seconds: Family<Labels, Histogram>,
    oss_mounts: Family<Labels, Gauge>,
    pub oss_remounts: Counter,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("berth_csi");
        let m = Metrics {
            operations: Family::default(),
            // 1 ms to ~33 s: a NodeStage with mkfs, a ControllerPublish waiting for the attach.
            operation_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16))),
            oss_mounts: Family::default(),
            oss_remounts: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("operations", "CSI calls answered, by method and gRPC status code", m.operations.clone());
        registry.register("operation_seconds", "Time to answer a CSI call, by method", m.operation_seconds.clone());
        registry.register("oss_mounts", "The node's OSS FUSE mounts, by health (alive, dead: its s3fs is gone)", m.oss_mounts.clone());
        registry.register("oss_remounts", "Dead OSS mounts the health check mounted again", m.oss_remounts.clone());
        Arc::new(Metrics { registry, ..m })
    }

    /// One call of `method` answered with `code` after `elapsed`.
    pub fn observe(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        self.operations.get_or_create(&vec![("method", method.to_string()), ("code", format!("{code:?}"))]).inc();
        self.operation_seconds.get_or_create(&vec![("method", method.to_string())]).observe(elapsed.as_secs_f64());
    }

    /// The text exposition, with the OSS mounts as `oss` lists them now.
    pub fn render(&self, oss: &[(String, Health)]) -> String {
        for health in [Health::Alive, Health::Dead] {
            let n = oss.iter().filter(|(_, h)| *h == health).count();
            self.oss_mounts.get_or_create(&vec![("health", format!("{health:?}").to_lowercase())]).set(n as i64);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// The method label of a gRPC path: `/csi.v1.Node/NodePublishVolume` → `NodePublishVolume`; a path
/// outside the CSI services is `unknown`, so a peer cannot grow the label set.
pub fn method_of(path: &str) -> &str {
    match path.strip_prefix("/csi.v1.").and_then(|rest| rest.split_once('/')) {
        Some(("Identity" | "Controller" | "Node", method)) if !method.is_empty() && method.len() <= 64 && method.bytes().all(|b| b.is_ascii_alphanumeric()) => method,
        _ => "unknown",
    }
}

/// The status of a unary answer: tonic sends an error as a trailers-only response (`grpc-status` in
/// the headers); a success carries it in the trailers, after the body.
fn code_of(headers: &http::HeaderMap) -> tonic::Code {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok()).map_or(tonic::Code::Ok, tonic::Code::from)
}

/// The tower layer that counts every call of the services it wraps.
#[derive(Clone)]
pub struct CountCalls(pub Arc<Metrics>);

impl<S> tower::Layer<S> for CountCalls {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Counted<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_of(req.uri().path()).to_string();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let res = answer.await;
            let code = match &res {
                Ok(r) => code_of(r.headers()),
                Err(_) => tonic::Code::Unknown,
            };
            metrics.observe(&method, code, started.elapsed());
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded_to_the_csi_services() {
        assert_eq!(method_of("/csi.v1.Node/NodePublishVolume"), "NodePublishVolume");
        assert_eq!(method_of("/csi.v1.Identity/Probe"), "Probe");
        for path in ["/csi.v1.Other/Probe", "/csi.v1.Node/", "/x.Node/Probe", "/csi.v1.Node/a-b", "/", ""] {
            assert_eq!(method_of(path), "unknown", "{path}");
        }
    }

    #[test]
    fn the_text_counts_calls_by_code_and_mounts_by_health() {
        let m = Metrics::new();
        m.observe("NodePublishVolume", tonic::Code::Ok, Duration::from_millis(3));
        m.observe("NodePublishVolume", tonic::Code::InvalidArgument, Duration::from_millis(1));
        m.observe("NodePublishVolume", tonic::Code::InvalidArgument, Duration::from_millis(1));
        m.oss_remounts.inc();
        let oss = [("a".to_string(), Health::Alive), ("b".to_string(), Health::Dead), ("c".to_string(), Health::Alive)];
        let text = m.render(&oss);
        for line in [
            "berth_csi_operations_total{method=\"NodePublishVolume\",code=\"Ok\"} 1",
            "berth_csi_operations_total{method=\"NodePublishVolume\",code=\"InvalidArgument\"} 2",
            "berth_csi_operation_seconds_count{method=\"NodePublishVolume\"} 3",
            "berth_csi_oss_mounts{health=\"alive\"} 2",
            "berth_csi_oss_mounts{health=\"dead\"} 1",
            "berth_csi_oss_remounts_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        // A mount gone since the last scrape is no longer counted.
        let text = m.render(&[]);
        assert!(text.lines().any(|l| l == "berth_csi_oss_mounts{health=\"alive\"} 0"), "{text}");
    }

    #[test]
    fn a_trailers_only_error_carries_its_code_in_the_headers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(code_of(&h), tonic::Code::Ok);
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(code_of(&h), tonic::Code::NotFound);
    }
}
