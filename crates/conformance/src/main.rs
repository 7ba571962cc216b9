//! `kipvs-conformance`: runs the conformance scenarios against the real kube-proxy, or
//! captures one node, or compares two captures (see the crate's documentation).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use kipvs_conformance::bench;
use kipvs_conformance::capture::Capture;
use kipvs_conformance::compare::{Comparison, Outcome};
use kipvs_conformance::driver::{self, Peers, Proxy, Setup, Totals};
use kipvs_conformance::node::{NodeNs, Probes};
use kipvs_conformance::rules::{self, Rule};
use kipvs_conformance::scenario::Scenario;

/// Conformance of kipvs with the real kube-proxy.
#[derive(Debug, Parser)]
#[command(name = "kipvs-conformance")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run scenarios against the real peers; the last line is the totals.
    Run(RunArgs),
    /// Capture a node (a named network namespace) and print the capture.
    Capture(CaptureArgs),
    /// Compare kube-proxy's capture with kipvs' under the README's rules.
    Compare(CompareArgs),
    /// Compare again every scenario of an earlier run's results (after a change to the
    /// README's table, say): the same report and totals as `run`, without a VM.
    Recompare(RecompareArgs),
    /// Write the objects of the `peer` benchmark's cluster, for the host to create.
    BenchGenerate(BenchGenerateArgs),
    /// Run the `peer` benchmark (in the VM, the cluster created): kube-proxy and kipvs.
    Bench(BenchArgs),
}

/// The programs and credentials of both proxies and the cluster, which `run` and `bench`
/// take alike.
#[derive(Debug, Args)]
struct PeerArgs {
    /// The kipvs binary.
    #[arg(long)]
    kipvs: PathBuf,
    /// The kube-proxy binary.
    #[arg(long)]
    kube_proxy: PathBuf,
    /// The kubectl binary.
    #[arg(long)]
    kubectl: PathBuf,
    /// An admin kubeconfig (`bench` also runs `kubectl proxy` with it, through which its
    /// changes are made).
    #[arg(long)]
    admin_kubeconfig: PathBuf,
    /// kube-proxy's kubeconfig.
    #[arg(long)]
    kube_proxy_kubeconfig: PathBuf,
    /// kipvs' kubeconfig.
    #[arg(long)]
    kipvs_kubeconfig: PathBuf,
    /// A program run inside each node namespace while it lives, making the API server
    /// reachable there (tests/peer/apiserver-forward).
    #[arg(long)]
    forward: Option<PathBuf>,
    /// The address the forwarder listens on inside the namespace.
    #[arg(long, default_value = "127.0.0.1:6443")]
    forward_listen: String,
}

impl PeerArgs {
    /// The driver's setup for these peers, writing into `results`.
    fn setup(&self, results: &std::path::Path, sync_timeout: u64) -> Setup {
        Setup {
            kipvs: self.kipvs.clone(),
            peers: Peers {
                kube_proxy: self.kube_proxy.clone(),
                kubectl: self.kubectl.clone(),
                admin_kubeconfig: self.admin_kubeconfig.clone(),
                kube_proxy_kubeconfig: self.kube_proxy_kubeconfig.clone(),
                kipvs_kubeconfig: self.kipvs_kubeconfig.clone(),
            },
            forward: self
                .forward
                .clone()
                .map(|program| (program, self.forward_listen.clone())),
            results: results.to_path_buf(),
            sync_timeout: Duration::from_secs(sync_timeout),
        }
    }
}

#[derive(Debug, Args)]
struct BenchGenerateArgs {
    /// Services in the cluster.
    #[arg(long)]
    services: usize,
    /// Endpoints of each Service.
    #[arg(long, default_value_t = 10)]
    dests: usize,
    /// Objects a file.
    #[arg(long, default_value_t = 500)]
    chunk: usize,
    /// The directory to write into.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Services in the cluster (as generated).
    #[arg(long)]
    services: usize,
    /// Endpoints of each Service (as generated).
    #[arg(long, default_value_t = 10)]
    dests: usize,
    /// Endpoint changes timed one at a time.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Endpoint changes of the churn.
    #[arg(long, default_value_t = 1000)]
    churn: usize,
    /// Their rate, per second.
    #[arg(long, default_value_t = 20.0)]
    churn_rate: f64,
    /// Seconds of the idle phase.
    #[arg(long, default_value_t = 300)]
    idle: u64,
    /// The proxies to measure, in order (kube-proxy, kipvs).
    #[arg(long, value_delimiter = ',', default_value = "kube-proxy,kipvs")]
    proxies: Vec<String>,
    #[command(flatten)]
    peers: PeerArgs,
    /// The port `kubectl proxy` listens on (127.0.0.1).
    #[arg(long, default_value_t = 8001)]
    api_port: u16,
    /// Where configs and logs go.
    #[arg(long)]
    results: PathBuf,
    /// Seconds a proxy may take to program the cluster, or a change.
    #[arg(long, default_value_t = 3600)]
    sync_timeout: u64,
}

