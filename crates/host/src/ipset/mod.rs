//! ipsets: converging kube-proxy's sets in the kernel.
//!
//! The vocabulary is the proxy core's: [`kipvs_proxy::SetKind`] and
//! [`kipvs_proxy::SetName`] (the catalog: names, types, comments),
//! [`kipvs_proxy::SetType`] and [`kipvs_proxy::Member`]. This module adds what only the
//! executor needs: sizing, the diff against the kernel, and the two ways to talk to it.
//!
//! - [`KubeSets`]: the input. The caller inserts [`kipvs_proxy::Member`]s into the sets
//!   of one address family; every kube-proxy set exists, empty or not.
//! - [`plan_sets`]: the diff (pure): desired [`SetSpec`]s against the [`ObservedSet`]s
//!   read from the kernel give the [`SetOp`]s to run: create what is missing, add what is
//!   missing, delete what is stale, regrow a set that is too small by filling a
//!   temporary set and swapping it in. Sets are sized to fit: no 65,536-entry ceiling.
//! - [`netlink`] (with [`codec`]): the kernel over nfnetlink: one dump to read, ADT
//!   batches of thousands of members per message to write. What [`sync_sets`] uses.
//! - [`text`] and [`exec::sync_sets_with_tool`]: the same through the `ipset` tool, one
//!   `ipset save` and at most one `ipset restore` per sync (a fallback, and the peer the
//!   benchmark compares with).

mod catalog;
pub mod codec;
pub mod exec;
mod model;
pub mod netlink;
mod plan;
pub mod text;

pub use catalog::KubeSets;
pub use exec::{sync_sets, sync_sets_with_tool, SyncReport};
pub use model::{ipset_family, SetSpec};
pub(crate) use plan::temp_name;
pub use plan::{plan_sets, sizing, ObservedSet, SetHeader, SetOp};
