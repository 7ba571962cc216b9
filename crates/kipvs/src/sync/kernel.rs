//! The kernel behind a narrow seam: the sync loop only reads the state kipvs may own
//! ([`Kernel::observe`]) and carries out Plans ([`Kernel::apply`]). The node's real
//! kernel implements it in [`super::node`]; tests use [`SimulatedKernel`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kipvs_ipvs::Family;
use kipvs_proxy::{Flow, Frontends, IpvsOp, Observed, Owner, Plan};

/// What one kernel operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// An ipset member added.
    SetAdd,
    /// An address bound to kube-ipvs0.
    Bind,
    /// A virtual service created.
    AddService,
    /// A virtual service changed in place.
    UpdateService,
    /// A virtual service deleted.
    DeleteService,
    /// A destination added.
    AddDestination,
    /// A destination changed in place.
    UpdateDestination,
    /// A destination deleted.
    DeleteDestination,
    /// An address removed from kube-ipvs0.
    Unbind,
    /// An ipset member deleted.
    SetDelete,
    /// An ipset rebuilt at another size and swapped in (grown past its `maxelem`, or
    /// shrunk when far too large).
    SetResize,
    /// Stale conntrack entries flushed.
    ConntrackFlush,
    /// A pass of kube-proxy's conntrack reconciler over one family's table.
    ConntrackReconcile,
    /// The iptables rules brought up to date.
    Iptables,
}

impl OpKind {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::SetAdd => "set_add",
            OpKind::Bind => "bind_address",
            OpKind::AddService => "add_service",
            OpKind::UpdateService => "update_service",
            OpKind::DeleteService => "delete_service",
            OpKind::AddDestination => "add_destination",
            OpKind::UpdateDestination => "update_destination",
            OpKind::DeleteDestination => "delete_destination",
            OpKind::Unbind => "unbind_address",
            OpKind::SetDelete => "set_delete",
            OpKind::SetResize => "set_resize",
            OpKind::ConntrackFlush => "conntrack_flush",
            OpKind::ConntrackReconcile => "conntrack_reconcile",
            OpKind::Iptables => "iptables",
        }
    }

    /// The kind of an IPVS operation.
    pub fn of(op: &IpvsOp) -> OpKind {
        match op {
            IpvsOp::AddService { .. } => OpKind::AddService,
            IpvsOp::UpdateService { .. } => OpKind::UpdateService,
            IpvsOp::DeleteService { .. } => OpKind::DeleteService,
            IpvsOp::AddDestination { .. } => OpKind::AddDestination,
            IpvsOp::UpdateDestination { .. } => OpKind::UpdateDestination,
            IpvsOp::DeleteDestination { .. } => OpKind::DeleteDestination,
        }
    }
}

