//! The Kubernetes source against the test API server, through the real kube client.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kipvs_apiserver_fake::ApiServer;
use kipvs_kube::source::{ClusterEvent, ObjectKey};
use kipvs_kube::watch::{watch_cluster, WatchConfig};
use kube::ResourceExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const NODE: &str = "node-1";
const WAIT: Duration = Duration::from_secs(10);

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    (!pairs.is_empty()).then(|| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

fn service(name: &str, label_pairs: &[(&str, &str)]) -> Service {
    let mut service = Service::default();
    service.metadata.name = Some(name.into());
    service.metadata.namespace = Some("ns".into());
    service.metadata.labels = labels(label_pairs);
    service
}

fn slice(name: &str, label_pairs: &[(&str, &str)]) -> EndpointSlice {
    EndpointSlice {
        address_type: "IPv4".into(),
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            labels: labels(label_pairs),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn node(name: &str, zone: &str) -> Node {
    let mut node = Node::default();
    node.metadata.name = Some(name.into());
    node.metadata.labels = labels(&[("topology.kubernetes.io/zone", zone)]);
    node
}

fn key(name: &str) -> ObjectKey {
    ObjectKey {
        namespace: "ns".into(),
        name: name.into(),
    }
}

/// Short backoff, small pages (so listings take several requests).
fn fast() -> WatchConfig {
    WatchConfig {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        page_size: Some(2),
        watch_timeout: None,
    }
}

struct Source {
    rx: mpsc::Receiver<ClusterEvent>,
    task: JoinHandle<()>,
}

fn start(server: &ApiServer, config: WatchConfig) -> Source {
    let (tx, rx) = mpsc::channel(64);
    let client = server.client();
    let task = tokio::spawn(watch_cluster(client, NODE, tx, config));
    Source { rx, task }
}

impl Source {
    async fn next(&mut self) -> ClusterEvent {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("an event in time")
            .expect("the source is running")
    }

    /// The events of one complete listing (services, slices, node), in the order they
    /// came, plus anything else that came in between.
    async fn listing(&mut self) -> Vec<ClusterEvent> {
        let mut events = Vec::new();
        let (mut services, mut slices, mut node) = (false, false, false);
        while !(services && slices && node) {
            let event = self.next().await;
            match &event {
                ClusterEvent::ServicesReset(_) => services = true,
                ClusterEvent::SlicesReset(_) => slices = true,
                ClusterEvent::NodeApplied(_) => node = true,
                _ => {}
            }
            events.push(event);
        }
        events
    }

    /// Everything that arrives within `window`.
    async fn drain(&mut self, window: Duration) -> Vec<ClusterEvent> {
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            events.push(event);
        }
        events
    }
}

fn service_names(events: &[ClusterEvent]) -> Vec<String> {
    events
        .iter()
        .find_map(|e| match e {
            ClusterEvent::ServicesReset(all) => Some(all.iter().map(|s| s.name_any()).collect()),
            _ => None,
        })
        .expect("a ServicesReset")
}

fn is_deletion(event: &ClusterEvent) -> bool {
    matches!(
        event,
        ClusterEvent::ServiceDeleted(_) | ClusterEvent::SliceDeleted(_)
    )
}

fn seed(server: &ApiServer) {
    for name in ["a", "b", "c"] {
        server.apply(&service(name, &[]));
    }
    server.apply(&service(
        "other-proxy",
        &[("service.kubernetes.io/service-proxy-name", "other")],
    ));
    server.apply(&slice("a-1", &[("kubernetes.io/service-name", "a")]));
    server.apply(&slice(
        "headless-1",
        &[("service.kubernetes.io/headless", "")],
    ));
    server.apply(&node(NODE, "z1"));
    server.apply(&node("node-2", "z2"));
}

#[tokio::test]
async fn the_initial_listing_arrives_as_resets_without_other_proxies_objects() {
    let server = ApiServer::start().await.unwrap();
    seed(&server);
    let mut source = start(&server, fast());

    let events = source.listing().await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(service_names(&events), ["a", "b", "c"]);
    for event in &events {
        match event {
            ClusterEvent::SlicesReset(all) => {
                let names: Vec<String> = all.iter().map(|s| s.name_any()).collect();
                assert_eq!(names, ["a-1"]);
            }
            ClusterEvent::NodeApplied(node) => assert_eq!(node.name_any(), NODE),
            ClusterEvent::ServicesReset(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // The selectors kube-proxy uses went to the server: Services without another
    // proxy's label, EndpointSlices without the headless label.
    let requests = server.requests().join("\n");
    assert!(
        requests.contains("services?&labelSelector=%21service.kubernetes.io%2Fservice-proxy-name&"),
        "{requests}"
    );
    assert!(
        requests.contains("endpointslices?&labelSelector=%21service.kubernetes.io%2Fheadless&"),
        "{requests}"
    );
    assert!(
        requests.contains("fieldSelector=metadata.name%3Dnode-1"),
        "{requests}"
    );
    source.task.abort();
}

#[tokio::test]
async fn applied_and_deleted_objects_arrive_one_by_one() {
    let server = ApiServer::start().await.unwrap();
    seed(&server);
    let mut source = start(&server, fast());
    source.listing().await;

    // Objects of another proxy and other nodes are not seen at all.
    server.apply(&service(
        "x",
        &[("service.kubernetes.io/service-proxy-name", "other")],
    ));
    server.apply(&node("node-2", "z3"));
    server.apply(&service("d", &[]));
    match source.next().await {
        ClusterEvent::ServiceApplied(s) => assert_eq!(s.name_any(), "d"),
        other => panic!("expected ServiceApplied(d), got {other:?}"),
    }
    assert!(server.delete::<Service>("ns", "a"));
    match source.next().await {
        ClusterEvent::ServiceDeleted(k) => assert_eq!(k, key("a")),
        other => panic!("expected ServiceDeleted(a), got {other:?}"),
    }
    server.apply(&slice("d-1", &[("kubernetes.io/service-name", "d")]));
    match source.next().await {
        ClusterEvent::SliceApplied(s) => assert_eq!(s.name_any(), "d-1"),
        other => panic!("expected SliceApplied(d-1), got {other:?}"),
    }
    assert!(server.delete::<EndpointSlice>("ns", "a-1"));
    match source.next().await {
        ClusterEvent::SliceDeleted(k) => assert_eq!(k, key("a-1")),
        other => panic!("expected SliceDeleted(a-1), got {other:?}"),
    }
    server.apply(&node(NODE, "z9"));
    match source.next().await {
        ClusterEvent::NodeApplied(n) => {
            assert_eq!(n.name_any(), NODE);
            assert_eq!(n.labels()["topology.kubernetes.io/zone"], "z9");
        }
        other => panic!("expected NodeApplied, got {other:?}"),
    }
    // A Service that is given to another proxy leaves this one's view: the watch
    // reports it deleted.
    server.apply(&service(
        "b",
        &[("service.kubernetes.io/service-proxy-name", "other")],
    ));
    match source.next().await {
        ClusterEvent::ServiceDeleted(k) => assert_eq!(k, key("b")),
        other => panic!("expected ServiceDeleted(b), got {other:?}"),
    }
    source.task.abort();
}

#[tokio::test]
async fn a_410_gone_during_a_watch_relists_as_resets_without_deletions() {
    let server = ApiServer::start().await.unwrap();
    seed(&server);
    let mut source = start(&server, fast());
    source.listing().await;

    server.apply(&service("d", &[]));
    assert!(matches!(
        source.next().await,
        ClusterEvent::ServiceApplied(_)
    ));
    server.expire_watches();
    let events = source.listing().await;
    assert_eq!(events.len(), 3, "only the three resets: {events:?}");
    assert_eq!(service_names(&events), ["a", "b", "c", "d"]);
    assert!(!events.iter().any(is_deletion));
    assert!(!events
        .iter()
        .any(|e| matches!(e, ClusterEvent::Degraded(_))));
    source.task.abort();
}

#[tokio::test]
async fn a_watch_refused_with_410_relists_whether_as_an_event_or_an_http_status() {
    for http_status in [false, true] {
        let server = ApiServer::start().await.unwrap();
        server.answer_gone_with_http_status(http_status);
        seed(&server);
        // Watches last one second, so the watchers reconnect from their version.
        let mut source = start(
            &server,
            WatchConfig {
                watch_timeout: Some(1),
                ..fast()
            },
        );
        source.listing().await;
        server.compact();
        let events = source.listing().await;
        assert_eq!(events.len(), 3, "http {http_status}: {events:?}");
        assert_eq!(service_names(&events), ["a", "b", "c"]);
        source.task.abort();
    }
}

#[tokio::test]
async fn an_outage_is_one_degraded_and_the_recovery_a_listing() {
    let mut server = ApiServer::start().await.unwrap();
    seed(&server);
    let mut source = start(&server, fast());
    source.listing().await;

    server.stop().await;
    // Backoff 10..100 ms: many retries in this window, one report.
    let during = source.drain(Duration::from_millis(800)).await;
    assert_eq!(during.len(), 1, "{during:?}");
    match &during[0] {
        ClusterEvent::Degraded(reason) => assert!(reason.contains("watch"), "{reason}"),
        other => panic!("expected Degraded, got {other:?}"),
    }

    // Changed while the API server was away; seen whole when it is back.
    server.delete::<Service>("ns", "c");
    server.apply(&service("e", &[]));
    server.restart().await.unwrap();
    let events = source.listing().await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(service_names(&events), ["a", "b", "e"]);

    // A second outage is reported again.
    server.stop().await;
    assert!(matches!(source.next().await, ClusterEvent::Degraded(_)));
    server.restart().await.unwrap();
    source.listing().await;
    source.task.abort();
}

#[tokio::test]
async fn a_forbidden_listing_is_degraded_with_the_reason_until_it_is_allowed() {
    let server = ApiServer::start().await.unwrap();
    seed(&server);
    server.fail_requests(Some(403));
    let mut source = start(&server, fast());
    match source.next().await {
        ClusterEvent::Degraded(reason) => assert!(reason.contains("403"), "{reason}"),
        other => panic!("expected Degraded, got {other:?}"),
    }
    let during = source.drain(Duration::from_millis(300)).await;
    assert!(during.is_empty(), "{during:?}");
    server.fail_requests(None);
    let events = source.listing().await;
    assert_eq!(service_names(&events), ["a", "b", "c"]);
    source.task.abort();
}

#[tokio::test]
async fn the_source_ends_when_the_receiver_is_dropped() {
    let server = ApiServer::start().await.unwrap();
    seed(&server);
    let mut source = start(&server, fast());
    source.listing().await;
    drop(source.rx);
    tokio::time::timeout(WAIT, source.task)
        .await
        .expect("the source ends")
        .unwrap();
}
