//! ipsets: kube-proxy's sets (names, types), their members, and their convergence.
//!
//! - [`KubeSets`]: the input. The binary inserts [`Entry`]s into the [`KubeSet`]s of one
//!   address family; every kube-proxy set exists, empty or not.
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

pub use catalog::{KubeSet, KubeSets};
pub use exec::{sync_sets, sync_sets_with_tool, SyncReport};
pub use model::{Entry, Protocol, SetKind, SetSpec, MAX_NAME_LEN};
pub use plan::{plan_sets, sizing, ObservedSet, SetHeader, SetOp};
