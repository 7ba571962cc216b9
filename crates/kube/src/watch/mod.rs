//! The Kubernetes source of cluster state: watchers for Services, EndpointSlices and
//! this Node, sending [`ClusterEvent`]s to the sync loop.
//!
//! Each watcher is a small pipeline: kube-runtime's `watcher` (list, then watch from
//! the list's resourceVersion; it re-lists by itself on a 410 Gone during a watch) ->
//! [`snapshots`] (a listing is buffered and sent whole, as one `*Reset`) -> the
//! supervisor here, which decides what an error means:
//!
//! - 410 Gone (history expired): start over with a fresh list at once; not an outage.
//! - anything else (API server unreachable, forbidden, ...): the first failure while no
//!   watcher was failing sends [`ClusterEvent::Degraded`] (once per outage, not once
//!   per retry or per watcher); the watcher then waits an exponential, capped, jittered
//!   backoff and lists again. The kernel keeps what it has meanwhile: nothing is
//!   sent until a complete listing arrives, as a `*Reset`, which ends the outage.
//! - 403 Forbidden is such a failure too, and logged as `permission denied` with what the
//!   API server refused (user, verb, resource) and what kipvs needs: a warning at once
//!   (a restarted kube-apiserver refuses for a moment, until its RBAC cache has synced),
//!   an error when it still refuses 5 s later.
//!
//! The three watchers are independent: their events interleave in any order (the
//! first `NodeApplied` may come before or after the first `ServicesReset`). Every
//! watcher ends when the receiver of the events is dropped.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use kipvs_kube::client::client;
//! use kipvs_kube::events::EventRecorder;
//! use kipvs_kube::watch::{watch_cluster, WatchConfig};
//!
//! let client = client(None, None).await?; // or Some(Path::new("/var/lib/kube-proxy/kubeconfig.conf")), and --master
//! let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
//! tokio::spawn(watch_cluster(client.clone(), "node-1", tx, WatchConfig::default()));
//! let recorder = EventRecorder::new(client, "node-1");
//! while let Some(event) = rx.recv().await {
//!     // feed the sync loop; recorder.warn_in_background(...) for bad Services
//! }
//! # Ok(())
//! # }
//! ```

mod backoff;
mod outage;
mod snapshot;

use std::fmt::Debug;
use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use backoff::Backoff;
pub use outage::Outage;
pub use snapshot::{snapshots, Snapshot};

use crate::source::{ClusterEvent, ObjectKey};

/// The label that gives a Service (and its EndpointSlices) to another proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label the EndpointSlice controller puts on the slices of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// The label selector kube-proxy lists Services with: none that belongs to another
/// proxy. It only saves bandwidth: the core still skips such Services itself.
pub fn services_selector() -> String {
    format!("!{SERVICE_PROXY_NAME_LABEL}")
}

/// The label selector kube-proxy lists EndpointSlices with: none of a headless Service.
/// The label only counts on slices: a Service that carries it but has a ClusterIP is
/// proxied, by kube-proxy as by kipvs (its slices, labelled too, are not).
pub fn slices_selector() -> String {
    format!("!{HEADLESS_LABEL}")
}

/// How the watchers talk to the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfig {
    /// The first delay after an error.
    pub initial_backoff: Duration,
    /// The longest delay between attempts while the API server fails.
    pub max_backoff: Duration,
    /// Objects per list page (`None`: all in one response).
    pub page_size: Option<u32>,
    /// How long one watch request lasts on the server before it is renewed (seconds;
    /// `None`: kube-runtime's 290).
    pub watch_timeout: Option<u32>,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            page_size: Some(500),
            watch_timeout: None,
        }
    }
}

impl WatchConfig {
    fn watcher_config(&self) -> watcher::Config {
        watcher::Config {
            page_size: self.page_size,
            timeout: self.watch_timeout,
            ..watcher::Config::default()
        }
    }
}

