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
