//! The sync loop: cluster events in, Plans out.
//!
//! - Events are fed to the core at once; a sync follows no sooner than `min_sync_period`
//!   after the previous one, so bursts coalesce into one Plan, and that Plan is
//!   incremental (only the Services that changed).
//! - A verify (read the kernel back, whole-cluster pass, repair drift) runs at start,
//!   every `sync_period`, when a draining destination's check is due, and after any
//!   failed operation (first after `retry`, doubling up to `sync_period`).
//! - Nothing is planned before the first full listing of Services and EndpointSlices,
//!   and start-up is a verify: kipvs adopts the kernel's state without flushing it.
//! - A degraded source (API server gone) changes nothing: the kernel keeps its state.
//!
//! Time comes from tokio (pausable in tests) and reaches the core as a [`Moment`].

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kipvs_ipvs::Family as IpFamily;
use kipvs_kube::convert::NodeInfo;
use kipvs_kube::source::ClusterEvent;
use kipvs_proxy::{Moment, Plan, Proxier, ServiceName, Traffic};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::cluster::{Applied, ClusterView};
use super::kernel::{Kernel, OpKind, Report};
use crate::owners::Recorder;
use crate::servers::metrics::{FamilyLabels, OperationLabels, TrafficPolicyLabels};
use crate::servers::service_health::{self, HealthChecks};
use crate::servers::Shared;

/// Timing of the loop (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Verify period (`ipvs.syncPeriod`).
    pub sync_period: Duration,
    /// Coalescing window (`ipvs.minSyncPeriod`).
    pub min_sync_period: Duration,
    /// First retry delay after a failed sync; doubles up to `sync_period`.
    pub retry: Duration,
}

/// Whether to stop after the first full sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Keep running.
    Continuous,
    /// One full sync, then stop (`--once`).
    Once,
}

/// How the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The event source closed.
    SourceClosed,
    /// [`Mode::Once`]: the first full sync ran; whether every operation succeeded.
    Once {
        /// Every operation succeeded.
        success: bool,
    },
    /// This node's Node object asks for what kipvs cannot do (its primary family does
    /// not run here): kube-proxy refuses to start on such a node, and so kipvs stops.
    Fatal(String),
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Verify,
    Sync,
}

/// The loop and everything it keeps between steps.
pub struct SyncLoop<K: Kernel> {
    proxier: Proxier,
    view: ClusterView,
    kernel: K,
    shared: Arc<Shared>,
    timing: Timing,
    origin: Instant,
    /// Whether changes arrived that no Plan has covered yet (an incremental sync is due).
    dirty: bool,
    /// When the oldest change not yet confirmed in the kernel arrived (logged once it is
    /// there; a failed Plan keeps it set).
    pending_since: Option<Instant>,
    /// When the loop started: trigger times before it are not this proxy's to measure.
    started: SystemTime,
    /// The trigger times of EndpointSlice changes not yet confirmed in the kernel, by
    /// Service and family: kube-proxy's network programming latency is measured from
    /// each, at the first pass that succeeds after it.
    triggers: Vec<(ServiceName, IpFamily, SystemTime)>,
    /// When the next verify runs.
    verify_at: Instant,
    /// When the last Plan was carried out.
    last_sync: Option<Instant>,
    /// When a draining destination must be looked at again.
    check_at: Option<Instant>,
    retry: Duration,
    have_services: bool,
    have_slices: bool,
    /// Where warnings about Services go besides the log (Kubernetes Events).
    warning_sink: Option<Box<dyn WarningSink>>,
    /// Keeps the owners file up to date (not in dry runs).
    owners: Option<Recorder>,
    /// Where the healthCheckNodePort servers wanted after each pass are published.
    health_checks: Option<watch::Sender<HealthChecks>>,
    /// The core's configuration for a given Node object (the `primary` keyword of
    /// nodePortAddresses stands for the Node's addresses); applied at every Node change.
    node_config: Option<NodeConfig>,
    /// Why the loop must stop, when a Node object asked for what kipvs cannot do.
    fatal: Option<String>,
}

