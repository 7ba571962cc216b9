//! Which address families kipvs runs, decided once at start as kube-proxy 1.37 decides
//! them (`platformCheckSupported` and `newProxyServer` in cmd/kube-proxy/app):
//!
//! - a family runs only where its iptables works (`iptables` / `ip6tables` can list the
//!   `nat` table's `POSTROUTING` chain: kube-proxy's `Present()`); neither working is
//!   fatal ("iptables is not available on this host");
//! - IPv6 runs only where the kernel has it: `/proc/net/if_inet6` exists and
//!   `net.ipv6.conf.all.disable_ipv6` is not `1`;
//! - the node's primary family (bindAddress, else the Node's first address, else IPv4)
//!   must run: kube-proxy refuses to start without it ("no support for primary IP
//!   family").
//!
//! A family that does not run is left alone entirely: no virtual service, address, set
//! or rule of it is created, changed or deleted, and its Services and EndpointSlices are
//! ignored without a word, as by kube-proxy's single-stack proxier.
//!
//! [`decide`] is pure; [`probe`] reads the node.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use ipnet::IpNet;
use kipvs_host::iptables::{Backend, Iptables};
use kipvs_ipvs::Family;

use crate::servers::ip_family;

/// What the kernel says about IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelIpv6 {
    /// `/proc/net/if_inet6` exists and IPv6 is not disabled.
    Enabled,
    /// `net.ipv6.conf.all.disable_ipv6` is `1`.
    Disabled,
    /// No `/proc/net/if_inet6`: the kernel has no IPv6 (or it is disabled at boot).
    Missing,
}

/// What the node offers each family, as [`probe`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Whether IPv4's iptables works, else why not.
    pub iptables_v4: Result<(), String>,
    /// Whether IPv6's iptables works, else why not.
    pub iptables_v6: Result<(), String>,
    /// The kernel's IPv6.
    pub kernel_v6: KernelIpv6,
}

/// The families kipvs runs, and why each other one does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Families {
    /// The primary family: IPv4 unless bindAddress or the Node says IPv6.
    pub primary: Family,
    /// The families kipvs runs, the primary first.
    pub run: Vec<Family>,
    /// Each family left out, with the reason (kube-proxy's log message).
    pub left_out: Vec<(Family, String)>,
}

impl Families {
    /// Whether both families run.
    pub fn dual_stack(&self) -> bool {
        self.run.len() == 2
    }

    /// Logs, once, what kipvs runs and why a family is left out, with kube-proxy's
    /// messages.
    pub fn log(&self) {
        for (family, why) in &self.left_out {
            tracing::info!(ip_family = ip_family(*family), "{why}");
        }
        if self.dual_stack() {
            tracing::info!(
                primary_ip_family = ip_family(self.primary),
                "kipvs running in dual-stack mode"
            );
        } else {
            tracing::info!(
                ip_family = ip_family(self.primary),
                "kipvs running in single-stack mode"
            );
        }
    }
}

/// The node's primary family, as kube-proxy's `detectNodeIPs` picks it: the family of
/// bindAddress when it names an address, else that of the Node's first address
/// (InternalIPs first), else IPv4.
pub fn primary_family(bind_address: &[IpAddr], node_addresses: &[IpAddr]) -> Family {
    bind_address
        .first()
        .filter(|a| !a.is_unspecified())
        .or_else(|| node_addresses.first())
        .map_or(Family::V4, Family::of)
}

/// Decides which families run on a node offering `probe`, whose primary family is
/// `primary`.
///
/// Fails, with kube-proxy's reason, when no family's iptables works or the primary
/// family cannot run.
pub fn decide(probe: &Probe, primary: Family) -> Result<Families, String> {
    let mut left_out = Vec::new();
    match (&probe.iptables_v4, &probe.iptables_v6) {
        (Err(why), Err(_)) => {
            return Err(format!("iptables is not available on this host: {why}"));
        }
        (Err(why), Ok(())) => {
            left_out.push((Family::V4, format!("No iptables support for family: {why}")))
        }
        (Ok(()), Err(why)) => {
            left_out.push((Family::V6, format!("No iptables support for family: {why}")))
        }
        (Ok(()), Ok(())) => {}
    }
    let kernel = match probe.kernel_v6 {
        KernelIpv6::Enabled => None,
        KernelIpv6::Disabled => Some("Kernel support disabled for family"),
        KernelIpv6::Missing => Some("No kernel support for family"),
    };
    if let Some(why) = kernel {
        left_out.push((Family::V6, why.to_owned()));
    }
    let runs = |family: Family| left_out.iter().all(|(f, _)| *f != family);
    if !runs(primary) {
        return Err(format!(
            "no support for primary IP family \"{}\"",
            ip_family(primary)
        ));
    }
    let other = match primary {
        Family::V4 => Family::V6,
        Family::V6 => Family::V4,
    };
    let mut run = vec![primary];
    if runs(other) {
        run.push(other);
    }
    Ok(Families {
        primary,
        run,
        left_out,
    })
}