/// One failed kernel operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What kind of operation it was.
    pub kind: OpKind,
    /// The Service port it was for, when it was for one (IPVS operations on a wanted
    /// virtual service); such a failure is recorded as an Event on the Service.
    pub owner: Option<Owner>,
    /// What, on which object, why.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// How a Plan went: counts per operation kind and result, and the failures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Operations by kind and result (`ok` or an error class).
    pub counts: BTreeMap<(OpKind, &'static str), u64>,
    /// The failed operations.
    pub failures: Vec<Failure>,
    /// How long each kind of kernel work took (`ipsets`, `vips`, `iptables`, `ipvs`,
    /// `conntrack`), in the order first done.
    pub phases: Vec<(&'static str, Duration)>,
    /// The address family of each `iptables-restore` (or `ip6tables-restore`) that
    /// failed, for kube-proxy's `sync_proxy_rules_iptables_restore_failures_total`.
    pub restore_failures: Vec<Family>,
}

impl Report {
    /// Records one operation's outcome.
    pub fn record(&mut self, kind: OpKind, result: &'static str) {
        *self.counts.entry((kind, result)).or_default() += 1;
    }

    /// Records `n` successful operations of a kind.
    pub fn ok(&mut self, kind: OpKind, n: usize) {
        if n > 0 {
            *self.counts.entry((kind, "ok")).or_default() += u64::try_from(n).unwrap_or(u64::MAX);
        }
    }

    /// Records a failed operation and why.
    pub fn fail(&mut self, kind: OpKind, class: &'static str, what: String) {
        self.fail_for(kind, class, None, what);
    }

    /// Records a failed operation for a Service port (`owner`) and why.
    pub fn fail_for(
        &mut self,
        kind: OpKind,
        class: &'static str,
        owner: Option<Owner>,
        what: String,
    ) {
        self.record(kind, class);
        self.failures.push(Failure {
            kind,
            owner,
            message: what,
        });
    }

    /// Records a failed write of `family`'s iptables rules and why: a sync that fails
    /// as a whole, counted by family as kube-proxy counts its restore failures.
    pub fn fail_restore(&mut self, family: Family, what: String) {
        self.fail(OpKind::Iptables, "error", what);
        self.restore_failures.push(family);
    }

    /// Runs `work`, adding the time it took to `phase`.
    pub fn timed<T>(&mut self, phase: &'static str, work: impl FnOnce(&mut Self) -> T) -> T {
        let started = Instant::now();
        let result = work(self);
        let took = started.elapsed();
        match self.phases.iter_mut().find(|(name, _)| *name == phase) {
            Some((_, total)) => *total += took,
            None => self.phases.push((phase, took)),
        }
        result
    }

    /// Whether every operation succeeded.
    pub fn is_success(&self) -> bool {
        self.failures.is_empty()
    }

    /// Whether the sync failed as a whole: the iptables rules could not be written. As
    /// in kube-proxy, only such a failure (or a kernel that cannot be read, or
    /// kube-ipvs0 or a KUBE-* set that cannot be created) holds up the health check; a
    /// single IPVS, ipset, address or conntrack operation that fails does not.
    pub fn sync_failed(&self) -> bool {
        self.failures.iter().any(|f| f.kind == OpKind::Iptables)
    }

    /// Operations carried out, successful or not.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// Why the kernel could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the kernel state: {0}")]
pub struct ObserveError(pub String);

/// Why a pass of the conntrack reconciler did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ReconcileError {
    /// The entries deleted before it failed; `None` when the table could not be read
    /// (kube-proxy then records nothing of the pass).
    pub deleted: Option<u64>,
    /// What failed.
    pub message: String,
}

/// The kernel as the sync loop sees it.
pub trait Kernel {
    /// Reads everything kipvs may own: the IPVS table, the addresses on kube-ipvs0 and
    /// the members of the KUBE-* sets.
    ///
    /// Fails when any of them cannot be read; the loop then plans nothing.
    fn observe(&mut self) -> Result<Observed, ObserveError>;

    /// Carries out a Plan in its order (set members, addresses, IPVS, unbinds, set
    /// deletions, conntrack, iptables). A failing operation does not stop the others.
    fn apply(&mut self, plan: &Plan) -> Report;

    /// kube-proxy's conntrack reconciler over `family`'s table: reads it, and deletes the
    /// entries `frontends` finds stale. Returns how many it deleted (an entry already
    /// gone is not counted).
    ///
    /// Fails when the table cannot be read or an entry cannot be deleted.
    fn reconcile_conntrack(
        &mut self,
        family: Family,
        frontends: &Frontends,
    ) -> Result<u64, ReconcileError>;

    /// The node's own addresses (every link but kube-ipvs0), where NodePorts listen;
    /// `None` when they cannot be read or the kernel has no such notion (simulations).
    fn node_addresses(&mut self) -> Option<Vec<std::net::IpAddr>> {
        None
    }
}

/// A kernel simulated with the core's own model of what a Plan does: for unit tests of
/// the loop, and for `--dry-run` bookkeeping.
#[derive(Debug, Clone, Default)]
pub struct SimulatedKernel {
    /// The simulated state.
    pub state: Observed,
    /// Plans applied so far.
    pub plans: Vec<Plan>,
    /// Fail every IPVS operation on these service keys (to test retries).
    pub failing: Vec<kipvs_ipvs::ServiceKey>,
    /// Fail writing the iptables rules (a sync that fails as a whole).
    pub failing_iptables: bool,
    /// The simulated conntrack table (both families).
    pub conntrack: Vec<Flow>,
    /// Fail reading the conntrack table.
    pub failing_conntrack: bool,
}

impl Kernel for SimulatedKernel {
    fn observe(&mut self) -> Result<Observed, ObserveError> {
        Ok(self.state.clone())
    }

    fn reconcile_conntrack(
        &mut self,
        family: Family,
        frontends: &Frontends,
    ) -> Result<u64, ReconcileError> {
        if self.failing_conntrack {
            return Err(ReconcileError {
                deleted: None,
                message: "simulated conntrack dump failure".to_owned(),
            });
        }
        let before = self.conntrack.len();
        self.conntrack
            .retain(|f| Family::of(&f.orig_dst.ip()) != family || !frontends.is_stale(f));
        Ok(u64::try_from(before - self.conntrack.len()).unwrap_or(u64::MAX))
    }

    fn apply(&mut self, plan: &Plan) -> Report {
        let mut report = Report::default();
        let mut applied = plan.clone();
        applied.ipvs.retain(|op| {
            let fails = self.failing.contains(op.key());
            if fails {
                report.fail_for(
                    OpKind::of(op),
                    "invalid",
                    op.owner().cloned(),
                    format!("simulated failure on {}", op.key()),
                );
            } else {
                report.record(OpKind::of(op), "ok");
            }
            !fails
        });
        report.ok(OpKind::SetAdd, plan.set_adds.len());
        report.ok(OpKind::Bind, plan.binds.len());
        report.ok(OpKind::Unbind, plan.unbinds.len());
        report.ok(OpKind::SetDelete, plan.set_deletes.len());
        report.ok(OpKind::ConntrackFlush, plan.conntrack.len());
        if let Some(inputs) = &plan.iptables {
            for rules in &inputs.families {
                if self.failing_iptables {
                    report.fail_restore(
                        rules.family,
                        "simulated iptables-restore failure".to_owned(),
                    );
                } else {
                    report.record(OpKind::Iptables, "ok");
                }
            }
        }
        kipvs_proxy::apply(&applied, &mut self.state);
        self.plans.push(plan.clone());
        report
    }
}
