//! `kipvs prepare`: the privileged half of start-up, run once per boot of the pod.
//!
//! Loading kernel modules and writing `/proc/sys` need more than the long-running proxy
//! should hold (in a container, a writable `/proc/sys` means a privileged container).
//! The DaemonSet runs this as a privileged init container; `kipvs run` then finds every
//! sysctl already set, writes nothing, and keeps only NET_ADMIN and NET_RAW.

use std::process::ExitCode;

use crate::cli::PrepareArgs;
use crate::sync::node::prepare_kernel;

/// Runs `kipvs prepare`.
pub fn main(args: &PrepareArgs) -> ExitCode {
    let config = match super::optional_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match prepare_kernel(&config) {
        Ok(()) => {
            println!("IPVS loaded and kube-proxy's ipvs sysctls set");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("kipvs: cannot prepare the node: {err}");
            ExitCode::from(1)
        }
    }
}
