//! `kipvs cleanup` (and `kipvs run --cleanup`, as kube-proxy's `--cleanup`): removes
//! everything kipvs owns and nothing else.
//!
//! Order matters: the virtual services go first, while the addresses on kube-ipvs0 and
//! the KUBE-* sets that record kipvs' ownership still exist (the core's `cleanup()` plans
//! their removal from that record); then the host crate removes the KUBE-* chains, the
//! KUBE-* sets and kube-ipvs0. Foreign virtual services, sets, chains and addresses stay.
//! Running it again finds nothing and succeeds.

use std::process::ExitCode;

use kipvs_host::iptables::Backend;
use kipvs_ipvs::{Client, Table};
use kipvs_proxy::{Node, Observed};

use super::Failure;
use crate::cli::CleanupArgs;
use crate::commands::run::LINK_NAME;
use crate::config::Config;
use crate::sync::node::{local_addresses, read_host_state, to_operation};

/// What a cleanup removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Virtual services deleted.
    pub services: usize,
    /// ipsets destroyed.
    pub sets: usize,
    /// Address families whose KUBE-* chains were removed.
    pub chains: usize,
    /// Whether kube-ipvs0 was deleted.
    pub link: bool,
}

/// Removes everything kipvs owns.
///
/// Fails when a kernel read or removal fails; what could be removed before is gone, and
/// running it again continues from there.
pub async fn cleanup(config: &Config) -> Result<Removed, Failure> {
    let mut removed = Removed::default();
    // No IPVS module means no IPVS state to remove.
    let mut ipvs = match Client::new() {
        Ok(client) => Some(client),
        Err(kipvs_ipvs::Error::Unavailable) => None,
        Err(err) => return Err(err.into()),
    };
    let table = match ipvs.as_mut() {
        Some(client) => client.table()?,
        None => Table::default(),
    };
    let (addresses, ipsets) = read_host_state(LINK_NAME).await?;
    let observed = Observed {
        table,
        addresses,
        ipsets,
    };
    let local = local_addresses(LINK_NAME)
        .map_err(|e| Failure::Other(format!("cannot list the addresses: {e}")))?;
    let node = Node::new("").with_addresses(local.iter().copied());
    let plan = kipvs_proxy::cleanup(&observed, &node, &config.core(&local));
    if let Some(client) = ipvs.as_mut() {
        let ops: Vec<_> = plan.ipvs.iter().map(to_operation).collect();
        for (op, result) in plan.ipvs.iter().zip(client.apply(&ops)) {
            match result {
                Ok(()) => removed.services += 1,
                // Already gone: someone (or a previous run) was first.
                Err(err) if err.is_not_found() => {}
                Err(err) => return Err(Failure::from(err).context(&op.key().to_string())),
            }
        }
    }
    let report = kipvs_host::cleanup::cleanup(LINK_NAME, Backend::detect()).await?;
    removed.sets = report.sets;
    removed.chains = report.iptables.len();
    removed.link = report.link;
    Ok(removed)
}

/// Runs `kipvs cleanup`.
///
/// Fails like [`cleanup`].
pub fn main(args: &CleanupArgs) -> Result<ExitCode, Failure> {
    let config = super::optional_config(args.config.as_deref())?;
    let removed = super::runtime(1)?
        .block_on(cleanup(&config))
        .map_err(|f| f.context("cleanup failed"))?;
    println!(
        "removed {} virtual services, {} ipsets, the KUBE-* chains of {} families{}",
        removed.services,
        removed.sets,
        removed.chains,
        if removed.link { ", kube-ipvs0" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}