/// Watches Services, EndpointSlices and the Node named `node_name`, and sends what
/// changes to `tx` (see the module documentation for the order and the outages).
/// Returns when `tx`'s receiver is dropped.
pub async fn watch_cluster(
    client: Client,
    node_name: impl Into<String>,
    tx: mpsc::Sender<ClusterEvent>,
    config: WatchConfig,
) {
    let node_name: String = node_name.into();
    let outage = Outage::default();
    let base = config.watcher_config();
    let services = Watched {
        name: "services",
        api: Api::<Service>::all(client.clone()),
        config: base.clone().labels(&services_selector()),
        to_events: service_events,
    };
    let slices = Watched {
        name: "endpointslices",
        api: Api::<EndpointSlice>::all(client.clone()),
        config: base.clone().labels(&slices_selector()),
        to_events: slice_events,
    };
    let node = Watched {
        name: "node",
        api: Api::<Node>::all(client),
        config: base.fields(&format!("metadata.name={node_name}")),
        to_events: node_events,
    };
    tokio::join!(
        supervise(services, &tx, &outage, &config),
        supervise(slices, &tx, &outage, &config),
        supervise(node, &tx, &outage, &config),
    );
}

/// One kind of object to watch.
struct Watched<K> {
    /// Names the watcher in logs and in `Degraded` reasons.
    name: &'static str,
    api: Api<K>,
    config: watcher::Config,
    to_events: fn(Snapshot<K>) -> Vec<ClusterEvent>,
}