/// The parts of the configuration kube-proxy checks against the families it runs
/// (`checkBadIPConfig`).
#[derive(Debug, Clone, Copy)]
pub struct IpConfig<'a> {
    /// `clusterCIDR`.
    pub cluster_cidrs: &'a [IpNet],
    /// Whether `detectLocalMode` is `ClusterCIDR`.
    pub cluster_cidr_mode: bool,
    /// `ipvs.excludeCIDRs`.
    pub exclude_cidrs: &'a [IpNet],
    /// `healthzBindAddress`.
    pub healthz: SocketAddr,
    /// `metricsBindAddress`.
    pub metrics: SocketAddr,
}

/// kube-proxy's `checkBadIPConfig`: settings that name only the family other than the
/// primary one. Each is a warning (kube-proxy logs them as "configuration may be
/// incomplete or incorrect"); excludeCIDRs and the bind addresses are checked only when
/// one family runs.
///
/// Fails, with every problem found, when one of them is fatal in kube-proxy too: a
/// `clusterCIDR` of only the other family when it runs alone and `detectLocalMode` is
/// `ClusterCIDR` (such a node could not tell its pods' traffic).
pub fn check_config(families: &Families, config: &IpConfig<'_>) -> Result<Vec<String>, String> {
    let bad = match families.primary {
        Family::V4 => Family::V6,
        Family::V6 => Family::V4,
    };
    let cluster = if families.dual_stack() {
        format!("{}-primary", ip_family(families.primary))
    } else {
        format!("{}-only", ip_family(families.primary))
    };
    let only_bad =
        |cidrs: &[IpNet]| !cidrs.is_empty() && cidrs.iter().all(|c| Family::of(&c.addr()) == bad);
    let bad_bind = |a: &SocketAddr| Family::of(&a.ip()) == bad && !a.ip().is_unspecified();
    let (mut problems, mut fatal) = (Vec::new(), false);
    if only_bad(config.cluster_cidrs) {
        problems.push(format!(
            "cluster is {cluster} but clusterCIDRs contains only {} addresses",
            ip_family(bad)
        ));
        fatal = config.cluster_cidr_mode && !families.dual_stack();
    }
    if !families.dual_stack() {
        if only_bad(config.exclude_cidrs) {
            problems.push(format!(
                "cluster is {cluster} but ipvs.excludeCIDRs contains only {} addresses",
                ip_family(bad)
            ));
        }
        for (field, addr) in [
            ("healthzBindAddress", config.healthz),
            ("metricsBindAddress", config.metrics),
        ] {
            if bad_bind(&addr) {
                problems.push(format!(
                    "cluster is {cluster} but {field} is {}",
                    ip_family(bad)
                ));
            }
        }
    }
    if fatal {
        Err(problems.join(", "))
    } else {
        Ok(problems)
    }
}

/// The kernel's IPv6 as seen under `proc` (`/proc`): kube-proxy reads
/// `net/if_inet6` and `sys/net/ipv6/conf/all/disable_ipv6`, both of the calling
/// thread's network namespace.
pub fn kernel_ipv6(proc: &Path) -> KernelIpv6 {
    if !proc.join("net/if_inet6").exists() {
        return KernelIpv6::Missing;
    }
    match std::fs::read_to_string(proc.join("sys/net/ipv6/conf/all/disable_ipv6")) {
        Ok(value) if value.trim() == "1" => KernelIpv6::Disabled,
        _ => KernelIpv6::Enabled,
    }
}