/// Makes the core's configuration from this node's Node object; fails, with the
/// reason, when kipvs cannot serve that node (its primary family does not run here).
pub type NodeConfig = Box<dyn Fn(&NodeInfo) -> Result<kipvs_proxy::Config, String> + Send + Sync>;

/// Receives what the loop learns about Services' problems: the daemon turns warnings
/// into Kubernetes Events on the Service.
pub trait WarningSink: Send + Sync {
    /// A warning about a Service (bad annotation, bad value); the same warning comes
    /// again at every change of the Service while it lasts.
    fn warn(&self, service: &kipvs_proxy::ServiceName, warning: &kipvs_proxy::Warning);

    /// The Service was applied without any warning, or removed: what was reported is
    /// over, and the same warning later is news again.
    fn clear(&self, service: &kipvs_proxy::ServiceName);

    /// A kernel operation for the Service failed (it is retried at every sync); the
    /// same failure comes again at every retry while it lasts.
    fn failed(&self, service: &kipvs_proxy::ServiceName, message: &str);
}

/// The Kubernetes Event reason of a kernel operation that failed for a Service.
pub const FAILED_TO_PROGRAM: &str = "FailedToProgram";

impl<K: Kernel> std::fmt::Debug for SyncLoop<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncLoop")
            .field("timing", &self.timing)
            .field("pending_since", &self.pending_since)
            .finish_non_exhaustive()
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl<K: Kernel> SyncLoop<K> {
    /// A loop for the node named `node_name`, driving `kernel`.
    pub fn new(
        proxier: Proxier,
        node_name: &str,
        kernel: K,
        shared: Arc<Shared>,
        timing: Timing,
    ) -> Self {
        let now = Instant::now();
        shared.with_health(|h| h.set_families(&proxier.config().families));
        SyncLoop {
            proxier,
            view: ClusterView::new(node_name),
            kernel,
            shared,
            timing,
            origin: now,
            dirty: false,
            pending_since: None,
            started: SystemTime::now(),
            triggers: Vec::new(),
            verify_at: now,
            last_sync: None,
            check_at: None,
            retry: timing.retry,
            have_services: false,
            have_slices: false,
            warning_sink: None,
            owners: None,
            health_checks: None,
            node_config: None,
            fatal: None,
        }
    }

    /// The same loop, also replacing the core's configuration with `config`'s answer
    /// whenever this node's Node object arrives or changes.
    pub fn with_node_config(mut self, config: NodeConfig) -> Self {
        self.node_config = Some(config);
        self
    }

    /// The same loop, also keeping the owners file `recorder` writes up to date after
    /// every pass.
    pub fn with_owners_recorder(mut self, recorder: Recorder) -> Self {
        self.owners = Some(recorder);
        self
    }

    /// The same loop, also publishing after every pass which healthCheckNodePort
    /// servers should run, with their counts of ready local endpoints.
    pub fn with_health_checks(mut self, sender: watch::Sender<HealthChecks>) -> Self {
        self.health_checks = Some(sender);
        self
    }

    /// The same loop, also handing every warning about a Service to `sink`.
    pub fn with_warning_sink(mut self, sink: Box<dyn WarningSink>) -> Self {
        self.warning_sink = Some(sink);
        self
    }

    /// The kernel, for inspection.
    pub fn kernel(&self) -> &K {
        &self.kernel
    }

    /// The core, for inspection.
    pub fn proxier(&self) -> &Proxier {
        &self.proxier
    }

    fn moment(&self, now: Instant) -> Moment {
        Moment::from_duration(now.duration_since(self.origin))
    }

    /// Whether the first full listing of Services and slices has arrived.
    pub fn is_ready(&self) -> bool {
        self.have_services && self.have_slices
    }

    /// When the next step is due.
    fn next_wake(&self) -> Instant {
        let mut wake = self.verify_at;
        if self.dirty {
            let earliest = self
                .last_sync
                .map_or(self.origin, |last| last + self.timing.min_sync_period);
            wake = wake.min(earliest);
        }
        if let Some(check) = self.check_at {
            wake = wake.min(check);
        }
        wake
    }

    /// Runs until the source closes or, with [`Mode::Once`], after the first full sync.
    pub async fn run(&mut self, mut events: mpsc::Receiver<ClusterEvent>, mode: Mode) -> Outcome {
        loop {
            let ready = self.is_ready();
            let wake = self.next_wake();
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => {
                        self.handle(event);
                        if let Some(why) = self.fatal.take() {
                            return Outcome::Fatal(why);
                        }
                    }
                    None => return Outcome::SourceClosed,
                },
                () = tokio::time::sleep_until(wake), if ready => {
                    let (pass, success) = self.step();
                    if mode == Mode::Once && pass == Pass::Verify {
                        return Outcome::Once { success };
                    }
                }
            }
        }
    }

    /// Feeds one event to the core and books it.
    pub fn handle(&mut self, event: ClusterEvent) {
        match &event {
            ClusterEvent::ServicesReset(_) => self.have_services = true,
            ClusterEvent::SlicesReset(_) => self.have_slices = true,
            _ => {}
        }
        let applied = self.view.apply(&mut self.proxier, event);
        self.book(&applied);
    }

    fn book(&mut self, applied: &Applied) {
        let metrics = &self.shared.metrics;
        for refused in &applied.refused {
            tracing::warn!(reason = %refused, "object skipped");
        }
        for (service, warning) in &applied.warnings {
            tracing::warn!(service = %service, warning = %warning, "bad value in Service; default used");
            if let Some(sink) = &self.warning_sink {
                sink.warn(service, warning);
            }
        }
        if let Some(sink) = &self.warning_sink {
            for service in &applied.cleared {
                sink.clear(service);
            }
        }
        if let Some(why) = &applied.degraded {
            tracing::warn!(reason = %why, "cluster source degraded; the kernel keeps its state");
        }
        if let Some(node) = &applied.node {
            self.shared
                .with_health(|h| h.set_node_eligible(node.eligible));
            let addresses = self.proxier.node().addresses.clone();
            self.proxier.set_node(node.to_core(addresses));
            match self.node_config.as_ref().map(|config| config(node)) {
                Some(Ok(config)) => self.proxier.set_config(config),
                Some(Err(why)) => {
                    tracing::error!(node = %node.name, reason = %why, "cannot serve this node");
                    self.fatal = Some(why);
                }
                None => {}
            }
        }
        for trigger in &applied.triggers {
            let (service, family) = (&trigger.service, trigger.family);
            match trigger.time {
                // As kube-proxy: only changes triggered after the proxy started.
                Some(time) if time > self.started => {
                    self.triggers.push((service.clone(), family, time));
                }
                Some(_) => {}
                None => self
                    .triggers
                    .retain(|(s, f, _)| s != service || *f != family),
            }
        }
        metrics.service_changes.inc_by(applied.service_changes);
        metrics.endpoint_changes.inc_by(applied.slice_changes);
        if applied.changed() {
            let now = Instant::now();
            self.dirty = true;
            self.pending_since.get_or_insert(now);
            let wall = SystemTime::now();
            self.shared.with_health(|h| h.queued(wall));
            for family in self.families() {
                metrics
                    .last_queued_timestamp
                    .get_or_create(&family)
                    .set(unix_seconds(wall));
            }
        }
    }

    /// Runs the pass that is due: a verify when one is due, else an incremental sync.
    /// Returns which it was and whether every operation succeeded.
    fn step(&mut self) -> (Pass, bool) {
        let now = Instant::now();
        let verify = now >= self.verify_at || self.check_at.is_some_and(|c| now >= c);
        let started = std::time::Instant::now();
        // Both passes cover every change fed so far.
        self.dirty = false;
        let (pass, result) = if verify {
            (Pass::Verify, self.verify(now))
        } else {
            let plan = self.proxier.sync(self.moment(now));
            (Pass::Sync, Ok(self.carry_out(&plan)))
        };
        if let Some(recorder) = &mut self.owners {
            recorder.record(&self.proxier);
        }
        if let Some(sender) = &self.health_checks {
            // Sent at every pass, changed or not: the servers retry a port that could
            // not be opened, as kube-proxy does at every sync.
            sender.send_replace(service_health::wanted(&self.proxier));
        }
        let elapsed = started.elapsed().as_secs_f64();
        let shared = Arc::clone(&self.shared);
        let metrics = &shared.metrics;
        let families = self.families();
        for family in &families {
            metrics.sync_duration.get_or_create(family).observe(elapsed);
            match pass {
                Pass::Verify => &metrics.sync_full_duration,
                Pass::Sync => &metrics.sync_partial_duration,
            }
            .get_or_create(family)
            .observe(elapsed);
        }
        metrics
            .graceful_termination_queue
            .set(i64::try_from(self.proxier.draining()).unwrap_or(i64::MAX));
        self.book_no_local_endpoints();
        self.last_sync = Some(now);
        // As kube-proxy: health follows the sync as a whole (the kernel read back, the
        // rules written); an object the kernel refuses is retried and reported, and
        // never takes the node out.
        let (synced, mut success) = match &result {
            Ok(report) => (!report.sync_failed(), report.is_success()),
            Err(why) => {
                tracing::warn!(reason = %why, "cannot read or prepare the kernel; nothing planned");
                (false, false)
            }
        };
        if let Ok(report) = &result {
            success &= self.reconcile_conntrack(&report.restore_failures);
        }
        if synced {
            if let Some(since) = self.pending_since.take() {
                let elapsed = Instant::now().duration_since(since);
                tracing::debug!(?elapsed, "changes received -> kernel updated");
            }
            let wall = SystemTime::now();
            // kube-proxy's network programming latency: from each change's trigger time
            // (the EndpointSlice controller's clock) until now, when the kernel reflects
            // it, under the slice's family.
            for (service, family, time) in self.triggers.drain(..) {
                if !self.proxier.config().families.contains(&family) {
                    continue;
                }
                let latency = wall.duration_since(time).unwrap_or_default();
                tracing::debug!(service = %service, ?latency, "network programming");
                metrics
                    .network_programming_duration
                    .get_or_create(&FamilyLabels::of(family))
                    .observe(latency.as_secs_f64());
            }
            self.shared.with_health(|h| h.updated(wall));
            for family in &families {
                metrics
                    .last_sync_timestamp
                    .get_or_create(family)
                    .set(unix_seconds(wall));
            }
        }
        if success {
            self.retry = self.timing.retry;
        } else {
            metrics.sync_errors.inc();
            // Read the kernel back and plan again, with backoff.
            self.verify_at = self.verify_at.min(now + self.retry);
            self.retry = (self.retry * 2).min(self.timing.sync_period);
        }
        (pass, success)
    }

    /// kube-proxy's conntrack reconciler, after a pass: for each family due (a UDP
    /// endpoint change reached it) whose rules were written (`unwritten` lists those
    /// whose `iptables-restore` failed: kube-proxy skips the pass there), deletes the
    /// stale UDP entries and books the pass as kube-proxy does (duration and count, 0
    /// included; nothing when the table cannot be read). A family stays due until its
    /// pass completes, so a failure is retried at the next pass. Returns whether every
    /// pass completed.
    fn reconcile_conntrack(&mut self, unwritten: &[IpFamily]) -> bool {
        let mut success = true;
        for family in self.proxier.conntrack_due() {
            if !self.proxier.config().families.contains(&family) {
                // No proxier of that family in kube-proxy: nothing to reconcile.
                self.proxier.conntrack_done(family);
                continue;
            }
            if unwritten.contains(&family) {
                continue;
            }
            let frontends = self.proxier.conntrack_frontends(family);
            let started = std::time::Instant::now();
            let result = self.kernel.reconcile_conntrack(family, &frontends);
            let took = started.elapsed().as_secs_f64();
            let metrics = &self.shared.metrics;
            let labels = FamilyLabels::of(family);
            let (deleted, outcome) = match &result {
                Ok(n) => (Some(*n), "ok"),
                Err(err) => (err.deleted, "error"),
            };
            if let Some(n) = deleted {
                metrics
                    .conntrack_reconciler_duration
                    .get_or_create(&labels)
                    .observe(took);
                metrics
                    .conntrack_reconciler_deleted
                    .get_or_create(&labels)
                    .inc_by(n);
            }
            metrics
                .kernel_operations
                .get_or_create(&OperationLabels {
                    kind: OpKind::ConntrackReconcile.as_str().to_owned(),
                    result: outcome.to_owned(),
                })
                .inc();
            match result {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(ip_family = %labels.ip_family, deleted = n, "stale UDP conntrack entries deleted");
                    }
                    self.proxier.conntrack_done(family);
                }
                Err(err) => {
                    tracing::warn!(ip_family = %labels.ip_family, error = %err, "conntrack reconciler failed; retried at the next pass");
                    success = false;
                }
            }
        }
        success
    }

    /// Sets kube-proxy's gauge of Services whose Local policy found no endpoint on this
    /// node (their virtual services fell back to every endpoint), by policy.
    fn book_no_local_endpoints(&self) {
        let desired = self.proxier.desired();
        for &family in &self.proxier.config().families {
            for traffic in [Traffic::Internal, Traffic::External] {
                let count = desired.without_local_endpoints(traffic, family);
                self.shared
                    .metrics
                    .no_local_endpoints
                    .get_or_create(&TrafficPolicyLabels {
                        traffic_policy: traffic.as_str().to_owned(),
                        ip_family: FamilyLabels::of(family).ip_family,
                    })
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
    }

    /// The `ip_family` labels of the families kipvs programs.
    fn families(&self) -> Vec<FamilyLabels> {
        self.proxier
            .config()
            .families
            .iter()
            .map(|&family| FamilyLabels::of(family))
            .collect()
    }

    fn verify(&mut self, now: Instant) -> Result<Report, String> {
        self.verify_at = now + self.timing.sync_period;
        let observed = self.kernel.observe().map_err(|e| e.to_string())?;
        if let Some(addresses) = self.kernel.node_addresses() {
            if addresses != self.proxier.node().addresses {
                let node = self.proxier.node().clone().with_addresses(addresses);
                self.proxier.set_node(node);
            }
        }
        let plan = self.proxier.verify(&observed, self.moment(now));
        Ok(self.carry_out(&plan))
    }

    fn carry_out(&mut self, plan: &Plan) -> Report {
        self.check_at = plan.next_check.map(|m| self.origin + m.as_duration());
        let report = if plan.is_empty() && plan.iptables.is_none() {
            Report::default()
        } else {
            self.kernel.apply(plan)
        };
        let metrics = &self.shared.metrics;
        metrics.plan_operations.observe(report.total() as f64);
        for ((kind, result), n) in &report.counts {
            metrics
                .kernel_operations
                .get_or_create(&OperationLabels {
                    kind: kind.as_str().to_owned(),
                    result: (*result).to_owned(),
                })
                .inc_by(*n);
        }
        for &family in &report.restore_failures {
            metrics
                .iptables_restore_failures
                .get_or_create(&FamilyLabels::of(family))
                .inc();
        }
        for failure in &report.failures {
            tracing::warn!(failure = %failure, "kernel operation failed; will verify and retry");
            if let (Some(owner), Some(sink)) = (&failure.owner, &self.warning_sink) {
                sink.failed(
                    &owner.service(),
                    &format!(
                        "the kernel refused {} for {owner}: {}; kipvs retries it at every sync",
                        failure.kind.as_str(),
                        failure.message
                    ),
                );
            }
        }
        if report.total() > 0 {
            tracing::info!(
                operations = report.total(),
                failed = report.failures.len(),
                "plan carried out"
            );
        }
        report
    }
}

#[cfg(test)]
mod tests;
