//! The node's real kernel behind [`Kernel`]: IPVS over generic netlink, kube-ipvs0 over
//! rtnetlink, the KUBE-* sets over nfnetlink and the iptables rules through
//! `iptables-restore`.
//!
//! Every operation of a Plan is attempted; each failure is reported with what it was on,
//! and the loop re-verifies (reads the kernel back and plans again) after any failure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use kipvs_host::ctnetlink::ConntrackSocket;
use kipvs_host::ipset::IpsetExecutor;
use kipvs_host::iptables::{Backend, Iptables, LocalDetector, MasqueradeBit, RuleConfig, RuleSpec};
use kipvs_host::link::VipLink;
use kipvs_ipvs::{Client, Family, Operation};
use kipvs_proxy::{FamilyRules, Frontends, IpvsOp, Member, Observed, Plan, SetName};
use tokio::runtime::Handle;

use super::kernel::{Kernel, ObserveError, OpKind, ReconcileError, Report};
use crate::config::{Config, LocalDetection};

/// Why the node's kernel could not be prepared at start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// IPVS cannot be reached.
    #[error(transparent)]
    Ipvs(#[from] kipvs_ipvs::Error),
    /// kube-ipvs0, a sysctl, the ipsets or iptables failed.
    #[error(transparent)]
    Host(#[from] kipvs_host::Error),
    /// The node cannot run the families kipvs needs (see [`super::families`]): no
    /// working iptables, or the primary family cannot run; kube-proxy's reason.
    #[error("{0}")]
    Families(String),
    /// A conntrack limit or timeout of the `conntrack` section could not be applied.
    #[error("{source}")]
    Conntrack {
        /// The nf_conntrack_max wanted, if any.
        max: Option<u64>,
        /// The CPUs it was computed for.
        cpus: u32,
        /// What failed.
        source: kipvs_host::Error,
    },
}

/// The node's kernel.
pub struct NodeKernel {
    ipvs: Client,
    link: VipLink,
    ipsets: IpsetExecutor,
    /// The families kipvs runs (see [`super::families`]): only their sets are made.
    families: Vec<Family>,
    /// The iptables of each family kipvs runs; another family's is never run.
    iptables: Vec<(Family, Iptables)>,
    rule_config: RuleConfig,
    local_detection: LocalDetection,
    runtime: Handle,
    /// The ctnetlink socket of the conntrack reconciler, opened at its first pass and
    /// again after a failure.
    conntrack: Option<ConntrackSocket>,
}

impl std::fmt::Debug for NodeKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKernel")
            .field("link", &self.link.name())
            .finish()
    }
}

/// The addresses of every interface but `except` (kube-ipvs0), deduplicated, in a
/// stable order.
///
/// Fails when the interfaces cannot be listed.
pub fn local_addresses(except: &str) -> Result<Vec<IpAddr>, nix::Error> {
    let mut addrs: BTreeSet<IpAddr> = BTreeSet::new();
    for ifaddr in nix::ifaddrs::getifaddrs()? {
        if ifaddr.interface_name == except {
            continue;
        }
        let Some(address) = ifaddr.address else {
            continue;
        };
        if let Some(v4) = address.as_sockaddr_in() {
            addrs.insert(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = address.as_sockaddr_in6() {
            addrs.insert(IpAddr::V6(v6.ip()));
        }
    }
    Ok(addrs.into_iter().collect())
}

/// The node's kernel state besides IPVS, as kipvs reads it back: the addresses on
/// `link` (none when the link does not exist) and the members of every KUBE-* set (none
/// when the sets cannot be reached at all, logged as a warning).
///
/// Fails when the link's addresses or the sets cannot be listed.
pub async fn read_host_state(
    link: &str,
) -> Result<(BTreeSet<IpAddr>, BTreeMap<SetName, BTreeSet<Member>>), kipvs_host::Error> {
    let addresses = match VipLink::open(link).await? {
        Some(link) => link
            .addresses()
            .await?
            .into_iter()
            .map(|net| net.addr())
            .collect(),
        None => BTreeSet::new(),
    };
    let ipsets = match IpsetExecutor::open() {
        Ok(mut sets) => sets.read()?,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read ipsets; ownership from kube-ipvs0 only");
            BTreeMap::new()
        }
    };
    Ok((addresses, ipsets))
}

/// The error class of an IPVS error, as metrics label it.
pub fn ipvs_class(err: &kipvs_ipvs::Error) -> &'static str {
    if err.is_exists() {
        "exists"
    } else if err.is_not_found() {
        "not_found"
    } else {
        "error"
    }
}

