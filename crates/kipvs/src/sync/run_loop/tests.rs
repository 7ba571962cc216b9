use super::*;
use crate::servers::health::ProxyHealth;
use crate::sync::kernel::SimulatedKernel;
use kipvs_ipvs::{Protocol, ServiceKey};
use kipvs_kube::state_file;
use kipvs_proxy::{Config, Node};

const TIMING: Timing = Timing {
    sync_period: Duration::from_secs(30),
    min_sync_period: Duration::from_secs(1),
    retry: Duration::from_secs(2),
};

fn example() -> state_file::ClusterState {
    state_file::parse(
        include_str!("../../../../../examples/cluster.yaml"),
        "cluster.yaml",
    )
    .unwrap()
}

fn new_loop(kernel: SimulatedKernel) -> SyncLoop<SimulatedKernel> {
    let node = Node::new("node-a").with_addresses(["192.168.1.10".parse().unwrap()]);
    SyncLoop::new(
        Proxier::new(Config::default(), node),
        "node-a",
        kernel,
        Shared::new(ProxyHealth::new(TIMING.sync_period * 2)),
        TIMING,
    )
}

fn feed_example(l: &mut SyncLoop<SimulatedKernel>) {
    for event in kipvs_kube::source::replay(example()) {
        l.handle(event);
    }
}

fn key(addr: &str, port: u16) -> ServiceKey {
    ServiceKey::Addr {
        protocol: Protocol::Tcp,
        addr: addr.parse().unwrap(),
        port,
    }
}

fn has_service(l: &SyncLoop<SimulatedKernel>, k: &ServiceKey) -> bool {
    l.kernel()
        .state
        .table
        .services
        .iter()
        .any(|s| s.service.key == *k)
}

