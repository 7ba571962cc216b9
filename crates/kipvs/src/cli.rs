//! The command-line contract (see the README): `run`, `plan`, `dump`, `cleanup`,
//! `prepare`, `version`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::flags::{CommandLine, KubeProxyFlags};

/// The command line with `run` put in front when it is kube-proxy's (no subcommand,
/// flags first: `kipvs --config=FILE --hostname-override=NAME`), so kube-proxy's own
/// argv starts the proxy unchanged. `--help` and `--version` alone keep their meaning.
pub fn kube_proxy_argv<I: IntoIterator<Item = std::ffi::OsString>>(
    args: I,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let flags_first = match args.get(1).map(|a| a.to_string_lossy()) {
        None => true,
        Some(first) => {
            first.starts_with('-')
                && !matches!(first.as_ref(), "-h" | "--help" | "-V" | "--version")
        }
    };
    if flags_first {
        args.insert(1.min(args.len()), "run".into());
    }
    args
}

/// kipvs: Kubernetes Services on Linux IPVS, a drop-in for kube-proxy's ipvs mode.
#[derive(Debug, Parser)]
#[command(
    name = "kipvs",
    version = crate::version::LONG,
    after_help = "kube-proxy's own command line works too: without a subcommand, `kipvs --config=FILE --hostname-override=NAME ...` is `kipvs run ...`."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy: keep the kernel equal to the cluster's Services.
    Run(Box<RunArgs>),
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
    /// kubeconfig to reach the API server (default: in-cluster); ignored with
    /// --config, as kube-proxy ignores it (set clientConnection.kubeconfig there).
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
    /// kube-proxy's flags, with kube-proxy's meaning and precedence.
    #[command(flatten)]
    pub kube_proxy: KubeProxyFlags,
}

impl RunArgs {
    /// What these arguments say about the configuration.
    pub fn command_line(&self) -> CommandLine {
        CommandLine {
            config: self.config.clone(),
            kubeconfig: self.kubeconfig.clone(),
            hostname_override: self.hostname_override.clone(),
            flags: self.kube_proxy.clone(),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        kube_proxy_argv(args.iter().map(std::ffi::OsString::from))
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn kube_proxys_argv_without_a_subcommand_is_run() {
        assert_eq!(
            argv(&["kipvs", "--config=/c", "--hostname-override=n"]),
            ["kipvs", "run", "--config=/c", "--hostname-override=n"]
        );
        assert_eq!(argv(&["kipvs", "-v", "2"]), ["kipvs", "run", "-v", "2"]);
        assert_eq!(argv(&["kipvs"]), ["kipvs", "run"]);
        assert_eq!(
            argv(&["kipvs", "dump", "--stats"]),
            ["kipvs", "dump", "--stats"]
        );
        assert_eq!(argv(&["kipvs", "--version"]), ["kipvs", "--version"]);
        assert_eq!(argv(&["kipvs", "--help"]), ["kipvs", "--help"]);
    }

    #[test]
    fn kube_proxys_flags_parse_as_run_arguments() {
        let cli = Cli::try_parse_from(argv(&[
            "kube-proxy",
            "--config=/var/lib/kube-proxy/config.conf",
            "--hostname-override=node-a",
            "--cleanup",
            "--v=2",
        ]))
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run");
        };
        assert!(run.cleanup);
        assert_eq!(run.kube_proxy.verbosity, Some(2));
        assert_eq!(run.hostname_override.as_deref(), Some("node-a"));
    }
}
