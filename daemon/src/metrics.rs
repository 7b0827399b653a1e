//! Serving `/metrics` (Prometheus text, version 0.0.4) the same way in every daemon: bound on the
//! address its config names, the bound address written to a file where tools find it (port 0
//! takes a free port: many simulated nodes share one loopback), stopped with the daemon.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;
use axum::http::header;
use axum::response::IntoResponse;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A router answering `/metrics` with what `render` returns at each scrape. `render` runs on a
/// blocking thread: it may read the kernel (mount tables, statfs of a FUSE mount) or take locks.
pub fn router<F>(render: F) -> axum::Router
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    axum::Router::new().route("/metrics", axum::routing::get(move || {
        let render = render.clone();
        async move {
            match tokio::task::spawn_blocking(render).await {
                Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
                Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, format!("rendering the metrics failed: {e}\n")).into_response(),
            }
        }
    }))
}

/// Binds `listen` (the value of the config key `setting`), writes the bound address to
/// `address_file` when one is given, and serves `app` until `stop` completes. Returns the bound
/// address once listening.
pub async fn serve<S>(setting: &str, listen: &str, address_file: Option<&Path>, app: axum::Router, stop: S) -> anyhow::Result<SocketAddr>
where
    S: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {setting} {listen}: a free address:port, or \"\" to serve no metrics"))?;
    let bound = listener.local_addr()?;
    if let Some(file) = address_file {
        std::fs::write(file, bound.to_string()).with_context(|| format!("writing the metrics address to {}", file.display()))?;
    }
    tracing::info!(address = %bound, "metrics listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            tracing::warn!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn serves_what_render_returns_and_writes_the_bound_address() {
        let dir = std::env::temp_dir().join(format!("berth-daemon-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("x.metrics");
        let n = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = n.clone();
        let app = router(move || format!("scrapes {}\n", counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let bound = serve("test.metrics_listen", "127.0.0.1:0", Some(&file), app, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), bound.to_string());
        for expected in ["scrapes 1", "scrapes 2"] {
            let mut s = tokio::net::TcpStream::connect(bound).await.unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).await.unwrap();
            assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
            assert!(reply.to_ascii_lowercase().contains(&format!("content-type: {CONTENT_TYPE}")), "{reply}");
            assert!(reply.ends_with(&format!("{expected}\n")), "{reply}");
        }
        let _ = tx.send(());
        std::fs::remove_dir_all(&dir).unwrap();
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = serve("test.metrics_listen", &held.local_addr().unwrap().to_string(), None, axum::Router::new(), std::future::pending()).await;
        let e = taken.expect_err("a port in use cannot be bound");
        assert!(format!("{e:#}").contains("test.metrics_listen"), "{e:#}");
    }
}
