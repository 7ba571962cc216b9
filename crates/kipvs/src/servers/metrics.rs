//! The metrics kipvs exports: kube-proxy's (prefix `kubeproxy_`, so dashboards and alerts
//! keep working after the switch) and kipvs' own (prefix `kipvs_`).

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use kipvs_ipvs::Family as IpFamily;

use super::ip_family;

/// kube-proxy's `ip_family` label (`IPv4` / `IPv6`), on every series kube-proxy keeps per
/// address family. kipvs syncs both families in one pass: a pass is booked under each
/// family it programs, as kube-proxy's two per-family proxiers each book theirs.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabels {
    /// `IPv4` or `IPv6`.
    pub ip_family: String,
}

impl FamilyLabels {
    /// The label of `family`.
    pub fn of(family: IpFamily) -> Self {
        FamilyLabels {
            ip_family: ip_family(family).to_owned(),
        }
    }
}

/// A histogram per address family.
pub type FamilyHistogram = Family<FamilyLabels, Histogram, fn() -> Histogram>;

/// Label of a kernel operation: what it did and how it ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `add_service`, `update_destination`, `bind_address`, ...
    pub kind: String,
    /// `ok` or the error class (`exists`, `not_found`, `invalid`, `other`).
    pub result: String,
}

/// Labels of traffic-policy counters: the policy (`internal` / `external`) and the
/// address family.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficPolicyLabels {
    /// `internal` or `external`.
    pub traffic_policy: String,
    /// `IPv4` or `IPv6`.
    pub ip_family: String,
}

/// Label of the health endpoints' answer counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    /// HTTP status code.
    pub code: String,
}

/// Every metric kipvs exports, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Duration of each sync (full or partial), seconds, by family.
    pub sync_duration: FamilyHistogram,
    /// Duration of full (verify) syncs, seconds, by family.
    pub sync_full_duration: FamilyHistogram,
    /// Duration of partial (incremental) syncs, seconds, by family.
    pub sync_partial_duration: FamilyHistogram,
    /// When the last sync finished, Unix seconds, by family.
    pub last_sync_timestamp: Family<FamilyLabels, Gauge<f64, AtomicU64>>,
    /// When the last change was queued, Unix seconds, by family.
    pub last_queued_timestamp: Family<FamilyLabels, Gauge<f64, AtomicU64>>,
    /// From a change in the cluster to the kernel reflecting it, seconds, by family.
    pub network_programming_duration: FamilyHistogram,
    /// Service changes seen.
    pub service_changes: Counter,
    /// Service changes not yet applied.
    pub service_changes_pending: Gauge,
    /// EndpointSlice changes seen.
    pub endpoint_changes: Counter,
    /// EndpointSlice changes not yet applied.
    pub endpoint_changes_pending: Gauge,
    /// `iptables-restore` runs that failed, by family (kube-proxy's
    /// `sync_proxy_rules_iptables_restore_failures_total`).
    pub iptables_restore_failures: Family<FamilyLabels, Counter>,
    /// Duration of each pass of kube-proxy's conntrack reconciler, seconds, by family
    /// (`conntrack_reconciler_sync_duration_seconds`).
    pub conntrack_reconciler_duration: FamilyHistogram,
    /// Stale UDP conntrack entries the reconciler deleted, by family
    /// (`conntrack_reconciler_deleted_entries_total`).
    pub conntrack_reconciler_deleted: Family<FamilyLabels, Counter>,
    /// Services with a Local policy and no local endpoint, by policy and family.
    pub no_local_endpoints: Family<TrafficPolicyLabels, Gauge>,
    /// `/healthz` answers by code.
    pub healthz_total: Family<CodeLabels, Counter>,
    /// `/livez` answers by code.
    pub livez_total: Family<CodeLabels, Counter>,
    /// Kernel operations carried out, by kind and result.
    pub kernel_operations: Family<OperationLabels, Counter>,
    /// Operations per Plan.
    pub plan_operations: Histogram,
    /// Destinations draining at weight 0.
    pub graceful_termination_queue: Gauge,
    /// Syncs that did not complete every operation.
    pub sync_errors: Counter,
}

/// kube-proxy's network-programming buckets: 0.25 s and 0.5 s, each second to 59 s,
/// every 5 s to 115 s, every 30 s to 300 s.
fn programming_buckets() -> Vec<f64> {
    let mut buckets = vec![0.25, 0.5];
    buckets.extend((1..=59).map(f64::from));
    buckets.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    buckets.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    buckets
}

