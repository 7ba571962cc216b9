//! `kipvs plan`: the IPVS table kipvs would program for a state file, in `ipvsadm -Ln`'s
//! layout, without privileges; with `--diff`, the operations it would apply to the
//! kernel's current table, one per line.
//!
//! Also home of [`Cluster`], a state file replayed into the core, which `kipvs dump
//! --services` uses to name each virtual server's Service.

use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;

use kipvs_ipvs::{DestinationEntry, Info, ServiceEntry, ServiceKey, Table, Version};
use kipvs_kube::source::{self, ClusterEvent};
use kipvs_kube::{convert, state_file};
use kipvs_proxy::{Desired, Moment, Node, Observed, Plan, Proxier};

use super::Failure;
use crate::cli::PlanArgs;
use crate::commands::run::LINK_NAME;
use crate::config::Config;
use crate::dump::{self, diff};
use crate::sync::cluster::ClusterView;
use crate::sync::node::local_addresses;

/// What `kipvs plan` prints in the header, having no kernel to ask: the IPVS version of
/// every kernel since 2.6.28 and the default connection table size.
pub const NOMINAL_INFO: Info = Info {
    version: Version {
        major: 1,
        minor: 2,
        patch: 1,
    },
    conn_table_size: 4096,
};

/// A state file replayed into the core: the desired state for this node.
pub struct Cluster {
    /// The core, synced once.
    pub proxier: Proxier,
    /// What `kipvs run` would warn about for the same files, one line each: unknown
    /// configuration fields, objects of other kinds, objects refused, bad values on
    /// Services (defaults used), a node the state file does not have.
    pub warnings: Vec<String>,
}

impl Cluster {
    /// Loads `state` (and `config`, default settings without it) and computes the desired
    /// state of the node named `hostname` (else the configuration's `hostnameOverride`,
    /// else the state file's only Node, else this machine's hostname). The node's
    /// addresses (where NodePorts listen) are `local` when given, as `kipvs run` finds
    /// them on the machine, else the Node's addresses in the state file.
    ///
    /// Fails with a one-line message when a file cannot be read or is invalid.
    pub fn load(
        state: &Path,
        config: Option<&Path>,
        hostname: Option<&str>,
        local: Option<&[IpAddr]>,
    ) -> Result<Cluster, String> {
        let mut warnings = Vec::new();
        let config = match config {
            Some(path) => {
                let loaded = Config::load(path).map_err(|e| e.to_string())?;
                warnings.extend(loaded.unknown_fields.iter().map(ToString::to_string));
                loaded.config
            }
            None => Config::default(),
        };
        let cluster = state_file::load(state).map_err(|e| e.to_string())?;
        warnings.extend(cluster.skipped.iter().map(|object| skipped_kind(object)));
        let nodes: Vec<convert::NodeInfo> = cluster.nodes.iter().map(convert::node).collect();
        let name = hostname
            .map(str::to_owned)
            .or_else(|| config.hostname_override.clone())
            .or_else(|| (nodes.len() == 1).then(|| nodes[0].name.clone()))
            .unwrap_or_else(local_hostname);
        let info = nodes.iter().find(|n| n.name == name);
        let addresses: Vec<IpAddr> = match local {
            Some(local) => local.to_vec(),
            None => info.map(|n| n.addresses.clone()).unwrap_or_default(),
        };
        if info.is_none() {
            warnings.push(node_not_found(&name));
        }
        let node = match info {
            Some(i) => i.to_core(addresses.iter().copied()),
            None => Node::new(name.clone()).with_addresses(addresses.iter().copied()),
        };
        // The primary addresses come from the Node object, as in `kipvs run`.
        let primary = config.primary_addresses(info.map_or(&[][..], |n| &n.addresses));
        let mut proxier = Proxier::new(config.core(&primary), node);
        // The objects go in as `kipvs run` takes them from a state file, through the
        // same view, so the same objects are refused and the same warnings arise.
        let mut view = ClusterView::new(name);
        for event in source::replay(cluster) {
            if matches!(event, ClusterEvent::NodeApplied(_)) {
                continue; // the node is set up above, from the file or the machine
            }
            let applied = view.apply(&mut proxier, event);
            warnings.extend(applied.refused.iter().map(|r| object_skipped(r)));
            warnings.extend(
                applied
                    .warnings
                    .iter()
                    .map(|(service, warning)| bad_value(service, warning)),
            );
        }
        let _ = proxier.verify(&Observed::default(), Moment::default());
        Ok(Cluster { proxier, warnings })
    }

