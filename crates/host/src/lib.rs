//! The node's kernel state besides IPVS itself: the `kube-ipvs0` dummy link and the VIPs
//! bound to it (rtnetlink), the sysctls kube-proxy's ipvs mode sets, and the small
//! ipset/iptables layer that masquerades IPVS traffic.
//!
//! This crate executes; it does not decide. What to bind, which set members and which
//! rules exist comes from the proxy core, in the core's own vocabulary: the address
//! [`Family`](kipvs_ipvs::Family) and [`Protocol`](kipvs_ipvs::Protocol) of `kipvs-ipvs`,
//! and the ipset/iptables vocabulary of `kipvs-proxy` (the set catalog
//! [`SetKind`](kipvs_proxy::SetKind) / [`SetName`](kipvs_proxy::SetName), set types,
//! [`Member`](kipvs_proxy::Member)s, [`NoNodeAccess`](kipvs_proxy::translate::NoNodeAccess)),
//! as `kipvs-kube` consumes the core's model. The core stays pure; this crate adds only
//! what executing needs (sizing, netlink encoding, rule rendering), keyed by those types.
//! Each module keeps the deciding part pure (plans, diffs, rendering) and the I/O at its
//! edge.
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
//! use kipvs_host::ipset::{self, KubeSets};
//! use kipvs_host::iptables::{Backend, Iptables, LocalDetector, RuleConfig, RuleSpec};
//! use kipvs_host::link::VipLink;
//! use kipvs_host::sysctl::{kube_proxy_settings, KernelVersion, SysctlConfig, Sysctls};
//! use kipvs_ipvs::{Family, Protocol};
//! use kipvs_proxy::{Member, SetKind};
//!
//! // At start.
//! let settings = kube_proxy_settings(SysctlConfig { strict_arp: true }, KernelVersion::running()?);
//! Sysctls::default().apply(&settings)?;
//! let backend = Backend::detect();
//! let link = VipLink::ensure(kipvs_host::link::DEFAULT_LINK).await?;
//!
//! // Each sync: what the proxy core wants, in the core's types.
//! let vip: std::net::IpAddr = "10.96.0.10".parse()?;
//! let mut sets = KubeSets::new(Family::V4);
//! sets.insert(SetKind::ClusterIp, Member::IpPort { ip: vip, protocol: Protocol::Tcp, port: 80 })?;
//! sets.insert(SetKind::IpvsIps, Member::Ip(vip))?;
//! ipset::sync_sets(&sets)?;
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
pub mod conntrack;
pub mod ctnetlink;
mod error;
pub mod ipset;
pub mod iptables;
pub mod link;
pub mod nfnetlink;
pub mod sysctl;

pub use error::{Error, Result};
