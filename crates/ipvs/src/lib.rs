//! IPVS, the kernel's layer-4 load balancer, driven over generic netlink.
//!
//! This crate is for programming and reading the IPVS table of one network namespace:
//! virtual services, their destinations (real servers), counters and timeouts. It knows
//! nothing about Kubernetes; the proxy core speaks to the kernel only through the types
//! defined in [`types`].
//!
//! Layout: plain types ([`types`]) carry no netlink; the codec turns them into netlink
//! attributes and back; only the client owns a socket.

pub mod types;

pub use types::*;
