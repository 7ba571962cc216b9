//! The node's kernel state besides IPVS itself: the `kube-ipvs0` dummy link and the VIPs
//! bound to it (rtnetlink), the sysctls kube-proxy's ipvs mode sets, and the small
//! ipset/iptables layer that masquerades IPVS traffic.
//!
//! This crate executes; it does not decide. What to bind, which set members and which
//! rules exist comes from the proxy core.

pub mod sysctl;
