//! IPVS, the kernel's layer-4 load balancer, driven over generic netlink.
//!
//! This crate is for programming and reading the IPVS table of one network namespace:
//! virtual services, their destinations (real servers), counters and timeouts. It knows
//! nothing about Kubernetes; the proxy core speaks to the kernel only through the types
//! defined in [`types`] and the [`Operation`]s of [`op`].
//!
//! Layout, from pure to effectful:
//! - [`types`] and [`op`]: plain values, no netlink;
//! - `consts` (the kernel's numbers, mirroring `ip_vs.h`), `wire` (netlink framing) and
//!   `codec` (types to attributes and back): pure functions, no socket;
//! - [`procfs`]: reading `/proc/net/ip_vs`, the whole table in one pass (fewer columns);
//! - `socket`: the netlink socket; [`Client`]: requests, batches and dumps on it.
//!
//! ```no_run
//! use kipvs_ipvs::{Client, Destination, Operation, Protocol, Scheduler, Service, ServiceKey};
//!
//! let mut ipvs = Client::new()?;
//! let key = ServiceKey::Addr { protocol: Protocol::Tcp, addr: "10.0.0.1".parse()?, port: 80 };
//! let results = ipvs.apply(&[
//!     Operation::AddService(Service::new(key, Scheduler::RoundRobin)),
//!     Operation::AddDestination {
//!         service: key,
//!         destination: Destination::masq("10.1.0.1".parse()?, 8080, 1),
//!     },
//! ]);
//! for r in results {
//!     r?;
//! }
//! println!("{:?}", ipvs.table()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What this crate must not do: hold state about the table (every read asks the kernel),
//! or panic on anything the kernel sends.

mod client;
mod codec;
mod consts;
mod error;
pub mod op;
pub mod procfs;
mod socket;
pub mod types;
mod wire;

#[cfg(test)]
mod proptests;

pub use client::{Client, Detail, DEFAULT_TIMEOUT};
pub use error::{Error, Result};
pub use op::{Action, Context, Operation};
pub use types::*;
pub use wire::DecodeError;
