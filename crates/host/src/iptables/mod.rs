//! iptables: the KUBE-* chains and rules of kube-proxy's ipvs mode (masquerade, hairpin,
//! NodePort, LoadBalancer source ranges, the VIP port filter, FORWARD acceptance), for
//! `nat` and `filter`, per address family.
//!
//! - [`RuleSpec`]: the input (configuration, which sets have members, LoadBalancers
//!   the node must not reach), in the core's vocabulary ([`kipvs_proxy::SetKind`],
//!   [`kipvs_proxy::translate::NoNodeAccess`]); [`RuleSpec::from_rules`] takes the core's
//!   [`kipvs_proxy::FamilyRules`] as they are.
//! - [`render`]: the ruleset, written exactly as `iptables-save` prints it (pure).
//! - [`restore_input`] / [`cleanup_input`]: the diff against `iptables-save` output,
//!   as `iptables-restore --noflush` input, or nothing when nothing differs (pure).
//! - [`Iptables`]: one `iptables-save`, then at most one `iptables-restore` per sync.
//! - [`Backend`]: nft or legacy, detected as kube-proxy's image does.
//!
//! x_tables has no netlink write API; `iptables-restore` is the batch interface.

mod backend;
mod diff;
mod exec;
mod render;
mod spec;

pub use backend::{decide as decide_backend, has_kubelet_chains, Backend};
pub use diff::{cleanup_input, parse_save, restore_input, Observed};
pub use exec::Iptables;
pub use render::{jumps, render, Chain, Jump, Ruleset, Table, JUMPS, OWN_CHAINS};
pub use spec::{LocalDetector, MasqueradeBit, RuleConfig, RuleSpec};
