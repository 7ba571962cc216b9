//! The imperative half of the healthCheckNodePort servers: follows what the sync loop
//! publishes, opens and closes the sockets [`changes`](super::changes) asks for, and
//! answers requests with the latest counts.
//!
//! A port that cannot be opened is logged and recorded as an Event on the Service
//! (kube-proxy's `FailedToStartServiceHealthcheck`); every other server keeps working,
//! and the port is tried again at the next publication (every sync, as kube-proxy does).

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use kipvs_kube::events::{EventRecorder, ServiceRef};
use kipvs_proxy::ServiceName;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{answer, changes, HealthChecks, Listen, Running, FAILED_TO_START};
use crate::servers::Shared;

/// Where failures to open a port are reported besides the log.
#[derive(Debug, Clone)]
pub struct Reporter {
    /// This node's name, for the Event's message.
    pub node_name: String,
    /// Posts Events on Services (absent with a state file).
    pub events: Option<EventRecorder>,
}

/// One open server: its sockets' tasks.
struct Open {
    running: Running,
    tasks: Vec<JoinHandle<()>>,
}

/// Runs the servers `wanted` describes until its sender is dropped, then closes them.
pub async fn run(mut wanted: watch::Receiver<HealthChecks>, shared: Arc<Shared>, report: Reporter) {
    let mut open: BTreeMap<ServiceName, Open> = BTreeMap::new();
    // The last failure reported per Service, so a failure that persists is logged once.
    let mut failed: BTreeMap<ServiceName, String> = BTreeMap::new();
    loop {
        let current = wanted.borrow_and_update().clone();
        let running = open
            .iter()
            .map(|(name, o)| (name.clone(), o.running.clone()))
            .collect();
        let todo = changes(&running, &current);
        for name in &todo.close {
            if let Some(server) = open.remove(name) {
                tracing::info!(service = %name, port = server.running.port, "closing health check server");
                close(server.tasks).await;
            }
        }
        failed.retain(|name, _| current.services.contains_key(name));
        for (name, port) in todo.open {
            let router = router(name.clone(), wanted.clone(), Arc::clone(&shared));
            match listen_all(&current.listen, port, router).await {
                Ok(tasks) => {
                    tracing::info!(service = %name, port, "serving health check");
                    failed.remove(&name);
                    let running = Running {
                        port,
                        listen: current.listen.clone(),
                    };
                    open.insert(name, Open { running, tasks });
                }
                Err(err) => {
                    let message = format!(
                        "node {} failed to start healthcheck \"{name}\" on port {port}: {err}",
                        report.node_name
                    );
                    if failed.get(&name) != Some(&message) {
                        tracing::warn!(service = %name, port, error = %err, "cannot open health check port");
                        failed.insert(name.clone(), message.clone());
                    }
                    if let Some(events) = &report.events {
                        let service = ServiceRef::new(&name.namespace, &name.name);
                        events.warn_in_background(&service, FAILED_TO_START, &message);
                    }
                }
            }
        }
        if wanted.changed().await.is_err() {
            break;
        }
    }
    for (_, server) in open {
        close(server.tasks).await;
    }
}

/// Stops a server's tasks and waits until their sockets are closed, so the port can
/// be opened again at once.
async fn close(tasks: Vec<JoinHandle<()>>) {
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// Opens `port` on every address of `listen` and serves `router` there; either all
/// open or none stays open.
///
/// Fails with the first address that cannot be bound.
async fn listen_all(listen: &Listen, port: u16, router: Router) -> io::Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for addr in listen.socket_addresses(port) {
        match bind(addr).await {
            Ok(listener) => {
                let router = router.clone();
                tasks.push(tokio::spawn(async move {
                    if let Err(err) = axum::serve(listener, router).await {
                        tracing::warn!(address = %addr, error = %err, "health check server stopped");
                    }
                }));
            }
            Err(err) => {
                close(tasks).await;
                return Err(err);
            }
        }
    }
    Ok(tasks)
}