/// The ipvs client's operation for a core IPVS operation.
pub fn to_operation(op: &IpvsOp) -> Operation {
    match op {
        IpvsOp::AddService { service, .. } => Operation::AddService(service.clone()),
        IpvsOp::UpdateService { service, .. } => Operation::UpdateService(service.clone()),
        IpvsOp::DeleteService { key } => Operation::DeleteService(*key),
        IpvsOp::AddDestination {
            service,
            destination,
            ..
        } => Operation::AddDestination {
            service: *service,
            destination: destination.clone(),
        },
        IpvsOp::UpdateDestination {
            service,
            destination,
            ..
        } => Operation::UpdateDestination {
            service: *service,
            destination: destination.clone(),
        },
        IpvsOp::DeleteDestination {
            service,
            destination,
            ..
        } => Operation::DeleteDestination {
            service: *service,
            addr: destination.addr,
            port: destination.port,
        },
    }
}

/// Loads IPVS and gives the kernel the sysctls kube-proxy's ipvs mode needs.
///
/// A sysctl that already has its value is not written, so after `kipvs prepare` has run
/// with privileges, `kipvs run` needs no write access to `/proc/sys`. Fails when the
/// module cannot be loaded or a sysctl cannot be set; the error says which.
pub fn prepare_kernel(config: &Config) -> Result<(), SetupError> {
    use kipvs_host::sysctl::{kube_proxy_settings, KernelVersion, SysctlConfig, Sysctls};
    kipvs_host::sysctl::ensure_ipvs_loaded(Path::new("/proc/sys"))?;
    let settings = kube_proxy_settings(
        SysctlConfig {
            strict_arp: config.ipvs.strict_arp,
        },
        KernelVersion::running()?,
    );
    let sysctls = Sysctls::default();
    for (name, outcome) in sysctls.apply(&settings)? {
        tracing::debug!(sysctl = name, ?outcome, "sysctl");
    }
    apply_conntrack(&sysctls, &config.conntrack)
}

/// Applies the `conntrack` section as kube-proxy's `setupConntrack` does, logging each
/// change; see [`kipvs_host::conntrack`].
fn apply_conntrack(
    sysctls: &kipvs_host::sysctl::Sysctls,
    config: &crate::config::ConntrackConfig,
) -> Result<(), SetupError> {
    use kipvs_host::conntrack::{cpu_count, plan, Sysfs};
    let cpus = cpu_count();
    let wanted = plan(config, cpus);
    tracing::info!(
        nf_conntrack_max = ?wanted.max,
        cpus,
        sysctls = ?wanted.sysctls,
        "conntrack settings"
    );
    let applied = sysctls
        .apply_conntrack(&wanted, &Sysfs::default())
        .map_err(|err| SetupError::Conntrack {
            max: wanted.max,
            cpus,
            source: err,
        })?;
    for (name, outcome) in applied.sysctls {
        tracing::debug!(sysctl = name, ?outcome, "sysctl");
    }
    Ok(())
}

