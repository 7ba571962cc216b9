//! The pure core of kipvs: from the cluster model to the desired kernel state, and from
//! desired vs observed state to the fewest kernel operations (a Plan).
//!
//! This crate decides everything and does nothing: no I/O, no async, no clock. Its
//! manifest proves it (no tokio, neli, kube or rtnetlink). Executors in other crates
//! carry out the Plans it produces.

pub use kipvs_ipvs as ipvs;