fn seconds_buckets() -> Histogram {
    // kube-proxy's: 1 ms doubling to ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn programming_histogram() -> Histogram {
    Histogram::new(programming_buckets())
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            sync_duration: Family::new_with_constructor(seconds_buckets),
            sync_full_duration: Family::new_with_constructor(seconds_buckets),
            sync_partial_duration: Family::new_with_constructor(seconds_buckets),
            last_sync_timestamp: Family::default(),
            last_queued_timestamp: Family::default(),
            network_programming_duration: Family::new_with_constructor(programming_histogram),
            service_changes: Counter::default(),
            service_changes_pending: Gauge::default(),
            endpoint_changes: Counter::default(),
            endpoint_changes_pending: Gauge::default(),
            iptables_restore_failures: Family::default(),
            conntrack_reconciler_duration: Family::new_with_constructor(seconds_buckets),
            conntrack_reconciler_deleted: Family::default(),
            no_local_endpoints: Family::default(),
            healthz_total: Family::default(),
            livez_total: Family::default(),
            kernel_operations: Family::default(),
            plan_operations: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            graceful_termination_queue: Gauge::default(),
            sync_errors: Counter::default(),
        };
        let mut registry = Registry::default();
        let kp = registry.sub_registry_with_prefix("kubeproxy");
        kp.register(
            "sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync_duration.clone(),
        );
        kp.register(
            "sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            m.sync_full_duration.clone(),
        );
        kp.register(
            "sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.sync_partial_duration.clone(),
        );
        kp.register(
            "sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_sync_timestamp.clone(),
        );
        kp.register(
            "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            m.last_queued_timestamp.clone(),
        );
        kp.register(
            "network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.network_programming_duration.clone(),
        );
        kp.register(
            "sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            m.service_changes.clone(),
        );
        kp.register(
            "sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            m.service_changes_pending.clone(),
        );
        kp.register(
            "sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            m.endpoint_changes.clone(),
        );
        kp.register(
            "sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            m.endpoint_changes_pending.clone(),
        );
        kp.register(
            "sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            m.no_local_endpoints.clone(),
        );
        kp.register(
            "sync_proxy_rules_iptables_restore_failures",
            "Cumulative proxy iptables restore failures",
            m.iptables_restore_failures.clone(),
        );
        kp.register(
            "conntrack_reconciler_sync_duration_seconds",
            "ReconcileConntrackFlowsLatency latency in seconds",
            m.conntrack_reconciler_duration.clone(),
        );
        kp.register(
            "conntrack_reconciler_deleted_entries",
            "Cumulative conntrack flows deleted by conntrack reconciler",
            m.conntrack_reconciler_deleted.clone(),
        );
        kp.register(
            "proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            m.healthz_total.clone(),
        );
        kp.register(
            "proxy_livez",
            "Cumulative proxy livez HTTP status",
            m.livez_total.clone(),
        );
        let own = registry.sub_registry_with_prefix("kipvs");
        own.register(
            "kernel_operations",
            "Kernel operations carried out, by kind and result",
            m.kernel_operations.clone(),
        );
        own.register(
            "plan_operations",
            "Kernel operations per Plan",
            m.plan_operations.clone(),
        );
        own.register(
            "graceful_termination_queue",
            "Destinations draining at weight 0",
            m.graceful_termination_queue.clone(),
        );
        own.register(
            "sync_errors",
            "Syncs in which some kernel operation failed",
            m.sync_errors.clone(),
        );
        // kube-proxy's process_* metrics (Prometheus' process collector), unprefixed.
        registry.register_collector(Box::new(super::process::ProcessCollector));
        m.registry = registry;
        m
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The answer to a scrape whose `Accept` header is `accept`: its content type and
    /// body. Prometheus' text format 0.0.4, as kube-proxy's handler answers, unless the
    /// scraper prefers OpenMetrics.
    pub fn render_for(&self, accept: &str) -> (&'static str, String) {
        let open = self.render();
        if wants_openmetrics(accept) {
            (OPENMETRICS_CONTENT_TYPE, open)
        } else {
            (TEXT_CONTENT_TYPE, prometheus_text(&open))
        }
    }
}

/// The content type of Prometheus' text format as kube-proxy 1.37's handler (Prometheus'
/// Go client, which escapes metric names with underscores) writes it.
pub const TEXT_CONTENT_TYPE: &str =
    "text/plain; version=0.0.4; charset=utf-8; escaping=underscores";

