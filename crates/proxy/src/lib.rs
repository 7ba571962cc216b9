//! The pure core of kipvs: from the cluster model to the desired kernel state, and from
//! desired vs observed state to the fewest kernel operations (a [`Plan`]).
//!
//! This crate decides everything and does nothing: no I/O, no async, no clock. Its
//! manifest proves it (no tokio, neli, kube or rtnetlink). Executors in other crates
//! carry out the Plans it produces.
//!
//! # Layers
//! - [`model`]: Services, EndpointSlices and this node, validated once by `try_new`;
//!   bad values become [`Warning`]s attached to the Service. [`Config`] is the rest.
//! - [`translate`]: one Service (and its slices) to its share of the desired state,
//!   using [`annotations`] for the scheduler and [`topology`] to choose endpoints.
//! - [`desired`]: every Service's share merged, with who claims what.
//! - [`plan`]: desired vs [`Observed`] to a [`Plan`], touching only what kipvs owns
//!   ([`ownership`]) and draining leaving destinations ([`graceful`]).
//! - [`engine`]: the incremental [`Proxier`] the binary drives.
//!
//! # Example
//! ```
//! use kipvs_proxy::{Config, Moment, Node, Observed, Proxier, RawService, RawServicePort, Service};
//!
//! let node = Node::new("node-a").with_addresses(["192.168.1.10".parse().unwrap()]);
//! let mut proxier = Proxier::new(Config::default(), node);
//! let mut plan = proxier.verify(&Observed::default(), Moment::from_secs(0));
//! assert!(plan.is_empty());
//! let service = Service::try_new(RawService {
//!     namespace: "default".into(),
//!     name: "web".into(),
//!     cluster_ips: vec!["10.96.0.10".into()],
//!     ports: vec![RawServicePort { port: 80, ..Default::default() }],
//!     ..Default::default()
//! })
//! .unwrap();
//! proxier.upsert_service(service);
//! plan = proxier.sync(Moment::from_secs(1));
//! // one virtual service, one address, KUBE-CLUSTER-IP and KUBE-IPVS-IPS members
//! assert_eq!(plan.ipvs.len(), 1);
//! assert_eq!(plan.binds.len(), 1);
//! assert_eq!(plan.set_adds.len(), 2);
//! ```

pub mod annotations;
pub mod config;
pub mod conntrack;
pub mod desired;
pub mod engine;
pub mod graceful;
mod hash;
pub mod ipset;
pub mod iptables;
pub mod model;
pub mod observed;
pub mod ownership;
pub mod plan;
pub mod topology;
pub mod translate;
pub mod warning;

#[cfg(test)]
mod testutil;

pub use kipvs_ipvs as ipvs;

pub use annotations::{SchedulerChoice, SchedulerFlags};
pub use config::Config;
pub use conntrack::{Flow, Frontends};
pub use desired::{Desired, Touched};
pub use engine::Proxier;
pub use graceful::{Drain, Moment};
pub use ipset::{Member, SetKind, SetName, SetType};
pub use iptables::{FamilyRules, IptablesInputs};
pub use model::{
    EndpointSlice, Node, RawEndpoint, RawEndpointPort, RawEndpointSlice, RawIngress, RawService,
    RawServicePort, Service, ServiceName, SliceName,
};
pub use observed::{apply, Observed};
pub use plan::{cleanup, plan, ConntrackFlush, IpvsOp, Plan};
pub use translate::{translate, HealthCheck, Owner, Role, ServiceState, Traffic, VirtualService};
pub use warning::{InvalidObject, Warning};
