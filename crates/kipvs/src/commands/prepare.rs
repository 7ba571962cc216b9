//! `kipvs prepare`: the privileged half of start-up, run once per boot of the pod.
//!
//! Loading kernel modules and writing `/proc/sys` need more than the long-running proxy
//! should hold (in a container, a writable `/proc/sys` means a privileged container).
//! The DaemonSet runs this as a privileged init container; `kipvs run` then finds every
//! sysctl already set, writes nothing, and keeps only NET_ADMIN and NET_RAW.

use std::process::ExitCode;

use super::Failure;
use crate::cli::PrepareArgs;
use crate::sync::node::prepare_kernel;

/// Runs `kipvs prepare`.
///
/// Fails when IPVS cannot be loaded or a sysctl cannot be set.
pub fn main(args: &PrepareArgs) -> Result<ExitCode, Failure> {
    let config = super::optional_config(args.config.as_deref())?;
    prepare_kernel(&config).map_err(|err| Failure::from(err).context("cannot prepare the node"))?;
    println!("IPVS loaded and kube-proxy's ipvs sysctls set");
    Ok(ExitCode::SUCCESS)
}