/// The content type of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an `Accept` header prefers OpenMetrics: it lists
/// `application/openmetrics-text` with a quality above 0 and at least as high as any
/// range that admits Prometheus' text format (`text/plain`, `text/*`, `*/*`). Prometheus
/// itself asks for OpenMetrics first; curl asks for nothing and gets text.
pub fn wants_openmetrics(accept: &str) -> bool {
    let mut openmetrics: f64 = 0.0;
    let mut text: f64 = 0.0;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let quality = parts
            .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f64>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
            "text/plain" | "text/*" | "*/*" => text = text.max(quality),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= text
}

/// OpenMetrics text (as `prometheus_client` writes it) in Prometheus' text format 0.0.4:
/// a counter's `# HELP` and `# TYPE` name its `_total` series, `unknown` is `untyped`,
/// and the `# UNIT` and `# EOF` lines go. Samples are written alike in both.
pub fn prometheus_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "]
            .into_iter()
            .find(|p| line.starts_with(p));
        match comment {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) && !name.ends_with("_total") {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(if prefix == "# TYPE " && tail == "unknown" {
                    "untyped"
                } else {
                    tail
                });
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_metric_names_are_exported_with_its_labels() {
        let m = Metrics::new();
        let v4 = FamilyLabels::of(IpFamily::V4);
        m.service_changes.inc();
        m.sync_duration.get_or_create(&v4).observe(0.01);
        m.conntrack_reconciler_duration
            .get_or_create(&v4)
            .observe(0.003);
        m.conntrack_reconciler_deleted.get_or_create(&v4).inc_by(0);
        m.last_sync_timestamp.get_or_create(&v4).set(1.5);
        m.no_local_endpoints
            .get_or_create(&TrafficPolicyLabels {
                traffic_policy: "external".into(),
                ip_family: "IPv6".into(),
            })
            .set(2);
        let text = m.render();
        for name in [
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.001\",ip_family=\"IPv4\"} 0",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} 1.5",
            "kubeproxy_sync_proxy_rules_service_changes_total 1",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 0",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\",ip_family=\"IPv6\"} 2",
            "kubeproxy_conntrack_reconciler_sync_duration_seconds_bucket{le=\"0.004\",ip_family=\"IPv4\"} 1",
            "kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family=\"IPv4\"} 1",
            "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv4\"} 0",
            "kipvs_graceful_termination_queue 0",
            "kipvs_sync_errors_total 0",
            "process_cpu_seconds_total ",
            "process_open_fds ",
            "process_start_time_seconds ",
            "process_network_receive_bytes_total ",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        // As kube-proxy's vectors: no series before the first value.
        for name in [
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{",
            "kubeproxy_network_programming_duration_seconds_bucket{",
            "kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family=\"IPv6\"}",
        ] {
            assert!(!text.contains(name), "{name} in:\n{text}");
        }
    }

    #[test]
    fn scrapers_get_prometheus_text_unless_they_prefer_openmetrics() {
        // Prometheus' own Accept header, then curl's, a plain text one and text preferred.
        assert!(wants_openmetrics(
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        ));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics(""));
        assert!(!wants_openmetrics("text/plain;version=0.0.4"));
        assert!(!wants_openmetrics(
            "text/plain;q=0.9, application/openmetrics-text;q=0.5"
        ));
        assert!(!wants_openmetrics("application/openmetrics-text;q=0"));

        let m = Metrics::new();
        m.service_changes.inc();
        m.sync_duration
            .get_or_create(&FamilyLabels::of(IpFamily::V4))
            .observe(0.01);
        let (content_type, text) = m.render_for("*/*");
        assert_eq!(content_type, TEXT_CONTENT_TYPE);
        assert!(!text.contains("# EOF"), "{text}");
        for line in [
            "# TYPE kubeproxy_sync_proxy_rules_service_changes_total counter",
            "kubeproxy_sync_proxy_rules_service_changes_total 1",
            "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram",
            "# TYPE process_cpu_seconds_total counter",
            "# TYPE process_open_fds gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        let (content_type, open) = m.render_for("application/openmetrics-text");
        assert_eq!(content_type, OPENMETRICS_CONTENT_TYPE);
        assert!(open.ends_with("# EOF\n"), "{open}");
        // The samples are the same in both formats.
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#') && !l.starts_with("process_"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(samples(&text), samples(&open));
    }

    #[test]
    fn kernel_operations_are_counted_by_kind_and_result() {
        let m = Metrics::new();
        m.kernel_operations
            .get_or_create(&OperationLabels {
                kind: "add_service".into(),
                result: "ok".into(),
            })
            .inc_by(3);
        assert!(m
            .render()
            .contains("kipvs_kernel_operations_total{kind=\"add_service\",result=\"ok\"} 3"));
    }
}