/// Probes the node: each family's iptables on `backend`, and the kernel's IPv6.
pub fn probe(backend: Backend) -> Probe {
    let present = |family| {
        Iptables::new(backend, family)
            .present()
            .map_err(|e| e.to_string())
    };
    Probe {
        iptables_v4: present(Family::V4),
        iptables_v6: present(Family::V6),
        kernel_v6: kernel_ipv6(Path::new("/proc")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(v4: bool, v6: bool, kernel_v6: KernelIpv6) -> Probe {
        let tool = |ok: bool, name: &str| {
            if ok {
                Ok(())
            } else {
                Err(format!("{name}: can't initialize table `nat'"))
            }
        };
        Probe {
            iptables_v4: tool(v4, "iptables"),
            iptables_v6: tool(v6, "ip6tables"),
            kernel_v6,
        }
    }

    #[test]
    fn a_node_with_both_iptables_and_ipv6_runs_dual_stack_primary_first() {
        let f = decide(&node(true, true, KernelIpv6::Enabled), Family::V4).unwrap();
        assert_eq!(f.run, vec![Family::V4, Family::V6]);
        assert!(f.dual_stack() && f.left_out.is_empty());
        let f = decide(&node(true, true, KernelIpv6::Enabled), Family::V6).unwrap();
        assert_eq!(f.run, vec![Family::V6, Family::V4]);
    }

    #[test]
    fn ipv6_disabled_or_missing_in_the_kernel_leaves_ipv6_out() {
        for (kernel, why) in [
            (KernelIpv6::Disabled, "Kernel support disabled for family"),
            (KernelIpv6::Missing, "No kernel support for family"),
        ] {
            let f = decide(&node(true, true, kernel), Family::V4).unwrap();
            assert_eq!(f.run, vec![Family::V4]);
            assert_eq!(f.left_out, vec![(Family::V6, why.to_owned())]);
        }
    }

    #[test]
    fn a_broken_ip6tables_leaves_ipv6_out_even_with_ipv6_up() {
        let f = decide(&node(true, false, KernelIpv6::Enabled), Family::V4).unwrap();
        assert_eq!(f.run, vec![Family::V4]);
        assert_eq!(f.left_out.len(), 1);
        assert!(f.left_out[0]
            .1
            .starts_with("No iptables support for family: ip6tables"));
    }

    #[test]
    fn no_working_iptables_at_all_is_fatal() {
        let err = decide(&node(false, false, KernelIpv6::Enabled), Family::V4).unwrap_err();
        assert!(
            err.starts_with("iptables is not available on this host: iptables"),
            "{err}"
        );
    }

    #[test]
    fn a_primary_family_that_cannot_run_is_fatal() {
        let err = decide(&node(true, true, KernelIpv6::Disabled), Family::V6).unwrap_err();
        assert_eq!(err, "no support for primary IP family \"IPv6\"");
        let err = decide(&node(false, true, KernelIpv6::Enabled), Family::V4).unwrap_err();
        assert_eq!(err, "no support for primary IP family \"IPv4\"");
        // IPv6-only nodes run IPv6 alone when IPv4's iptables is broken.
        let f = decide(&node(false, true, KernelIpv6::Enabled), Family::V6).unwrap();
        assert_eq!(f.run, vec![Family::V6]);
    }

    #[test]
    fn the_primary_family_is_bind_address_then_the_nodes_first_address_then_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(primary_family(&[], &[]), Family::V4);
        assert_eq!(
            primary_family(&[], &[ip("fd00::1"), ip("10.0.0.1")]),
            Family::V6
        );
        assert_eq!(
            primary_family(&[ip("10.0.0.1")], &[ip("fd00::1")]),
            Family::V4
        );
        assert_eq!(primary_family(&[ip("::")], &[ip("fd00::1")]), Family::V6);
        assert_eq!(primary_family(&[ip("0.0.0.0")], &[]), Family::V4);
    }

    #[test]
    fn settings_of_only_the_missing_family_are_warned_about_and_a_cluster_cidr_is_fatal() {
        let v4_only = decide(&node(true, true, KernelIpv6::Disabled), Family::V4).unwrap();
        let dual = decide(&node(true, true, KernelIpv6::Enabled), Family::V4).unwrap();
        let v6: Vec<IpNet> = vec!["fd00:244::/48".parse().unwrap()];
        let both: Vec<IpNet> = vec!["10.244.0.0/16".parse().unwrap(), v6[0]];
        let config = IpConfig {
            cluster_cidrs: &both,
            cluster_cidr_mode: true,
            exclude_cidrs: &v6,
            healthz: "[fd00::1]:10256".parse().unwrap(),
            metrics: "[::]:10249".parse().unwrap(),
        };
        assert_eq!(
            check_config(&v4_only, &config).unwrap(),
            vec![
                "cluster is IPv4-only but ipvs.excludeCIDRs contains only IPv6 addresses",
                "cluster is IPv4-only but healthzBindAddress is IPv6",
            ]
        );
        // Both families run: only clusterCIDR is looked at.
        assert!(check_config(&dual, &config).unwrap().is_empty());
        let only_v6 = IpConfig {
            cluster_cidrs: &v6,
            ..config
        };
        assert_eq!(
            check_config(&dual, &only_v6).unwrap(),
            vec!["cluster is IPv4-primary but clusterCIDRs contains only IPv6 addresses"]
        );
        let err = check_config(&v4_only, &only_v6).unwrap_err();
        assert!(
            err.starts_with("cluster is IPv4-only but clusterCIDRs contains only IPv6 addresses, "),
            "{err}"
        );
        let other_mode = IpConfig {
            cluster_cidr_mode: false,
            ..only_v6
        };
        assert_eq!(check_config(&v4_only, &other_mode).unwrap().len(), 3);
    }

    #[test]
    fn the_kernels_ipv6_is_read_from_proc() {
        let dir = std::env::temp_dir().join(format!("kipvs-families-{}", std::process::id()));
        let conf = dir.join("sys/net/ipv6/conf/all");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(dir.join("net")).unwrap();
        assert_eq!(kernel_ipv6(&dir), KernelIpv6::Missing);
        std::fs::write(dir.join("net/if_inet6"), "").unwrap();
        std::fs::write(conf.join("disable_ipv6"), "0\n").unwrap();
        assert_eq!(kernel_ipv6(&dir), KernelIpv6::Enabled);
        std::fs::write(conf.join("disable_ipv6"), "1\n").unwrap();
        assert_eq!(kernel_ipv6(&dir), KernelIpv6::Disabled);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