impl NodeKernel {
    /// Prepares the node: loads IPVS, applies kube-proxy's sysctls and the configured
    /// IPVS timeouts, decides which address families run (once, as kube-proxy does at
    /// start, see [`super::families`]; `primary` is the node's primary family as known
    /// now) and logs it, makes sure kube-ipvs0 exists (never recreating it) and every
    /// KUBE-* set of those families exists (never flushing one). Nothing that carries
    /// traffic is removed. The iptables rules of those families only are written later.
    ///
    /// Must run inside a multi-threaded tokio runtime. Fails when IPVS, the link, a
    /// sysctl or the sets cannot be set up, or the node cannot run the families kipvs
    /// needs; the error says which.
    pub async fn setup(
        config: &Config,
        link_name: &str,
        primary: Family,
    ) -> Result<NodeKernel, SetupError> {
        prepare_kernel(config)?;
        let mut ipvs = Client::new()?;
        // IPVS answers only CAP_NET_ADMIN: asked first, a missing privilege is named as
        // such, before the iptables probe below would fail with iptables' own words.
        ipvs.info()?;
        if let Some(timeouts) = config.ipvs.timeouts() {
            // As kube-proxy: a refusal is logged and kipvs runs with the kernel's values.
            match ipvs.set_timeouts(&timeouts) {
                Ok(()) => tracing::info!(
                    tcp = timeouts.tcp,
                    tcp_fin = timeouts.tcp_fin,
                    udp = timeouts.udp,
                    "IPVS timeouts set"
                ),
                Err(err) => tracing::warn!(error = %err, "cannot set the IPVS timeouts"),
            }
        }
        let backend = Backend::detect();
        let decided = super::families::decide(&super::families::probe(backend), primary)
            .map_err(SetupError::Families)?;
        decided.log();
        // kube-proxy checks detectLocal.clusterCIDRs, which clusterCIDR fills.
        let (cluster_cidrs, cluster_cidr_mode) = match &config.local_detection {
            LocalDetection::ClusterCidrs(cidrs) => (cidrs.as_slice(), true),
            _ => (config.cluster_cidrs.as_slice(), false),
        };
        let ip_config = super::families::IpConfig {
            cluster_cidrs,
            cluster_cidr_mode,
            exclude_cidrs: &config.ipvs.exclude_cidrs,
            healthz: config.healthz_bind_address,
            metrics: config.metrics_bind_address,
        };
        // As kube-proxy: logged as errors, or refused when kube-proxy refuses.
        let problems = super::families::check_config(&decided, &ip_config).map_err(|why| {
            SetupError::Families(format!("the configuration is incorrect: {why}"))
        })?;
        for problem in problems {
            tracing::error!(problem = %problem, "the configuration may be incomplete or incorrect");
        }
        let families = &decided.run;
        let link = VipLink::ensure(link_name).await?;
        let mut ipsets = IpsetExecutor::open()?;
        ipsets.ensure_sets(families)?;
        let rule_config = RuleConfig {
            masquerade_bit: MasqueradeBit::new(config.masquerade_bit)?,
            masquerade_all: config.masquerade_all,
            local_detector: LocalDetector::None,
            random_fully: backend.random_fully(),
        };
        Ok(NodeKernel {
            ipvs,
            link,
            ipsets,
            families: families.to_vec(),
            iptables: families
                .iter()
                .map(|&f| (f, Iptables::new(backend, f)))
                .collect(),
            rule_config,
            local_detection: config.local_detection.clone(),
            runtime: Handle::current(),
            conntrack: None,
        })
    }

    /// The address families kipvs runs on this node, the primary first.
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    /// The node's own addresses, on every link but kube-ipvs0: NodePorts listen there.
    ///
    /// Fails when the interfaces cannot be listed.
    pub fn local_addresses(&self) -> Result<Vec<IpAddr>, nix::Error> {
        local_addresses(self.link.name())
    }

    /// Adds or deletes set members through the executor, which regrows (or shrinks) a
    /// set whose size no longer fits its members.
    fn apply_sets(&mut self, entries: &[(SetName, Member)], add: bool, report: &mut Report) {
        if entries.is_empty() {
            return;
        }
        let (kind, result) = if add {
            (OpKind::SetAdd, self.ipsets.add(entries))
        } else {
            (OpKind::SetDelete, self.ipsets.delete(entries))
        };
        match result {
            Ok(done) => {
                report.ok(kind, entries.len());
                report.ok(OpKind::SetResize, done.swapped);
            }
            Err(err) => report.fail(
                kind,
                "error",
                format!("{} set members: {err}", entries.len()),
            ),
        }
    }

    fn apply_link(&mut self, addrs: &[IpAddr], bind: bool, report: &mut Report) {
        if addrs.is_empty() {
            return;
        }
        let link = &self.link;
        let runtime = &self.runtime;
        let result = tokio::task::block_in_place(|| {
            runtime.block_on(async {
                if bind {
                    link.add(addrs).await
                } else {
                    link.remove(addrs).await
                }
            })
        });
        let kind = if bind { OpKind::Bind } else { OpKind::Unbind };
        match result {
            Ok(_) => report.ok(kind, addrs.len()),
            Err(err) => report.fail(
                kind,
                "error",
                format!("{} addresses on {}: {err}", addrs.len(), link.name()),
            ),
        }
    }

