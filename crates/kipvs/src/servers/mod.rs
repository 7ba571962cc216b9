//! kipvs' HTTP endpoints, as kube-proxy serves them: health (`/healthz`, `/livez`, and
//! kipvs' `/readyz` for startup probes) on healthzBindAddress; `/metrics`, `/proxyMode` and `/healthz` on metricsBindAddress;
//! one healthCheckNodePort server per Local-policy LoadBalancer ([`service_health`]).

pub mod health;
pub mod metrics;
pub mod process;
pub mod service_health;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use health::{HealthAnswer, ProxyHealth};
use kipvs_ipvs::Family;
use metrics::{CodeLabels, Metrics};

/// What the endpoints read, shared with the sync loop.
#[derive(Debug)]
pub struct Shared {
    /// Health state, updated by the sync loop.
    pub health: Mutex<ProxyHealth>,
    /// Every metric.
    pub metrics: Metrics,
}

impl Shared {
    /// Shared state with the given health and fresh metrics.
    pub fn new(health: ProxyHealth) -> Arc<Self> {
        Arc::new(Shared {
            health: Mutex::new(health),
            metrics: Metrics::new(),
        })
    }

    /// Runs `f` on the health state (a poisoned lock still holds valid data).
    pub fn with_health<T>(&self, f: impl FnOnce(&mut ProxyHealth) -> T) -> T {
        let mut guard = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }
}

/// An address family as kube-proxy names it: the `ip_family` label of its metrics and
/// the keys of its health answers' `status`.
pub fn ip_family(family: Family) -> &'static str {
    match family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// A health answer as an HTTP response with kube-proxy's headers.
pub(crate) fn json(answer: HealthAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        answer.body,
    )
        .into_response()
}

fn count(
    family: &prometheus_client::metrics::family::Family<
        CodeLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    status: u16,
) {
    family
        .get_or_create(&CodeLabels {
            code: status.to_string(),
        })
        .inc();
}

/// The health server's routes: `/healthz`, `/livez` and `/readyz`.
pub fn health_router(shared: Arc<Shared>) -> Router {
    let healthz = {
        let shared = Arc::clone(&shared);
        move || async move {
            let answer = shared.with_health(|h| h.healthz(SystemTime::now()));
            count(&shared.metrics.healthz_total, answer.status);
            json(answer)
        }
    };
    let livez = {
        let shared = Arc::clone(&shared);
        move || async move {
            let answer = shared.with_health(|h| h.livez(SystemTime::now()));
            count(&shared.metrics.livez_total, answer.status);
            json(answer)
        }
    };
    // Not counted: kube-proxy has no such endpoint, so no metric for it.
    let readyz = move || async move { json(shared.with_health(|h| h.readyz(SystemTime::now()))) };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
}

/// The metrics server's routes: `/metrics`, `/proxyMode` (`ipvs`) and `/healthz` (`ok`).
pub fn metrics_router(shared: Arc<Shared>) -> Router {
    let metrics = move |headers: axum::http::HeaderMap| async move {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let (content_type, body) = shared.metrics.render_for(accept);
        ([(header::CONTENT_TYPE, content_type)], body)
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/proxyMode",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    ],
                    "ipvs",
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

/// Binds `addr` and serves `router` until the task is dropped.
///
/// Fails when the address cannot be bound (in use, not local, no permission).
pub async fn serve(addr: SocketAddr, router: Router) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router).await
}

/// Binds `addr` now and returns the bound address and a future serving `router`, so
/// callers learn of bind errors at start and tests can bind port 0.
///
/// Fails when the address cannot be bound.
pub async fn bind(
    addr: SocketAddr,
    router: Router,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, async move { axum::serve(listener, router).await }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn response(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    /// The status line and headers, lower-cased.
    async fn get_head(addr: SocketAddr, path: &str) -> String {
        let response = response(addr, path).await;
        response
            .split_once("\r\n\r\n")
            .unwrap()
            .0
            .to_ascii_lowercase()
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let response = response(addr, path).await;
        let status = response[9..12].parse().unwrap();
        let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    async fn start(router: Router) -> SocketAddr {
        let (addr, server) = bind("127.0.0.1:0".parse().unwrap(), router).await.unwrap();
        tokio::spawn(server);
        addr
    }

    #[tokio::test]
    async fn health_endpoints_answer_200_then_503_when_a_change_is_late() {
        let shared = Shared::new(ProxyHealth::new(Duration::from_secs(60)));
        let addr = start(health_router(Arc::clone(&shared))).await;
        let (status, body) = get(addr, "/healthz").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"nodeEligible\":true"), "{body}");
        let (status, _) = get(addr, "/livez").await;
        assert_eq!(status, 200);
        assert_eq!(get(addr, "/readyz").await.0, 503, "no sync yet");
        shared.with_health(|h| h.updated(SystemTime::now()));
        assert_eq!(get(addr, "/readyz").await.0, 200);
        shared.with_health(|h| h.queued(SystemTime::now() - Duration::from_secs(61)));
        assert_eq!(get(addr, "/healthz").await.0, 503);
        assert_eq!(get(addr, "/livez").await.0, 503);
        let metrics = shared.metrics.render();
        assert!(
            metrics.contains("kubeproxy_proxy_healthz_total{code=\"503\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("kubeproxy_proxy_livez_total{code=\"200\"} 1"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn metrics_server_answers_metrics_and_proxy_mode() {
        let shared = Shared::new(ProxyHealth::new(Duration::from_secs(60)));
        shared.metrics.endpoint_changes.inc();
        let addr = start(metrics_router(shared)).await;
        assert_eq!(get(addr, "/proxyMode").await, (200, "ipvs".to_owned()));
        let head = get_head(addr, "/proxyMode").await;
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("kubeproxy_sync_proxy_rules_endpoint_changes_total 1"),
            "{body}"
        );
        assert_eq!(get(addr, "/nope").await.0, 404);
    }
}
