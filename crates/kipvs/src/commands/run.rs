//! `kipvs run`: the daemon.
//!
//! Reads the configuration (refusing a bad one with the reason), prepares the node
//! without removing anything that carries traffic, starts the health and metrics
//! servers, then runs the sync loop on events from the cluster source, with the
//! healthCheckNodePort servers following it (not in dry runs). SIGTERM and
//! SIGINT stop it and leave every rule in place, as kube-proxy does.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use kipvs_ipvs::Family;
use kipvs_kube::events::{EventRecorder, ServiceRef};
use kipvs_kube::source::{self, ClusterEvent};
use kipvs_kube::watch::{watch_cluster, WatchConfig};
use kipvs_proxy::Proxier;
use tokio::sync::{mpsc, watch};

use super::Failure;
use crate::cli::RunArgs;
use crate::config::flags::Resolved;
use crate::config::{Config, LogFormat};
use crate::owners::{self, Recorder};
use crate::servers::service_health::listeners::{self, Reporter};
use crate::servers::service_health::HealthChecks;
use crate::servers::{self, health::ProxyHealth, Shared};
use crate::sync::families;
use crate::sync::kernel::{Kernel, SimulatedKernel};
use crate::sync::node::{local_addresses, NodeKernel};
use crate::sync::run_loop::{Mode, Outcome, SyncLoop, Timing, WarningSink};

/// The dummy link VIPs are bound to.
pub const LINK_NAME: &str = "kube-ipvs0";

/// How often a state file is checked for changes.
const STATE_FILE_POLL: Duration = Duration::from_secs(1);

/// Sets up logging: `RUST_LOG` when set, else info (debug from verbosity 4 up), as
/// text or JSON lines on standard error, in colour only when that is a terminal.
pub fn init_logging(format: LogFormat, verbosity: u32) {
    let default = if verbosity >= 4 { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a person at a terminal: log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // A second initialisation (tests) keeps the first.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The configuration the command line resolves to, with kube-proxy's precedence (see
/// [`crate::config::flags`]).
///
/// Fails with the file, line, column and field of a bad configuration, or the flag.
/// Nothing is logged here (logging is not set up yet): call [`Resolved::log`] on the
/// result once it is.
pub fn load_config(args: &RunArgs) -> Result<Resolved, String> {
    args.command_line().resolve().map_err(|e| e.to_string())
}

/// This node's name: the override, else the hostname, lower-cased as Kubernetes does.
fn node_name(config: &Config) -> String {
    config
        .hostname_override
        .clone()
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
        })
        .unwrap_or_default()
        .trim()
        .to_lowercase()
}

/// Runs `kipvs run`.
///
/// Fails when the configuration is invalid, the node cannot be prepared (no privileges,
/// no IPVS) or the cluster source cannot be reached; with `--once`, exits 1 without a
/// failure when an operation failed (each is logged).
pub fn main(args: &RunArgs) -> Result<ExitCode, Failure> {
    if args.cleanup {
        // kube-proxy's --cleanup, kept as an alias of `kipvs cleanup` (which reads, checks
        // and reports on the configuration itself).
        return crate::commands::cleanup::main(&crate::cli::CleanupArgs {
            config: args.config.clone(),
        });
    }
    let resolved =
        load_config(args).map_err(|why| Failure::Other(format!("invalid configuration: {why}")))?;
    init_logging(
        resolved.loaded.config.log_format,
        resolved.loaded.config.verbosity,
    );
    resolved.log();
    let master = resolved.master.clone();
    super::runtime(2)?.block_on(run(args, resolved.loaded.config, master))
}