/// Runs the loop until `until` (tokio time is paused: this returns at once).
async fn run_for(
    l: &mut SyncLoop<SimulatedKernel>,
    rx: &mut mpsc::Receiver<ClusterEvent>,
    d: Duration,
) {
    let deadline = Instant::now() + d;
    loop {
        let wake = l.next_wake().max(Instant::now());
        if wake > deadline || !l.is_ready() {
            tokio::select! {
                Some(event) = rx.recv() => l.handle(event),
                () = tokio::time::sleep_until(deadline) => return,
            }
            continue;
        }
        tokio::select! {
            Some(event) = rx.recv() => l.handle(event),
            () = tokio::time::sleep_until(wake) => { l.step(); }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn nothing_is_planned_before_the_first_full_listing() {
    let mut l = new_loop(SimulatedKernel::default());
    let (tx, mut rx) = mpsc::channel(8);
    let services = example().services;
    tx.send(ClusterEvent::ServicesReset(services))
        .await
        .unwrap();
    run_for(&mut l, &mut rx, Duration::from_secs(60)).await;
    assert!(
        l.kernel().plans.is_empty(),
        "planned before the slices were listed"
    );
    tx.send(ClusterEvent::SlicesReset(example().endpoint_slices))
        .await
        .unwrap();
    run_for(&mut l, &mut rx, Duration::from_secs(1)).await;
    assert_eq!(l.kernel().plans.len(), 1);
    assert!(has_service(&l, &key("10.96.0.1", 443)));
}

#[tokio::test(start_paused = true)]
async fn once_mode_returns_after_the_first_full_sync() {
    let mut l = new_loop(SimulatedKernel::default());
    let (tx, rx) = mpsc::channel(8);
    for event in kipvs_kube::source::replay(example()) {
        tx.send(event).await.unwrap();
    }
    assert_eq!(l.run(rx, Mode::Once).await, Outcome::Once { success: true });
    assert_eq!(l.kernel().state.table.services.len(), 5);
    assert!(l
        .kernel()
        .state
        .addresses
        .contains(&"10.96.0.1".parse().unwrap()));
}

#[tokio::test(start_paused = true)]
async fn once_mode_reports_failure_when_an_operation_fails() {
    let kernel = SimulatedKernel {
        failing: vec![key("10.96.0.1", 443)],
        ..SimulatedKernel::default()
    };
    let mut l = new_loop(kernel);
    let (tx, rx) = mpsc::channel(8);
    for event in kipvs_kube::source::replay(example()) {
        tx.send(event).await.unwrap();
    }
    assert_eq!(
        l.run(rx, Mode::Once).await,
        Outcome::Once { success: false }
    );
    assert!(l
        .shared
        .metrics
        .render()
        .contains("kipvs_sync_errors_total 1"));
}

fn with_scheduler(
    mut svc: k8s_openapi::api::core::v1::Service,
    scheduler: &str,
) -> Box<k8s_openapi::api::core::v1::Service> {
    svc.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("ipvs.kipvs.io/scheduler".into(), scheduler.into());
    Box::new(svc)
}

#[tokio::test(start_paused = true)]
async fn changes_within_min_sync_period_after_a_sync_coalesce_into_one_incremental_plan() {
    let mut l = new_loop(SimulatedKernel::default());
    let (tx, mut rx) = mpsc::channel(8);
    feed_example(&mut l);
    run_for(&mut l, &mut rx, Duration::from_secs(5)).await;
    let web = example().services.remove(1); // shop/web

    // After a quiet spell a change is synced at once...
    let before = l.kernel().plans.len();
    tx.send(ClusterEvent::ServiceApplied(with_scheduler(
        web.clone(),
        "lc",
    )))
    .await
    .unwrap();
    run_for(&mut l, &mut rx, Duration::from_millis(100)).await;
    assert_eq!(l.kernel().plans.len(), before + 1);

    // ...and the next ones, within minSyncPeriod of that sync, wait and go together.
    tx.send(ClusterEvent::ServiceApplied(with_scheduler(
        web.clone(),
        "sh",
    )))
    .await
    .unwrap();
    tx.send(ClusterEvent::ServiceApplied(with_scheduler(web, "wrr")))
        .await
        .unwrap();
    run_for(&mut l, &mut rx, Duration::from_millis(500)).await;
    assert_eq!(
        l.kernel().plans.len(),
        before + 1,
        "synced before minSyncPeriod passed"
    );
    run_for(&mut l, &mut rx, Duration::from_secs(1)).await;
    let plans = &l.kernel().plans[before + 1..];
    assert_eq!(plans.len(), 1, "two changes, one plan");
    // web's ClusterIP and NodePort services change scheduler in place; nothing else moves.
    assert_eq!(plans[0].ipvs.len(), 2, "{:?}", plans[0].ipvs);
    let web = l
        .kernel()
        .state
        .table
        .services
        .iter()
        .find(|s| s.service.key == key("10.96.10.20", 80))
        .unwrap();
    assert_eq!(web.service.scheduler.name(), "wrr");
}

#[tokio::test(start_paused = true)]
async fn drift_is_repaired_at_the_next_verify() {
    let mut l = new_loop(SimulatedKernel::default());
    let (_tx, mut rx) = mpsc::channel(8);
    feed_example(&mut l);
    run_for(&mut l, &mut rx, Duration::from_secs(2)).await;
    let gone = key("10.96.0.1", 443);
    l.kernel
        .state
        .table
        .services
        .retain(|s| s.service.key != gone);
    l.kernel
        .state
        .addresses
        .remove(&"10.96.0.1".parse().unwrap());
    run_for(&mut l, &mut rx, Duration::from_secs(20)).await;
    assert!(
        !has_service(&l, &gone),
        "repaired before the verify was due"
    );
    run_for(&mut l, &mut rx, Duration::from_secs(15)).await;
    assert!(has_service(&l, &gone), "not repaired by the verify");
    assert!(l
        .kernel()
        .state
        .addresses
        .contains(&"10.96.0.1".parse().unwrap()));
}

#[tokio::test(start_paused = true)]
async fn a_failed_operation_is_retried_with_backoff_until_it_succeeds() {
    let kernel = SimulatedKernel {
        failing: vec![key("10.96.0.1", 443)],
        ..SimulatedKernel::default()
    };
    let mut l = new_loop(kernel);
    let (_tx, mut rx) = mpsc::channel(8);
    feed_example(&mut l);
    run_for(&mut l, &mut rx, Duration::from_secs(1)).await;
    assert_eq!(l.kernel().plans.len(), 1);
    // Retries at +2 s, +4 s, +8 s: three more attempts by 15 s.
    run_for(&mut l, &mut rx, Duration::from_secs(15)).await;
    assert_eq!(l.kernel().plans.len(), 4, "retries at 2, 4 and 8 s");
    assert!(!has_service(&l, &key("10.96.0.1", 443)));
    assert!(has_service(&l, &key("10.96.0.10", 53)) || l.kernel().state.table.services.len() == 4);
    l.kernel.failing.clear();
    run_for(&mut l, &mut rx, Duration::from_secs(16)).await;
    assert!(
        has_service(&l, &key("10.96.0.1", 443)),
        "the retry did not repair it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_degraded_source_leaves_the_kernel_alone() {
    let mut l = new_loop(SimulatedKernel::default());
    let (tx, mut rx) = mpsc::channel(8);
    feed_example(&mut l);
    run_for(&mut l, &mut rx, Duration::from_secs(2)).await;
    let before = l.kernel().state.clone();
    tx.send(ClusterEvent::Degraded("API server unreachable".into()))
        .await
        .unwrap();
    run_for(&mut l, &mut rx, Duration::from_secs(120)).await;
    assert_eq!(l.kernel().state.table, before.table);
    assert_eq!(l.kernel().state.addresses, before.addresses);
}

#[tokio::test(start_paused = true)]
async fn health_turns_unhealthy_when_a_sync_fails_as_a_whole_and_back_when_applied() {
    let kernel = SimulatedKernel {
        failing_iptables: true,
        ..SimulatedKernel::default()
    };
    let mut l = new_loop(kernel);
    let (_tx, mut rx) = mpsc::channel(8);
    feed_example(&mut l);
    // tokio's clock is paused but health uses the wall clock: look at the pending mark.
    run_for(&mut l, &mut rx, Duration::from_secs(1)).await;
    assert!(
        l.pending_since.is_some(),
        "a failed sync leaves the changes pending"
    );
    assert!(l.shared.with_health(|h| h.last_updated().is_none()));
    // Counted as kube-proxy counts its failed iptables-restore runs, per family.
    let failures = |metrics: &str, family: &str| -> u64 {
        let prefix = format!(
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total{{ip_family=\"{family}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let metrics = l.shared.metrics.render();
    assert!(failures(&metrics, "IPv4") >= 1, "{metrics}");
    l.kernel.failing_iptables = false;
    run_for(&mut l, &mut rx, Duration::from_secs(3)).await;
    assert!(l.pending_since.is_none());
    assert!(l.shared.with_health(|h| h.last_updated().is_some()));
    let metrics = l.shared.metrics.render();
    assert!(
        !metrics.contains("kubeproxy_network_programming_duration_seconds_count"),
        "no slice carries a trigger time: {metrics}"
    );
    // A rules write that succeeds counts no failure.
    let before = failures(&metrics, "IPv4");
    run_for(&mut l, &mut rx, Duration::from_secs(60)).await;
    assert_eq!(failures(&l.shared.metrics.render(), "IPv4"), before);
}

/// Records what the loop hands to its warning sink.
#[derive(Default, Clone)]
struct Recorded(Arc<std::sync::Mutex<Vec<String>>>);

impl WarningSink for Recorded {
    fn warn(&self, service: &kipvs_proxy::ServiceName, warning: &kipvs_proxy::Warning) {
        self.0
            .lock()
            .unwrap()
            .push(format!("warn {service} {}", warning.reason.as_str()));
    }

    fn clear(&self, service: &kipvs_proxy::ServiceName) {
        self.0.lock().unwrap().push(format!("clear {service}"));
    }

    fn failed(&self, service: &kipvs_proxy::ServiceName, message: &str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("failed {service} {message}"));
    }
}

#[tokio::test(start_paused = true)]
async fn one_object_the_kernel_refuses_is_retried_counted_and_reported_but_keeps_the_node_healthy()
{
    let recorded = Recorded::default();
    let kernel = SimulatedKernel {
        failing: vec![key("10.96.0.1", 443)],
        ..SimulatedKernel::default()
    };
    let mut l = new_loop(kernel).with_warning_sink(Box::new(recorded.clone()));
    let (_tx, mut rx) = mpsc::channel(8);
    feed_example(&mut l);
    // Far longer than the health timeout (2 x syncPeriod = 60 s).
    run_for(&mut l, &mut rx, Duration::from_secs(200)).await;
    assert!(
        l.pending_since.is_none(),
        "the changes were applied as far as the kernel takes them"
    );
    assert!(l.shared.with_health(|h| h.last_updated().is_some()));
    assert!(
        l.kernel().plans.len() >= 6,
        "not retried: {} plans",
        l.kernel().plans.len()
    );
    assert!(
        has_service(&l, &key("10.96.10.20", 80)),
        "others still served"
    );
    let metrics = l.shared.metrics.render();
    assert!(
        metrics.contains("kipvs_kernel_operations_total{kind=\"add_service\",result=\"invalid\"}"),
        "{metrics}"
    );
    let reports: Vec<String> = recorded
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.starts_with("failed"))
        .cloned()
        .collect();
    assert!(!reports.is_empty());
    assert!(
        reports.iter().all(
            |r| r.starts_with("failed default/kubernetes the kernel refused add_")
                && r.contains(" for default/kubernetes:https: simulated failure")
        ),
        "{reports:?}"
    );
}

#[test]
fn warnings_go_to_the_sink_and_are_cleared_when_fixed_or_deleted() {
    let recorded = Recorded::default();
    let mut l = new_loop(SimulatedKernel::default()).with_warning_sink(Box::new(recorded.clone()));
    let web = example()
        .services
        .into_iter()
        .find(|s| s.metadata.name.as_deref() == Some("web"))
        .unwrap();
    let bad = {
        let mut bad = web.clone();
        bad.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("ipvs.kipvs.io/scheduler".into(), "fastest".into());
        bad
    };
    let take = || std::mem::take(&mut *recorded.0.lock().unwrap());
    l.handle(ClusterEvent::ServiceApplied(Box::new(bad.clone())));
    assert_eq!(take(), ["warn shop/web InvalidAnnotation"]);
    l.handle(ClusterEvent::ServiceApplied(Box::new(web)));
    assert_eq!(take(), ["clear shop/web"]);
    l.handle(ClusterEvent::ServiceApplied(Box::new(bad)));
    assert_eq!(take(), ["warn shop/web InvalidAnnotation"]);
    l.handle(ClusterEvent::ServiceDeleted(
        kipvs_kube::source::ObjectKey {
            namespace: "shop".into(),
            name: "web".into(),
        },
    ));
    assert_eq!(take(), ["clear shop/web"]);
}

#[tokio::test(start_paused = true)]
async fn the_owners_file_follows_services_and_is_rewritten_only_when_they_change() {
    let dir = std::env::temp_dir().join(format!("kipvs-loop-owners-{}", std::process::id()));
    let path = dir.join("owners.json");
    let recorder = crate::owners::Recorder::new(path.clone(), "node-a");
    let mut l = new_loop(SimulatedKernel::default()).with_owners_recorder(recorder);
    let (tx, mut rx) = mpsc::channel(8);
    feed_example(&mut l);
    run_for(&mut l, &mut rx, Duration::from_secs(5)).await;
    let owners = crate::owners::Owners::load(&path).unwrap();
    assert_eq!(owners.len(), 5);
    assert_eq!(
        owners.get(&key("10.96.0.1", 443)),
        Some("default/kubernetes:https")
    );
    assert_eq!(owners.get(&key("10.96.10.20", 80)), Some("shop/web:http"));

    // An endpoint change leaves the file alone (same inode, not rewritten)...
    let stamp = |p: &std::path::Path| std::fs::metadata(p).unwrap().modified().unwrap();
    std::fs::write(&path, "sentinel").unwrap();
    let before = stamp(&path);
    let slice = kipvs_kube::source::ObjectKey {
        namespace: "shop".into(),
        name: "web-abc12".into(),
    };
    tx.send(ClusterEvent::SliceDeleted(slice)).await.unwrap();
    run_for(&mut l, &mut rx, Duration::from_secs(2)).await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "sentinel");
    assert_eq!(stamp(&path), before);

    // ...a Service going away rewrites it.
    let web = kipvs_kube::source::ObjectKey {
        namespace: "shop".into(),
        name: "web".into(),
    };
    tx.send(ClusterEvent::ServiceDeleted(web)).await.unwrap();
    run_for(&mut l, &mut rx, Duration::from_secs(2)).await;
    let owners = crate::owners::Owners::load(&path).unwrap();
    assert_eq!(owners.get(&key("10.96.10.20", 80)), None);
    assert_eq!(
        owners.get(&key("10.96.0.1", 443)),
        Some("default/kubernetes:https")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(start_paused = true)]
async fn services_whose_local_policy_falls_back_are_counted_as_kube_proxy_counts_them() {
    let state = state_file::parse(
        "apiVersion: v1
kind: Service
metadata: {name: ingress, namespace: edge}
spec:
  type: LoadBalancer
  clusterIP: 10.96.20.1
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  ports: [{name: http, port: 80, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 198.51.100.7}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ingress-1, namespace: edge, labels: {kubernetes.io/service-name: ingress}}
addressType: IPv4
endpoints: [{addresses: [10.244.2.5], nodeName: node-b, conditions: {ready: true}}]
ports: [{name: http, port: 8080}]
",
        "inline.yaml",
    )
    .unwrap();
    let mut l = new_loop(SimulatedKernel::default());
    let (_tx, mut rx) = mpsc::channel(8);
    for event in kipvs_kube::source::replay(state) {
        l.handle(event);
    }
    run_for(&mut l, &mut rx, Duration::from_secs(1)).await;
    // The LoadBalancer IP serves the remote endpoint, as kube-proxy's ipvs mode does.
    let lb = l
        .kernel()
        .state
        .table
        .services
        .iter()
        .find(|s| s.service.key == key("198.51.100.7", 80))
        .unwrap();
    assert_eq!(lb.destinations.len(), 1);
    let metrics = l.shared.metrics.render();
    for line in [
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\",ip_family=\"IPv4\"} 1",
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"internal\",ip_family=\"IPv4\"} 0",
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\",ip_family=\"IPv6\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

#[test]
fn the_node_object_decides_the_cores_configuration_when_it_arrives() {
    let mut l = new_loop(SimulatedKernel::default()).with_node_config(Box::new(|info| {
        Ok(Config {
            node_port_addresses: info.addresses.iter().map(|a| (*a).into()).collect(),
            ..Config::default()
        })
    }));
    assert!(l.proxier().config().node_port_addresses.is_empty());
    let node = example().nodes.remove(0);
    l.handle(ClusterEvent::NodeApplied(Box::new(node)));
    let nets: Vec<String> = l
        .proxier()
        .config()
        .node_port_addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["192.168.1.10/32"]);
}

/// The example's slice `name` with the trigger-time annotation `time`.
fn slice_triggered_at(name: &str, time: SystemTime, endpoint: &str) -> ClusterEvent {
    let mut slice = example()
        .endpoint_slices
        .into_iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .unwrap();
    let stamp = k8s_openapi::jiff::Timestamp::try_from(time).unwrap();
    slice.metadata.annotations = Some(
        [(
            kipvs_kube::convert::LAST_CHANGE_TRIGGER_TIME.to_owned(),
            stamp.to_string(),
        )]
        .into(),
    );
    slice.endpoints.as_mut().unwrap()[0].addresses = vec![endpoint.to_owned()];
    ClusterEvent::SliceApplied(Box::new(slice))
}

fn programming(l: &SyncLoop<SimulatedKernel>) -> (u64, f64) {
    let metrics = l.shared.metrics.render();
    let value = |name: &str| -> Option<String> {
        let prefix =
            format!("kubeproxy_network_programming_duration_seconds_{name}{{ip_family=\"IPv4\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(str::to_owned)
    };
    (
        value("count").map_or(0, |v| v.parse().unwrap()),
        value("sum").map_or(0.0, |v| v.parse().unwrap()),
    )
}

#[tokio::test(start_paused = true)]
async fn network_programming_is_measured_from_each_slices_trigger_time_as_kube_proxy_does() {
    let mut l = new_loop(SimulatedKernel::default());
    // As if the loop had started a minute ago.
    l.started -= Duration::from_secs(60);
    let (_tx, mut rx) = mpsc::channel(8);
    feed_example(&mut l);
    run_for(&mut l, &mut rx, Duration::from_secs(2)).await;
    assert_eq!(programming(&l).0, 0, "no annotation, no sample");
    let slice = example().endpoint_slices[0].metadata.name.clone().unwrap();
    // Triggered 3 s ago (the controller's clock), programmed now: one sample of about 3 s.
    let three_s_ago = SystemTime::now() - Duration::from_secs(3);
    l.handle(slice_triggered_at(&slice, three_s_ago, "10.244.1.77"));
    run_for(&mut l, &mut rx, Duration::from_secs(2)).await;
    let (count, sum) = programming(&l);
    assert_eq!(count, 1);
    assert!((3.0..60.0).contains(&sum), "{sum}");
    // A trigger from before the proxy started is not measured; nor is an unchanged slice.
    l.handle(slice_triggered_at(
        &slice,
        l.started - Duration::from_secs(1),
        "10.244.1.78",
    ));
    l.handle(slice_triggered_at(
        &slice,
        l.started - Duration::from_secs(1),
        "10.244.1.78",
    ));
    run_for(&mut l, &mut rx, Duration::from_secs(2)).await;
    assert_eq!(programming(&l).0, 1);
    // A deleted slice drops its Service's pending times, as kube-proxy does.
    l.handle(slice_triggered_at(&slice, SystemTime::now(), "10.244.1.79"));
    let gone = example().endpoint_slices[0].metadata.clone();
    l.handle(ClusterEvent::SliceDeleted(kipvs_kube::source::ObjectKey {
        namespace: gone.namespace.unwrap_or_default(),
        name: gone.name.unwrap_or_default(),
    }));
    run_for(&mut l, &mut rx, Duration::from_secs(2)).await;
    assert_eq!(programming(&l).0, 1);
}

fn udp_flow(client_port: u16, dst: &str, reply: &str) -> kipvs_proxy::Flow {
    let client: std::net::SocketAddr = format!("10.0.0.1:{client_port}").parse().unwrap();
    kipvs_proxy::Flow {
        protocol: Some(Protocol::Udp),
        orig_src: client,
        orig_dst: dst.parse().unwrap(),
        reply_src: reply.parse().unwrap(),
        reply_dst: client,
        zone: 0,
    }
}

/// `kubeproxy_conntrack_reconciler_*` for IPv4: (passes, deleted entries), `None` when
/// the series do not exist.
fn reconciler(l: &SyncLoop<SimulatedKernel>) -> Option<(u64, u64)> {
    let metrics = l.shared.metrics.render();
    let value = |series: &str| -> Option<u64> {
        let prefix = format!("kubeproxy_conntrack_reconciler_{series}{{ip_family=\"IPv4\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(|v| v.parse().unwrap())
    };
    Some((
        value("sync_duration_seconds_count")?,
        value("deleted_entries_total")?,
    ))
}

#[tokio::test(start_paused = true)]
async fn stale_udp_conntrack_entries_go_after_a_udp_endpoint_change_and_a_failure_is_retried() {
    // kube-dns (10.96.0.10:53 UDP): 10.244.1.2 ready, 10.244.2.3 serving-terminating.
    let live = udp_flow(40001, "10.96.0.10:53", "10.244.1.2:53");
    let terminating = udp_flow(40002, "10.96.0.10:53", "10.244.2.3:53");
    let gone = udp_flow(40003, "10.96.0.10:53", "10.244.9.9:53");
    let foreign = udp_flow(40004, "10.0.0.99:5353", "10.0.0.99:5353");
    let kernel = SimulatedKernel {
        conntrack: vec![live, terminating, gone, foreign],
        ..SimulatedKernel::default()
    };
    let mut l = new_loop(kernel);
    let (_tx, mut rx) = mpsc::channel(8);
    assert_eq!(reconciler(&l), None, "no series before the first pass");
    // The first listing is a UDP endpoint change, as in kube-proxy.
    feed_example(&mut l);
    run_for(&mut l, &mut rx, Duration::from_secs(2)).await;
    assert_eq!(l.kernel().conntrack, vec![live, terminating, foreign]);
    assert_eq!(reconciler(&l), Some((1, 1)));
    // Nothing UDP changed: no pass at the next verify.
    run_for(&mut l, &mut rx, Duration::from_secs(31)).await;
    assert_eq!(reconciler(&l), Some((1, 1)));

    // The table cannot be read: nothing booked (as kube-proxy), the family stays due and
    // the pass is retried with the sync's backoff.
    l.kernel.failing_conntrack = true;
    l.kernel.conntrack.push(gone);
    // 10.244.1.2 makes way for 10.244.1.7.
    l.handle(slice_triggered_at(
        "kube-dns-x1",
        SystemTime::now(),
        "10.244.1.7",
    ));
    run_for(&mut l, &mut rx, Duration::from_secs(2)).await;
    assert_eq!(reconciler(&l), Some((1, 1)));
    assert!(l.kernel().conntrack.contains(&gone));
    let metrics = l.shared.metrics.render();
    assert!(
        metrics.contains(
            "kipvs_kernel_operations_total{kind=\"conntrack_reconcile\",result=\"error\"} "
        ),
        "{metrics}"
    );
    l.kernel.failing_conntrack = false;
    run_for(&mut l, &mut rx, Duration::from_secs(5)).await;
    assert_eq!(reconciler(&l), Some((2, 3)));
    assert_eq!(l.kernel().conntrack, vec![terminating, foreign]);
    assert!(l.proxier.conntrack_due().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_node_whose_primary_family_cannot_run_here_stops_the_loop_with_the_reason() {
    let mut l = new_loop(SimulatedKernel::default()).with_node_config(Box::new(|_| {
        Err("no support for primary IP family \"IPv6\"".to_owned())
    }));
    let (tx, rx) = mpsc::channel(8);
    for event in kipvs_kube::source::replay(example()) {
        tx.send(event).await.unwrap();
    }
    assert_eq!(
        l.run(rx, Mode::Continuous).await,
        Outcome::Fatal("no support for primary IP family \"IPv6\"".to_owned())
    );
    assert!(
        l.kernel().plans.is_empty(),
        "planned for a node it cannot serve"
    );
}

#[tokio::test(start_paused = true)]
async fn an_ipv4_only_node_reports_health_and_metrics_for_ipv4_alone() {
    let node = Node::new("node-a").with_addresses(["192.168.1.10".parse().unwrap()]);
    let config = Config {
        families: vec![kipvs_ipvs::Family::V4],
        ..Config::default()
    };
    let mut l = SyncLoop::new(
        Proxier::new(config, node),
        "node-a",
        SimulatedKernel::default(),
        Shared::new(ProxyHealth::new(TIMING.sync_period * 2)),
        TIMING,
    );
    let (tx, rx) = mpsc::channel(8);
    for event in kipvs_kube::source::replay(example()) {
        tx.send(event).await.unwrap();
    }
    assert_eq!(l.run(rx, Mode::Once).await, Outcome::Once { success: true });
    let plan = &l.kernel().plans[0];
    let inputs = plan.iptables.as_ref().expect("the rules");
    assert!(inputs
        .families
        .iter()
        .all(|f| f.family == kipvs_ipvs::Family::V4));
    let metrics = l.shared.metrics.render();
    assert!(
        metrics.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains("ip_family=\"IPv6\""), "{metrics}");
    let health = l.shared.with_health(|h| h.healthz(SystemTime::now()).body);
    assert!(health.contains("\"IPv4\""), "{health}");
    assert!(!health.contains("IPv6"), "{health}");
}