/// Binds `addr`; the IPv6 wildcard falls back to the IPv4 one on a node without IPv6.
async fn bind(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Err(err)
            if addr.ip() == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                && err.raw_os_error() == Some(nix::errno::Errno::EAFNOSUPPORT as i32) =>
        {
            tokio::net::TcpListener::bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                addr.port(),
            ))
            .await
        }
        other => other,
    }
}

/// Every path answers with the Service's count and the proxy's health.
fn router(name: ServiceName, wanted: watch::Receiver<HealthChecks>, shared: Arc<Shared>) -> Router {
    let handler = move || {
        let name = name.clone();
        let wanted = wanted.clone();
        let shared = Arc::clone(&shared);
        async move {
            let count = wanted
                .borrow()
                .services
                .get(&name)
                .map_or(0, |w| w.local_endpoints);
            let healthy = shared.with_health(|h| h.is_healthy(SystemTime::now()));
            let mut response = crate::servers::json(answer(&name, count, healthy));
            // As kube-proxy: load balancers that weigh nodes read the local endpoints here.
            response.headers_mut().insert(
                "x-load-balancing-endpoint-weight",
                axum::http::HeaderValue::from(count),
            );
            response
        }
    };
    Router::new().fallback(handler)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servers::health::ProxyHealth;
    use crate::servers::service_health::Wanted;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, String, String)> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let status = response[9..12].parse().unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        Ok((status, head.to_lowercase(), body.to_owned()))
    }

    /// A port nothing listens on now.
    async fn free_port() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    fn checks(services: &[(&str, u16, usize)]) -> HealthChecks {
        HealthChecks {
            listen: Listen::On(vec!["127.0.0.1".parse().unwrap()]),
            services: services
                .iter()
                .map(|(n, port, local)| {
                    (
                        ServiceName::new("shop", *n),
                        Wanted {
                            port: *port,
                            local_endpoints: *local,
                        },
                    )
                })
                .collect(),
        }
    }

    async fn eventually<F, Fut>(what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for _ in 0..200 {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} did not happen");
    }

    #[tokio::test]
    async fn servers_follow_the_published_services_and_counts_and_a_busy_port_harms_no_other() {
        let shared = Shared::new(ProxyHealth::new(Duration::from_secs(60)));
        let (web, busy_port, moved) = (free_port().await, free_port().await, free_port().await);
        let _busy = std::net::TcpListener::bind(("127.0.0.1", busy_port)).unwrap();
        let (tx, rx) = watch::channel(checks(&[("web", web, 0), ("busy", busy_port, 1)]));
        let report = Reporter {
            node_name: "node-a".into(),
            events: None,
        };
        let task = tokio::spawn(run(rx, Arc::clone(&shared), report));
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));

        eventually("web's server", || async { get(at(web), "/").await.is_ok() }).await;
        let (status, head, body) = get(at(web), "/any/path").await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(
            head.contains("x-load-balancing-endpoint-weight: 0"),
            "{head}"
        );
        assert!(body.contains("\"localEndpoints\": 0"), "{body}");

        tx.send_replace(checks(&[("web", web, 2), ("busy", busy_port, 1)]));
        eventually("web's new count", || async {
            get(at(web), "/").await.is_ok_and(|(s, _, _)| s == 200)
        })
        .await;
        let (_, head, _) = get(at(web), "/").await.unwrap();
        assert!(
            head.contains("x-load-balancing-endpoint-weight: 2"),
            "{head}"
        );

        // The proxy falls behind: even a Service with endpoints answers 503.
        shared.with_health(|h| h.queued(SystemTime::now() - Duration::from_secs(61)));
        let (status, _, body) = get(at(web), "/").await.unwrap();
        assert_eq!(status, 503);
        assert!(body.contains("\"serviceProxyHealthy\": false"), "{body}");
        shared.with_health(|h| h.updated(SystemTime::now()));

        // web moves to another port: the old one closes.
        tx.send_replace(checks(&[("web", moved, 2)]));
        eventually("web's move", || async {
            get(at(moved), "/").await.is_ok() && get(at(web), "/").await.is_err()
        })
        .await;

        // Gone: its port closes.
        tx.send_replace(checks(&[]));
        eventually("web's close", || async {
            get(at(moved), "/").await.is_err()
        })
        .await;
        drop(tx);
        task.await.unwrap();
    }
}
