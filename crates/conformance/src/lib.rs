//! Conformance with the real kube-proxy (`tests/peer conformance`).
//!
//! For each scenario of the corpus (`tests/peer/scenarios/`), the cluster is created
//! through the real kube-apiserver; the real kube-proxy and then kipvs run on a fresh
//! node with the same KubeProxyConfiguration until synced; each node is captured
//! (IPVS, ipsets, iptables, links, sysctls, health answers, metric names) and the two
//! captures compared. Every difference must be explained by a rule of the README's
//! table "Intended differences from kube-proxy"; any other fails the run.
//!
//! The pure parts (what a capture is, the normalizers, the rules, the comparison, the
//! scenarios) are unit-tested here; [`node`] and [`driver`] run tools and processes and
//! are exercised by the kernel test `kernel_conformance` and by the conformance run.
//! [`bench`] is the `peer` benchmark (`tests/bench peer`), on the same machinery.
//! This crate is test support: it is never part of what kipvs ships.

pub mod bench;
pub mod capture;
pub mod compare;
pub mod driver;
pub mod node;
pub mod normalize;
pub mod rules;
pub mod scenario;