async fn run(args: &RunArgs, config: Config, master: Option<String>) -> Result<ExitCode, Failure> {
    let node_name = node_name(&config);
    if node_name.is_empty() {
        return Err(Failure::Other(
            "cannot tell this node's name: pass --hostname-override".to_owned(),
        ));
    }
    let shared = Shared::new(ProxyHealth::new(config.ipvs.sync_period * 2));
    start_servers(&config, Arc::clone(&shared)).await?;

    let (tx, rx) = mpsc::channel::<ClusterEvent>(1024);
    let mut recorder = None;
    match args.state.clone() {
        Some(state) => {
            tokio::spawn(source::watch_state_file(state, STATE_FILE_POLL, tx));
        }
        None => {
            let client =
                kipvs_kube::client::client(config.kubeconfig.as_deref(), master.as_deref())
                    .await
                    .map_err(|err| Failure::Other(format!("cannot reach the API server: {err}")))?;
            recorder = Some(EventRecorder::new(client.clone(), &node_name));
            let node = node_name.clone();
            tokio::spawn(async move {
                watch_cluster(client, &node, tx, WatchConfig::default()).await;
            });
        }
    }

    let timing = Timing {
        sync_period: config.ipvs.sync_period,
        min_sync_period: config.ipvs.min_sync_period,
        retry: Duration::from_secs(1).min(config.ipvs.sync_period),
    };
    let mode = if args.once {
        Mode::Once
    } else {
        Mode::Continuous
    };
    let addresses = local_addresses(LINK_NAME).unwrap_or_default();
    let node = kipvs_proxy::Node::new(node_name.clone()).with_addresses(addresses.iter().copied());
    // The node's kernel is prepared before the core: which address families run is
    // decided there, once, as kube-proxy decides them at start. A dry run touches
    // nothing and plans both.
    let kernel = if args.dry_run {
        None
    } else {
        // Until the Node object arrives, only bindAddress can say the primary family.
        let primary = families::primary_family(&config.bind_address, &[]);
        let kernel = NodeKernel::setup(&config, LINK_NAME, primary)
            .await
            .map_err(|err| Failure::from(err).context("cannot prepare the node"))?;
        Some(kernel)
    };
    let families = kernel
        .as_ref()
        .map_or_else(|| vec![Family::V4, Family::V6], |k| k.families().to_vec());
    // Until the Node object arrives, only bindAddress can stand for the primary addresses.
    let core_for = {
        let config = config.clone();
        let drain_timeout = args.drain_timeout;
        let families = families.clone();
        move |node_addresses: &[std::net::IpAddr]| {
            let mut core = config.core(&config.primary_addresses(node_addresses));
            core.drain_timeout = drain_timeout;
            core.families = families.clone();
            core
        }
    };
    let proxier = Proxier::new(core_for(&[]), node);
    let node_config: crate::sync::run_loop::NodeConfig = {
        let (bind_address, families) = (config.bind_address.clone(), families.clone());
        Box::new(move |info| {
            // kube-proxy refuses to start on a node whose primary family it cannot run.
            let primary = families::primary_family(&bind_address, &info.addresses);
            if !families.contains(&primary) {
                return Err(format!(
                    "no support for primary IP family \"{}\" (the Node's addresses: {:?})",
                    crate::servers::ip_family(primary),
                    info.addresses
                ));
            }
            Ok(core_for(&info.addresses))
        })
    };
    tracing::info!(node = %node_name, dry_run = args.dry_run, "kipvs starting");

    let events = recorder;
    let sink = events
        .clone()
        .map(|recorder| -> Box<dyn WarningSink> { Box::new(Events(recorder)) });
    let outcome = if let Some(kernel) = kernel {
        let recorder = Recorder::new(owners::path(args.owners_file.as_deref()), &node_name);
        tracing::info!(path = %recorder.path().display(), "recording Service ownership");
        let (health_checks, wanted) = watch::channel(HealthChecks::default());
        let reporter = Reporter {
            node_name: node_name.clone(),
            events: events.clone(),
        };
        tokio::spawn(listeners::run(wanted, Arc::clone(&shared), reporter));
        let sync = SyncLoop::new(proxier, &node_name, kernel, shared, timing)
            .with_owners_recorder(recorder)
            .with_health_checks(health_checks)
            .with_node_config(node_config);
        drive(with_sink(sync, sink), rx, mode).await
    } else {
        let kernel = DryRun(SimulatedKernel::default());
        let sync = SyncLoop::new(proxier, &node_name, kernel, shared, timing)
            .with_node_config(node_config);
        drive(with_sink(sync, sink), rx, mode).await
    };
    match outcome {
        Some(Outcome::Once { success: true }) => Ok(ExitCode::SUCCESS),
        Some(Outcome::Once { success: false }) => Ok(ExitCode::from(1)),
        Some(Outcome::SourceClosed) => Err(Failure::Other("the cluster source stopped".to_owned())),
        Some(Outcome::Fatal(why)) => Err(Failure::Other(format!("cannot run on this node: {why}"))),
        None => {
            tracing::info!("stopping; the kernel rules stay in place");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Warnings about Services as Kubernetes Events on them.
struct Events(EventRecorder);

impl WarningSink for Events {
    fn warn(&self, service: &kipvs_proxy::ServiceName, warning: &kipvs_proxy::Warning) {
        let service = ServiceRef::new(&service.namespace, &service.name);
        self.0
            .warn_in_background(&service, warning.reason.as_str(), &warning.message);
    }

    fn clear(&self, service: &kipvs_proxy::ServiceName) {
        self.0
            .forget(&ServiceRef::new(&service.namespace, &service.name));
    }

    fn failed(&self, service: &kipvs_proxy::ServiceName, message: &str) {
        let service = ServiceRef::new(&service.namespace, &service.name);
        self.0
            .warn_in_background(&service, crate::sync::run_loop::FAILED_TO_PROGRAM, message);
    }
}

fn with_sink<K: Kernel>(sync: SyncLoop<K>, sink: Option<Box<dyn WarningSink>>) -> SyncLoop<K> {
    match sink {
        Some(sink) => sync.with_warning_sink(sink),
        None => sync,
    }
}

/// Runs the loop until it ends or a termination signal arrives (`None`).
async fn drive<K: Kernel>(
    mut sync: SyncLoop<K>,
    rx: mpsc::Receiver<ClusterEvent>,
    mode: Mode,
) -> Option<Outcome> {
    use tokio::signal::unix::{signal, SignalKind};
    // Registered now, not when first polled: the loop may run pass after pass without
    // yielding (a slow kernel, changes queued), and a SIGTERM arriving before
    // registration would kill kipvs instead of stopping it.
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let terminate = async {
        tokio::select! {
            () = received(term.as_mut()) => {},
            () = received(int.as_mut()) => {},
        }
    };
    tokio::select! {
        outcome = sync.run(rx, mode) => Some(outcome),
        () = terminate => None,
    }
}

/// Waits for `signal`; forever when it could not be registered.
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Starts the health and metrics servers. A port that cannot be bound is fatal only
/// with bindAddressHardFail, as in kube-proxy.
async fn start_servers(config: &Config, shared: Arc<Shared>) -> Result<(), Failure> {
    for (what, addr, router) in [
        (
            "health",
            config.healthz_bind_address,
            servers::health_router(Arc::clone(&shared)),
        ),
        (
            "metrics",
            config.metrics_bind_address,
            servers::metrics_router(Arc::clone(&shared)),
        ),
    ] {
        match servers::bind(addr, router).await {
            Ok((bound, serve)) => {
                tracing::info!(server = what, address = %bound, "serving");
                tokio::spawn(serve);
            }
            Err(err) if config.bind_address_hard_fail => {
                return Err(Failure::Other(format!(
                    "cannot serve {what} on {addr}: {err}"
                )));
            }
            Err(err) => {
                tracing::warn!(server = what, address = %addr, error = %err, "cannot serve")
            }
        }
    }
    Ok(())
}

/// `--dry-run`: plans are logged, the kernel is left alone. The plans are applied to a
/// simulation, so each later plan shows only what changed since.
#[derive(Debug)]
struct DryRun(SimulatedKernel);

impl Kernel for DryRun {
    fn observe(&mut self) -> Result<kipvs_proxy::Observed, crate::sync::kernel::ObserveError> {
        self.0.observe()
    }

    fn apply(&mut self, plan: &kipvs_proxy::Plan) -> crate::sync::kernel::Report {
        for op in &plan.ipvs {
            tracing::info!(op = ?op, "dry run: would apply");
        }
        for addr in &plan.binds {
            tracing::info!(address = %addr, "dry run: would bind");
        }
        for addr in &plan.unbinds {
            tracing::info!(address = %addr, "dry run: would unbind");
        }
        self.0.apply(plan)
    }

    fn reconcile_conntrack(
        &mut self,
        family: kipvs_ipvs::Family,
        frontends: &kipvs_proxy::Frontends,
    ) -> Result<u64, crate::sync::kernel::ReconcileError> {
        tracing::info!(?family, "dry run: would delete stale UDP conntrack entries");
        self.0.reconcile_conntrack(family, frontends)
    }
}