/// Whether an error says the resourceVersion is too old (410 Gone), as an `ERROR`
/// watch event or as the HTTP status of a watch or list.
fn is_gone(err: &watcher::Error) -> bool {
    match err {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

/// How long the API server may refuse a watcher (403) before kipvs calls it an error: a
/// restarted kube-apiserver answers 403 for a moment, until its RBAC cache has synced.
const REFUSED_FOR: Duration = Duration::from_secs(5);

/// What the API server refused, when `err` is a 403 Forbidden: its own message names the
/// user, the verb and the resource (`User "system:serviceaccount:kube-system:kipvs" cannot
/// list resource "endpointslices" in API group "discovery.k8s.io" at the cluster scope`),
/// and the reader is told what kipvs needs.
fn permission_denied(watcher: &str, err: &watcher::Error) -> Option<String> {
    let status = match err {
        watcher::Error::WatchError(status) => status.as_ref(),
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.as_ref(),
        _ => return None,
    };
    status.is_forbidden().then(|| {
        format!(
            "permission denied: {}; kipvs cannot watch {watcher} without it: its ServiceAccount \
             needs list and watch on services, nodes and discovery.k8s.io endpointslices \
             (the ClusterRole of examples/kubernetes/kipvs/rbac.yaml)",
            status.message
        )
    })
}

/// Runs one watcher until `tx` closes: listings and changes are sent on, errors
/// decide between a fresh list at once (410 Gone) and a backoff (anything else).
async fn supervise<K>(
    watched: Watched<K>,
    tx: &mpsc::Sender<ClusterEvent>,
    outage: &Outage,
    config: &WatchConfig,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let name = watched.name;
    let mut backoff = Backoff::new(config.initial_backoff, config.max_backoff);
    // 410s since the last complete listing: the first relists at once, more back off.
    let mut gone_in_a_row = 0u32;
    // Since when the API server refuses this watcher (403), and whether that was said at
    // error level yet.
    let mut refused_since: Option<Instant> = None;
    let mut refusal_reported = false;
    loop {
        let started = Instant::now();
        // A fresh watcher lists first: after any error we start over from a list, as
        // client-go's reflector does, so recovery always arrives as a whole listing.
        let stream = snapshots(watcher(watched.api.clone(), watched.config.clone()));
        let mut stream = pin!(stream);
        let err = loop {
            let item = tokio::select! {
                item = stream.next() => item,
                () = tx.closed() => return,
            };
            match item {
                Some(Ok(snapshot)) => {
                    if matches!(snapshot, Snapshot::Reset(_)) {
                        if outage.is_failing(name) {
                            tracing::info!(watcher = name, "listed again after an error");
                        }
                        outage.recovered(name);
                        gone_in_a_row = 0;
                        refused_since = None;
                        refusal_reported = false;
                    }
                    for event in (watched.to_events)(snapshot) {
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Err(err)) => break Some(err),
                // The watcher never ends by itself; if it did, start a fresh one.
                None => break None,
            }
        };
        if started.elapsed() > config.max_backoff {
            // It ran well for longer than the longest delay: this is a new failure.
            backoff.reset();
        }
        match err {
            Some(err) if is_gone(&err) => {
                tracing::info!(watcher = name, error = %err, "resourceVersion too old, listing again");
                gone_in_a_row += 1;
                if gone_in_a_row == 1 {
                    continue;
                }
            }
            Some(err) => {
                if let Some(denied) = permission_denied(name, &err) {
                    // Retrying will not help until someone changes the RBAC rules; but a
                    // starting kube-apiserver refuses for a moment, until its RBAC cache
                    // has synced. So: a warning at once, an error once it lasts.
                    match refused_since {
                        None => {
                            tracing::warn!(watcher = name, "{denied}; retrying");
                            refused_since = Some(Instant::now());
                        }
                        Some(since) if since.elapsed() >= REFUSED_FOR && !refusal_reported => {
                            tracing::error!(watcher = name, "{denied}");
                            refusal_reported = true;
                        }
                        Some(_) => tracing::debug!(watcher = name, "still refused"),
                    }
                    if outage.failed(name) && tx.send(ClusterEvent::Degraded(denied)).await.is_err()
                    {
                        return;
                    }
                } else if outage.failed(name) {
                    tracing::warn!(watcher = name, error = %err, "cannot read the API server; keeping the current state");
                    let reason = format!("{name} watch: {err}");
                    if tx.send(ClusterEvent::Degraded(reason)).await.is_err() {
                        return;
                    }
                } else {
                    tracing::debug!(watcher = name, error = %err, "still failing");
                }
            }
            None => tracing::debug!(watcher = name, "watch stream ended"),
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = tx.closed() => return,
        }
    }
}

fn key<K: ResourceExt>(object: &K) -> ObjectKey {
    ObjectKey {
        namespace: object.namespace().unwrap_or_default(),
        name: object.name_any(),
    }
}

fn service_events(snapshot: Snapshot<Service>) -> Vec<ClusterEvent> {
    vec![match snapshot {
        Snapshot::Reset(all) => ClusterEvent::ServicesReset(all),
        Snapshot::Applied(service) => ClusterEvent::ServiceApplied(Box::new(service)),
        Snapshot::Deleted(service) => ClusterEvent::ServiceDeleted(key(&service)),
    }]
}

fn slice_events(snapshot: Snapshot<EndpointSlice>) -> Vec<ClusterEvent> {
    vec![match snapshot {
        Snapshot::Reset(all) => ClusterEvent::SlicesReset(all),
        Snapshot::Applied(slice) => ClusterEvent::SliceApplied(Box::new(slice)),
        Snapshot::Deleted(slice) => ClusterEvent::SliceDeleted(key(&slice)),
    }]
}

fn node_events(snapshot: Snapshot<Node>) -> Vec<ClusterEvent> {
    match snapshot {
        Snapshot::Reset(nodes) => nodes
            .into_iter()
            .last()
            .map(|node| ClusterEvent::NodeApplied(Box::new(node)))
            .into_iter()
            .collect(),
        Snapshot::Applied(node) => vec![ClusterEvent::NodeApplied(Box::new(node))],
        Snapshot::Deleted(node) => {
            tracing::warn!(node = %node.name_any(), "this node was deleted from the cluster");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    const DENIED: &str = r#"endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:kube-system:kipvs" cannot list resource "endpointslices" in API group "discovery.k8s.io" at the cluster scope"#;

    #[test]
    fn a_forbidden_list_names_what_is_missing_and_what_kipvs_needs() {
        let err = watcher::Error::InitialListFailed(kube::Error::Api(
            Status::failure(DENIED, "Forbidden").with_code(403).boxed(),
        ));
        let message = permission_denied("endpointslices", &err).unwrap();
        assert!(message.starts_with("permission denied: "), "{message}");
        assert!(message.contains(DENIED), "{message}");
        assert!(
            message.contains("examples/kubernetes/kipvs/rbac.yaml"),
            "{message}"
        );
        assert!(!is_gone(&err));
    }

    #[test]
    fn other_errors_are_no_permission_problem() {
        let gone = watcher::Error::WatchError(
            Status::failure("too old resource version: 5 (9)", "Expired")
                .with_code(410)
                .boxed(),
        );
        assert!(permission_denied("services", &gone).is_none());
        assert!(is_gone(&gone));
        let unavailable = watcher::Error::WatchStartFailed(kube::Error::Api(
            Status::failure("the server is shutting down", "ServiceUnavailable")
                .with_code(503)
                .boxed(),
        ));
        assert!(permission_denied("services", &unavailable).is_none());
    }
}