    /// Writes the iptables rules of each family when the plan has them.
    fn apply_iptables(&mut self, plan: &Plan, report: &mut Report) {
        if let Some(inputs) = &plan.iptables {
            for rules in &inputs.families {
                let Some((_, iptables)) = self.iptables.iter().find(|(f, _)| *f == rules.family)
                else {
                    continue;
                };
                let config = RuleConfig {
                    local_detector: local_detector(&self.local_detection, rules),
                    ..self.rule_config.clone()
                };
                let spec = RuleSpec::from_rules(rules, config);
                // Rules found as they should be are no operation: only a restore is.
                match iptables.sync(&spec) {
                    Ok(true) => report.record(OpKind::Iptables, "ok"),
                    Ok(false) => {}
                    Err(err) => report.fail_restore(rules.family, err.to_string()),
                }
            }
        }
    }
}

/// How the iptables rules of one family tell this node's pods' traffic, by the
/// configured mode: `ClusterCIDR` by the cluster CIDR of the family, `NodeCIDR` by
/// this Node's pod CIDR of the family (no detection until the Node says it).
pub fn local_detector(detection: &LocalDetection, rules: &FamilyRules) -> LocalDetector {
    let cidr =
        |c: Option<&ipnet::IpNet>| c.map_or(LocalDetector::None, |c| LocalDetector::Cidr(*c));
    match detection {
        LocalDetection::ClusterCidrs(cidrs) => {
            cidr(cidrs.iter().find(|c| Family::of(&c.addr()) == rules.family))
        }
        LocalDetection::NodeCidr => cidr(rules.node_pod_cidr.as_ref()),
        LocalDetection::BridgeInterface(name) => LocalDetector::BridgeInterface(name.clone()),
        LocalDetection::InterfaceNamePrefix(prefix) => {
            LocalDetector::InterfaceNamePrefix(prefix.clone())
        }
    }
}

impl Kernel for NodeKernel {
    /// Also makes sure kube-ipvs0 and every KUBE-* set exist, creating what someone
    /// removed, as kube-proxy does at every sync; failing that, the sync fails as a whole.
    fn observe(&mut self) -> Result<Observed, ObserveError> {
        let table = self.ipvs.table().map_err(|e| ObserveError(e.to_string()))?;
        let (link, runtime) = (&mut self.link, &self.runtime);
        let (recreated, addresses) = tokio::task::block_in_place(|| {
            runtime.block_on(async {
                let recreated = link.refresh().await?;
                Ok::<_, kipvs_host::Error>((recreated, link.addresses().await?))
            })
        })
        .map_err(|e| ObserveError(e.to_string()))?;
        if recreated {
            tracing::warn!(
                link = self.link.name(),
                "the VIP link was gone; created it again"
            );
        }
        let addresses = addresses.into_iter().map(|net| net.addr()).collect();
        let created = self
            .ipsets
            .ensure_sets(&self.families)
            .map_err(|e| ObserveError(format!("cannot create the KUBE-* sets: {e}")))?;
        if created > 0 {
            tracing::warn!(sets = created, "KUBE-* sets were gone; created them again");
        }
        let ipsets = self
            .ipsets
            .read()
            .map_err(|e| ObserveError(e.to_string()))?;
        Ok(Observed {
            table,
            addresses,
            ipsets,
        })
    }

    fn reconcile_conntrack(
        &mut self,
        family: Family,
        frontends: &Frontends,
    ) -> Result<u64, ReconcileError> {
        let unread = |err: kipvs_host::Error| ReconcileError {
            deleted: None,
            message: err.to_string(),
        };
        let socket = match &mut self.conntrack {
            Some(socket) => socket,
            None => self
                .conntrack
                .insert(ConntrackSocket::open().map_err(unread)?),
        };
        let dump = match socket.list(family) {
            Ok(dump) => dump,
            Err(err) => {
                self.conntrack = None;
                return Err(unread(err));
            }
        };
        if dump.interrupted {
            tracing::debug!(
                ?family,
                "conntrack table changed while read; going on with what was read"
            );
        }
        let stale = frontends.stale(&dump.flows);
        let (mut deleted, mut failed) = (0u64, Vec::new());
        for flow in &stale {
            match socket.delete(flow) {
                Ok(true) => {
                    deleted += 1;
                    tracing::trace!(?flow, "stale conntrack entry deleted");
                }
                Ok(false) => {}
                Err(err) => failed.push(err.to_string()),
            }
        }
        tracing::debug!(
            ?family,
            entries = dump.flows.len(),
            stale = stale.len(),
            deleted,
            "conntrack reconciled"
        );
        if failed.is_empty() {
            Ok(deleted)
        } else {
            self.conntrack = None;
            Err(ReconcileError {
                deleted: Some(deleted),
                message: format!(
                    "{} of {} stale conntrack entries not deleted: {}",
                    failed.len(),
                    stale.len(),
                    failed.join("; ")
                ),
            })
        }
    }

