//! The command-line contract (see the README): `run`, `plan`, `dump`, `cleanup`,
//! `prepare`, `version`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// kipvs: Kubernetes Services on Linux IPVS, a drop-in for kube-proxy's ipvs mode.
#[derive(Debug, Parser)]
#[command(name = "kipvs", version = crate::version::LONG)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy: keep the kernel equal to the cluster's Services.
    Run(RunArgs),
    /// Print the IPVS table kipvs would program for a state file.
    Plan(PlanArgs),
    /// Print the kernel's IPVS table as `ipvsadm -Ln` does.
    Dump(DumpArgs),
    /// Remove everything kipvs owns from the kernel.
    Cleanup(CleanupArgs),
    /// Load IPVS and set the sysctls `run` needs (the privileged part of start-up).
    Prepare(PrepareArgs),
    /// Print the version.
    Version,
}

/// Options of `kipvs run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// kube-proxy's KubeProxyConfiguration YAML.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// kubeconfig to reach the API server (default: in-cluster).
    #[arg(long, conflicts_with = "state")]
    pub kubeconfig: Option<PathBuf>,
    /// Replay Kubernetes manifests from a YAML file instead of watching an API server.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// This node's name, if not the hostname.
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// Sync once, then exit: 0 when every operation succeeded.
    #[arg(long)]
    pub once: bool,
    /// Plan and log, but change nothing in the kernel.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove everything kipvs owns, then exit (as `kube-proxy --cleanup`).
    #[arg(long)]
    pub cleanup: bool,
    /// Where to record which Service owns each virtual server, for `kipvs dump
    /// --services` (default: $KIPVS_OWNERS_FILE, else /run/kipvs/owners.json).
    #[arg(long, value_name = "FILE")]
    pub owners_file: Option<PathBuf>,
    /// kipvs' own: delete a leaving TCP endpoint after it has drained this long (Go
    /// duration: 15m, 1h30m) even with connections left. Default: as kube-proxy, wait
    /// until its connections end, however long.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Option<std::time::Duration>,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::config::duration::parse_go_duration(text).map_err(|e| e.to_string())
}

/// Options of `kipvs cleanup`.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// kube-proxy's KubeProxyConfiguration YAML (for excludeCIDRs and the like).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Options of `kipvs prepare`.
#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// kube-proxy's KubeProxyConfiguration YAML (for ipvs.strictARP).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Options of `kipvs plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Kubernetes manifests to plan for.
    #[arg(long)]
    pub state: PathBuf,
    /// kube-proxy's KubeProxyConfiguration YAML.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Show the operations against the kernel's current state.
    #[arg(long)]
    pub diff: bool,
    /// This node's name, if not the hostname (picks the Node of the state file).
    #[arg(long)]
    pub hostname_override: Option<String>,
}

/// Options of `kipvs dump`.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Counters, as `ipvsadm -Ln --stats`.
    #[arg(long, conflicts_with = "rate")]
    pub stats: bool,
    /// Rates, as `ipvsadm -Ln --rate`.
    #[arg(long)]
    pub rate: bool,
    /// Exact numbers, as `ipvsadm --exact`.
    #[arg(long)]
    pub exact: bool,
    /// Connections, as `ipvsadm -Lnc`.
    #[arg(long)]
    pub connections: bool,
    /// Rules in `ipvsadm -Sn` form.
    #[arg(long)]
    pub save: bool,
    /// Show each virtual server's owning Service.
    #[arg(long)]
    pub services: bool,
    /// Machine-readable JSON (the document is described in the README).
    #[arg(long, conflicts_with_all = ["stats", "rate", "connections", "save"])]
    pub json: bool,
    /// Kubernetes manifests that say which Service owns each virtual server (for
    /// `--services` and `--service`), instead of the owners file `kipvs run` writes.
    #[arg(long, conflicts_with = "owners_file")]
    pub state: Option<PathBuf>,
    /// The owners file `kipvs run` writes (default: $KIPVS_OWNERS_FILE, else
    /// /run/kipvs/owners.json); read for `--services` and `--service` without `--state`.
    #[arg(long, value_name = "FILE")]
    pub owners_file: Option<PathBuf>,
    /// kube-proxy's KubeProxyConfiguration YAML, used with `--state`.
    #[arg(long, requires = "state")]
    pub config: Option<PathBuf>,
    /// This node's name, if not the hostname, used with `--state`.
    #[arg(long, requires = "state")]
    pub hostname_override: Option<String>,
    /// Only the virtual servers of this Service (`namespace/name`).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub service: Vec<String>,
    /// Only the virtual servers on this address.
    #[arg(long, value_name = "ADDRESS")]
    pub vip: Vec<std::net::IpAddr>,
}
