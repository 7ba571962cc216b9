//! The node's kernel state besides IPVS itself: the `kube-ipvs0` dummy link and the VIPs
//! bound to it (rtnetlink), the sysctls kube-proxy's ipvs mode sets, and the small
//! ipset/iptables layer that masquerades IPVS traffic.
//!
//! This crate executes; it does not decide. What to bind, which set members and which
//! rules exist comes from the proxy core, through this crate's own input types
//! ([`ipset::KubeSets`], [`iptables::RuleSpec`]); it never depends on the core. Each
//! module keeps the deciding part pure (plans, diffs, rendering) and the I/O at its edge.
//!
//! It must not touch what it did not create: foreign addresses, sets and chains on the
//! node are left alone, and [`cleanup`] removes exactly what kipvs installs.
//!
//! # One sync, as the binary runs it
//! Sysctls once at start; then, per sync and per address family, the sets first (rules
//! match them by name, so they must exist), then the rules, then the VIPs:
//!
//! ```no_run
//! # async fn sync() -> Result<(), Box<dyn std::error::Error>> {
//! use kipvs_host::ipset::{self, Entry, KubeSet, KubeSets, Protocol};
//! use kipvs_host::iptables::{Backend, Iptables, LocalDetector, RuleConfig, RuleSpec};
//! use kipvs_host::link::VipLink;
//! use kipvs_host::sysctl::{kube_proxy_settings, KernelVersion, SysctlConfig, Sysctls};
//! use kipvs_host::Family;
//!
//! // At start.
//! let settings = kube_proxy_settings(SysctlConfig { strict_arp: true }, KernelVersion::running()?);
//! Sysctls::default().apply(&settings)?;
//! let backend = Backend::detect();
//! let link = VipLink::ensure(kipvs_host::link::DEFAULT_LINK).await?;
//!
//! // Each sync: what the proxy core wants, converted into this crate's inputs.
//! let vip: std::net::IpAddr = "10.96.0.10".parse()?;
//! let mut sets = KubeSets::new(Family::V4);
//! sets.insert(KubeSet::ClusterIp, Entry::IpPort(vip, Protocol::Tcp, 80))?;
//! sets.insert(KubeSet::IpvsIps, Entry::Ip(vip))?;
//! ipset::sync_sets(&sets.specs())?;
//! let config = RuleConfig {
//!     local_detector: LocalDetector::Cidr("10.244.0.0/16".parse()?),
//!     random_fully: backend.random_fully(),
//!     ..RuleConfig::default()
//! };
//! Iptables::new(backend, Family::V4).sync(&RuleSpec::new(&sets, config))?;
//! link.converge(&[vip].into()).await?;
//! # Ok(()) }
//! ```

pub mod cleanup;
mod cmd;
mod error;
pub mod ipset;
pub mod iptables;
pub mod link;
pub mod sysctl;

pub use error::{Error, Result};

/// An address family: IPv4 (`iptables`, `KUBE-` sets) or IPv6 (`ip6tables`, `KUBE-6-`
/// sets). Dual-stack nodes run one of each, side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: std::net::IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    /// The family as `ipset` names it (`inet`, `inet6`).
    pub fn ipset_name(self) -> &'static str {
        match self {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}