    /// The desired state.
    pub fn desired(&self) -> &Desired {
        self.proxier.desired()
    }

    /// The Service port that owns the virtual service at `key`, as `namespace/name:port`.
    pub fn owner(&self, key: &ServiceKey) -> Option<String> {
        self.desired()
            .virtual_service(key)
            .map(|v| v.owner.to_string())
    }

    /// The IPVS table the desired state describes (no counters), in a fixed order (the
    /// desired state has none, and ipvsadm's sort depends on the input order).
    pub fn table(&self) -> Table {
        let mut table = Table {
            services: self
                .desired()
                .virtual_services()
                .map(|v| ServiceEntry {
                    service: v.service.clone(),
                    stats: Default::default(),
                    destinations: v
                        .destinations
                        .iter()
                        .map(|d| DestinationEntry {
                            destination: d.clone(),
                            counters: Default::default(),
                            stats: Default::default(),
                        })
                        .collect(),
                })
                .collect(),
        };
        table.services.sort_by_key(|s| s.service.key);
        table
    }

    /// The Plan that brings `observed` to the desired state.
    pub fn plan_against(&mut self, observed: &Observed) -> Plan {
        self.proxier.verify(observed, Moment::default())
    }
}

/// The warning for an object of a kind kipvs does not read (`Pod x/p`), as `run` logs it.
pub fn skipped_kind(object: &str) -> String {
    format!("{object}: not a Service, EndpointSlice or Node; ignored")
}

/// The warning for an object the core refused whole, as `run` logs it.
pub fn object_skipped(reason: &str) -> String {
    format!("object skipped: {reason}")
}

/// The warning for a bad value on a Service, for which a default was used.
pub fn bad_value(service: &kipvs_proxy::ServiceName, warning: &kipvs_proxy::Warning) -> String {
    format!("{service}: {warning}; default used")
}

/// The warning for a node the state file has no Node for.
pub fn node_not_found(name: &str) -> String {
    format!(
        "node {name:?} is not among the Nodes of the state file: its labels, addresses and pod \
         CIDR are unknown (pass --hostname-override with one of them)"
    )
}

/// This machine's hostname, as Kubernetes names nodes by default.
fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_default()
}

/// Runs `kipvs plan`.
///
/// Fails when a file is invalid or, with `--diff`, the kernel cannot be read.
pub fn main(args: &PlanArgs) -> Result<ExitCode, Failure> {
    super::dump::print(&run(args)?)
}

fn run(args: &PlanArgs) -> Result<String, Failure> {
    // With --diff, plan as `kipvs run` would on this machine: NodePorts on its addresses.
    let local = if args.diff {
        Some(local_addresses(LINK_NAME).map_err(|e| format!("cannot list the addresses: {e}"))?)
    } else {
        None
    };
    let mut cluster = Cluster::load(
        &args.state,
        args.config.as_deref(),
        args.hostname_override.as_deref(),
        local.as_deref(),
    )?;
    // A dry run says what `run` would: every warning, on standard error.
    for warning in &cluster.warnings {
        eprintln!("warning: {warning}");
    }
    if !args.diff {
        let table = cluster.table();
        return Ok(dump::list_annotated(
            &table,
            &NOMINAL_INFO,
            dump::ListOptions::default(),
            &|k| cluster.owner(k),
        ));
    }
    let observed = super::dump::observe()?;
    let plan = cluster.plan_against(&observed);
    Ok(diff::render(&plan))
}
