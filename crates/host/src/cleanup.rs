//! Removing everything kipvs installs on the node, and nothing else: its iptables jumps
//! and chains (each family whose iptables works on the node, as kube-proxy's cleanup
//! uses only those), then its ipsets (kube-proxy's names in both families, and
//! kipvs' temporary sets), then the VIP link with its addresses.
//!
//! The order matters: a set cannot be destroyed while a rule matches it.

use kipvs_ipvs::Family;
use kipvs_proxy::SetName;

use crate::ipset::exec::destroy_sets;
use crate::ipset::temp_name;
use crate::iptables::{Backend, Iptables};
use crate::link::VipLink;
use crate::Result;

/// What [`cleanup`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Families whose iptables rules were removed.
    pub iptables: Vec<Family>,
    /// How many ipsets were destroyed.
    pub sets: usize,
    /// Whether the VIP link was deleted.
    pub link: bool,
}

/// Every set name kipvs may have created: the catalog in both families, and the
/// temporary set used when regrowing one.
pub fn own_set_names() -> Vec<String> {
    let mut names: Vec<String> = SetName::all().map(|set| set.to_string()).collect();
    names.push(temp_name());
    names
}

/// Removes kipvs' iptables rules (both families, on `backend`; a family whose iptables
/// does not work on the node, such as IPv6 on a node without it, is skipped), its
/// ipsets, and the VIP link `link_name`. Running it twice is harmless: the second run finds nothing.
/// Must run inside a tokio runtime (the link is removed over rtnetlink).
///
/// # Errors
/// At the first step that fails; the steps before it stay done.
pub async fn cleanup(link_name: &str, backend: Backend) -> Result<CleanupReport> {
    let mut report = CleanupReport::default();
    for family in [Family::V4, Family::V6] {
        let iptables = Iptables::new(backend, family);
        if let Err(err) = iptables.present() {
            tracing::info!(?family, error = %err, "no iptables support for family; its rules are left");
            continue;
        }
        if iptables.cleanup()? {
            report.iptables.push(family);
        }
    }
    report.sets = destroy_sets(&own_set_names())?;
    if let Some(link) = VipLink::open(link_name).await? {
        link.delete().await?;
        report.link = true;
    }
    Ok(report)
}