#[derive(Debug, Args)]
struct RecompareArgs {
    /// The results directory of a run (one directory per scenario with both captures).
    results: PathBuf,
    /// The README holding the table of intended differences.
    #[arg(long)]
    readme: PathBuf,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The corpus: one directory per scenario.
    #[arg(long)]
    scenarios: PathBuf,
    /// Run only these scenarios (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The README holding the table of intended differences.
    #[arg(long)]
    readme: PathBuf,
    #[command(flatten)]
    peers: PeerArgs,
    /// Where captures, configs and logs go.
    #[arg(long)]
    results: PathBuf,
    /// Seconds a proxy may take to report its first sync.
    #[arg(long, default_value_t = 300)]
    sync_timeout: u64,
}

#[derive(Debug, Args)]
struct CaptureArgs {
    /// The node's network namespace (`ip netns` name).
    #[arg(long)]
    netns: String,
    /// HOST:PORT of /healthz.
    #[arg(long)]
    healthz: Option<String>,
    /// HOST:PORT of /metrics.
    #[arg(long)]
    metrics: Option<String>,
    /// A healthCheckNodePort to ask (repeatable).
    #[arg(long = "health-check-node-port")]
    health_check_node_ports: Vec<u16>,
    /// The node address healthCheckNodePorts are asked on.
    #[arg(long, default_value = kipvs_conformance::scenario::NODE_IP)]
    node_ip: String,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// kube-proxy's capture.
    kube_proxy: PathBuf,
    /// kipvs' capture.
    kipvs: PathBuf,
    /// The README holding the table of intended differences.
    #[arg(long)]
    readme: PathBuf,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Run(args) => run(&args),
        Cmd::Capture(args) => capture(&args),
        Cmd::Compare(args) => compare(&args),
        Cmd::Recompare(args) => recompare(&args),
        Cmd::BenchGenerate(args) => bench_generate(&args),
        Cmd::Bench(args) => bench(&args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("kipvs-conformance: {e}");
        ExitCode::FAILURE
    })
}

fn read_rules(readme: &PathBuf) -> Result<Vec<Rule>, String> {
    let text = std::fs::read_to_string(readme).map_err(|e| format!("{}: {e}", readme.display()))?;
    rules::from_readme(&text).map_err(|e| format!("{}: {e}", readme.display()))
}

fn run(args: &RunArgs) -> Result<ExitCode, String> {
    let rules = read_rules(&args.readme)?;
    let mut scenarios = Scenario::load_all(&args.scenarios).map_err(|e| e.to_string())?;
    if !args.only.is_empty() {
        for name in &args.only {
            if !scenarios.iter().any(|s| &s.name == name) {
                return Err(format!(
                    "no scenario {name} in {}",
                    args.scenarios.display()
                ));
            }
        }
        scenarios.retain(|s| args.only.contains(&s.name));
    }
    let setup = args.peers.setup(&args.results, args.sync_timeout);
    let mut results = Vec::new();
    for scenario in &scenarios {
        let result = driver::run_scenario(&setup, scenario, &rules);
        print!("{}", driver::report(&result));
        results.push(result);
    }
    Ok(finish(&results, &args.results))
}

