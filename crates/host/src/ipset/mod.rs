//! ipsets: converging kube-proxy's sets in the kernel.
//!
//! The vocabulary is the proxy core's: [`kipvs_proxy::SetKind`] and
//! [`kipvs_proxy::SetName`] (the catalog: names, types, comments),
//! [`kipvs_proxy::SetType`] and [`kipvs_proxy::Member`]. This module adds what only the
//! executor needs: sizing, regrowing, and the nfnetlink protocol.
//!
//! - [`KubeSets`]: the members of each of kube-proxy's sets of one address family (for
//!   [`sync_sets`] and the iptables rules built from them in tests).
//! - [`IpsetExecutor`]: what `kipvs run` writes through: one dump to read every set,
//!   ADT batches of thousands of members per message to write, and sets kept big
//!   enough: a set about to overflow its `maxelem` is rebuilt at the size [`sizing`]
//!   gives, filled, and swapped in (no 65,536-entry ceiling, and no moment where rules
//!   matching it see it half-filled); one left far too large is rebuilt smaller.
//! - The pure decisions: [`sizing`], [`must_grow`], [`may_shrink`], [`regrow_ops`].
//! - [`netlink`] (with [`codec`]): the kernel over nfnetlink.
//! - [`sync_sets`]: whole sets converged through the executor (tests, benchmarks).

mod catalog;
pub mod codec;
pub mod errors;
pub mod exec;
pub mod netlink;
mod plan;

pub use catalog::KubeSets;
pub use exec::{sync_sets, IpsetExecutor, SyncReport};
pub(crate) use plan::temp_name;
pub use plan::{may_shrink, must_grow, regrow_ops, sizing, ObservedSet, SetHeader, SetOp};