    fn node_addresses(&mut self) -> Option<Vec<IpAddr>> {
        match self.local_addresses() {
            Ok(addrs) => Some(addrs),
            Err(err) => {
                tracing::warn!(error = %err, "cannot list the node's addresses; keeping the last known");
                None
            }
        }
    }

    fn apply(&mut self, plan: &Plan) -> Report {
        let mut report = Report::default();
        report.timed("ipsets", |r| self.apply_sets(&plan.set_adds, true, r));
        report.timed("vips", |r| self.apply_link(&plan.binds, true, r));
        // The rules before the virtual services: on a first start, no connection reaches
        // a virtual service before the rules that masquerade it exist (kube-proxy writes
        // them last). A rule that a set emptied by this plan no longer needs goes a
        // moment early; it only served the virtual services this plan removes.
        report.timed("iptables", |r| self.apply_iptables(plan, r));
        if !plan.ipvs.is_empty() {
            report.timed("ipvs", |report| {
                let ops: Vec<Operation> = plan.ipvs.iter().map(to_operation).collect();
                for (op, result) in plan.ipvs.iter().zip(self.ipvs.apply(&ops)) {
                    let kind = OpKind::of(op);
                    match result {
                        Ok(()) => report.record(kind, "ok"),
                        Err(err) => report.fail_for(
                            kind,
                            ipvs_class(&err),
                            op.owner().cloned(),
                            err.to_string(),
                        ),
                    }
                }
            });
        }
        report.timed("vips", |r| self.apply_link(&plan.unbinds, false, r));
        report.timed("ipsets", |r| self.apply_sets(&plan.set_deletes, false, r));
        if !plan.conntrack.is_empty() {
            report.timed("conntrack", |report| {
                for flush in &plan.conntrack {
                    match super::conntrack::flush(flush) {
                        Ok(()) => report.record(OpKind::ConntrackFlush, "ok"),
                        Err(err) => report.fail(OpKind::ConntrackFlush, "error", err),
                    }
                }
            });
        }
        report
    }
}

#[cfg(test)]
mod detector_tests {
    use super::*;

    fn rules(family: Family, node_pod_cidr: Option<&str>) -> FamilyRules {
        FamilyRules {
            family,
            nonempty_sets: Vec::new(),
            no_node_access: Vec::new(),
            node_pod_cidr: node_pod_cidr.map(|c| c.parse().unwrap()),
        }
    }

    #[test]
    fn node_cidr_detection_uses_the_nodes_pod_cidr_of_the_family_once_known() {
        let mode = LocalDetection::NodeCidr;
        assert_eq!(
            local_detector(&mode, &rules(Family::V4, Some("10.244.3.0/24"))),
            LocalDetector::Cidr("10.244.3.0/24".parse().unwrap())
        );
        assert_eq!(
            local_detector(&mode, &rules(Family::V4, None)),
            LocalDetector::None
        );
    }

    #[test]
    fn cluster_cidr_detection_uses_the_cluster_cidr_of_the_family() {
        let mode = LocalDetection::ClusterCidrs(vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00::/48".parse().unwrap(),
        ]);
        let pod = Some("10.244.3.0/24");
        assert_eq!(
            local_detector(&mode, &rules(Family::V6, pod)),
            LocalDetector::Cidr("fd00::/48".parse().unwrap())
        );
        assert_eq!(
            local_detector(&mode, &rules(Family::V4, pod)),
            LocalDetector::Cidr("10.244.0.0/16".parse().unwrap())
        );
    }
}