/// Writes the summary of unexplained differences into `dir`, prints the totals and
/// says how the run went.
fn finish(results: &[driver::ScenarioResult], dir: &std::path::Path) -> ExitCode {
    let summary = dir.join("unexplained.txt");
    if let Err(e) = std::fs::write(&summary, driver::unexplained_summary(results)) {
        eprintln!("{}: {e}", summary.display());
    }
    let totals = Totals::of(results);
    if totals.failed > 0 {
        let failed: Vec<&str> = results
            .iter()
            .filter(|r| r.comparison.is_err())
            .map(|r| r.name.as_str())
            .collect();
        println!(
            "conformance: {} scenarios failed to run (counted as unexplained): {}",
            totals.failed,
            failed.join(", ")
        );
    }
    println!("{}", totals.line());
    if totals.unexplained == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn recompare(args: &RecompareArgs) -> Result<ExitCode, String> {
    let rules = read_rules(&args.readme)?;
    let entries =
        std::fs::read_dir(&args.results).map_err(|e| format!("{}: {e}", args.results.display()))?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("kube-proxy.capture").is_file() || p.join("report.txt").is_file())
        .collect();
    dirs.sort();
    let mut results = Vec::new();
    for dir in dirs {
        let name = dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let comparison = (|| {
            let kube_proxy = read_capture(&dir.join("kube-proxy.capture"))?;
            let kipvs = read_capture(&dir.join("kipvs.capture"))?;
            Ok(Comparison::new(&kube_proxy, &kipvs, &rules))
        })();
        let result = driver::ScenarioResult { name, comparison };
        print!("{}", driver::report(&result));
        results.push(result);
    }
    Ok(finish(&results, &args.results))
}

fn read_capture(path: &std::path::Path) -> Result<Capture, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Capture::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn capture(args: &CaptureArgs) -> Result<ExitCode, String> {
    let probes = Probes {
        healthz: args.healthz.clone(),
        metrics: args.metrics.clone(),
        health_check_node_ports: args.health_check_node_ports.clone(),
        node_ip: args.node_ip.clone(),
    };
    let capture = NodeNs::new(&args.netns)
        .capture(&probes)
        .map_err(|e| e.to_string())?;
    print!("{}", capture.render());
    Ok(ExitCode::SUCCESS)
}

fn compare(args: &CompareArgs) -> Result<ExitCode, String> {
    let rules = read_rules(&args.readme)?;
    let comparison = Comparison::new(
        &read_capture(&args.kube_proxy)?,
        &read_capture(&args.kipvs)?,
        &rules,
    );
    print!("{}", comparison.report());
    let outcome = comparison.outcome();
    println!(
        "{}",
        match outcome {
            Outcome::Identical => "identical",
            Outcome::Explained => "explained",
            Outcome::Unexplained => "unexplained",
        }
    );
    Ok(if outcome == Outcome::Unexplained {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn bench_generate(args: &BenchGenerateArgs) -> Result<ExitCode, String> {
    let cluster = bench::Cluster::new(args.services, args.dests)?;
    bench::generate(&cluster, &args.out, args.chunk)?;
    Ok(ExitCode::SUCCESS)
}

fn bench(args: &BenchArgs) -> Result<ExitCode, String> {
    let mut cluster = bench::Cluster::new(args.services, args.dests)?;
    let proxies = args
        .proxies
        .iter()
        .map(|p| match p.as_str() {
            "kube-proxy" => Ok(Proxy::KubeProxy),
            "kipvs" => Ok(Proxy::Kipvs),
            other => Err(format!("unknown proxy {other} (kube-proxy, kipvs)")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sizes = bench::Sizes {
        services: args.services,
        dests: args.dests,
        changes: args.changes,
        churn: args.churn,
        churn_rate: args.churn_rate,
        idle: Duration::from_secs(args.idle),
    };
    let setup = args.peers.setup(&args.results, args.sync_timeout);
    std::fs::create_dir_all(&args.results)
        .map_err(|e| format!("{}: {e}", args.results.display()))?;
    // Changes go through `kubectl proxy` (plain HTTP on the loopback), so that the
    // benchmark times the update itself and not a kubectl process.
    let api = format!("127.0.0.1:{}", args.api_port);
    let log =
        std::fs::File::create(args.results.join("kubectl-proxy.log")).map_err(|e| e.to_string())?;
    let mut kubectl_proxy = std::process::Command::new(&args.peers.kubectl)
        .arg("--kubeconfig")
        .arg(&args.peers.admin_kubeconfig)
        .args([
            "proxy",
            "--address",
            "127.0.0.1",
            "--port",
            &args.api_port.to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("kubectl proxy: {e}"))?;
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(&api).is_err() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = kubectl_proxy.kill();
            return Err(format!("kubectl proxy does not listen on {api}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let result = bench::run(
        &setup,
        &mut cluster,
        &sizes,
        &proxies,
        &api,
        Duration::from_secs(args.sync_timeout),
    );
    let _ = kubectl_proxy.kill();
    let _ = kubectl_proxy.wait();
    let (results, failed) = result?;
    print!("{}", bench::report(&results, &sizes, &cluster));
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
