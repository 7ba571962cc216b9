//! The driver: for each scenario, the cluster is created through the real API server,
//! then kube-proxy and kipvs each run on a fresh node (a new network namespace) until
//! synced, the node is captured, the proxy stopped (SIGTERM) and the namespace thrown
//! away; the two captures are compared.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::capture::Capture;
use crate::compare::{differences, Comparison, Outcome};
use crate::node::{NodeNs, Probes};
use crate::rules::Rule;
use crate::scenario::{Scenario, NODE_IP, NODE_SETUP};

/// The sample both proxies set after a sync: when it is non-zero, a sync has happened.
pub const SYNC_METRIC: &str = "kubeproxy_sync_proxy_rules_last_timestamp_seconds";

/// The real peers and how to reach the API server.
#[derive(Debug, Clone)]
pub struct Peers {
    /// The kube-proxy binary.
    pub kube_proxy: PathBuf,
    /// The kubectl binary.
    pub kubectl: PathBuf,
    /// A kubeconfig with admin rights, for creating the scenarios' objects.
    pub admin_kubeconfig: PathBuf,
    /// kube-proxy's kubeconfig (`system:node-proxier`).
    pub kube_proxy_kubeconfig: PathBuf,
    /// kipvs' kubeconfig (its ServiceAccount's token).
    pub kipvs_kubeconfig: PathBuf,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The kipvs binary.
    pub kipvs: PathBuf,
    /// The peers.
    pub peers: Peers,
    /// A program run inside each node namespace for as long as the node lives, that
    /// makes the API server reachable there (tests/peer/apiserver-forward), and the
    /// address it then listens on; none when the API server is reachable without.
    pub forward: Option<(PathBuf, String)>,
    /// Where captures, configs and logs go (one directory per scenario).
    pub results: PathBuf,
    /// How long a proxy may take to report its first sync.
    pub sync_timeout: Duration,
}

/// The two proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    /// The real kube-proxy.
    KubeProxy,
    /// kipvs.
    Kipvs,
}

impl Proxy {
    /// Its name, in file names and reports.
    pub fn name(self) -> &'static str {
        match self {
            Proxy::KubeProxy => "kube-proxy",
            Proxy::Kipvs => "kipvs",
        }
    }
}

/// A scenario's result: the comparison, or why it could not be made.
#[derive(Debug)]
pub struct ScenarioResult {
    /// The scenario's name.
    pub name: String,
    /// The comparison, or the failure.
    pub comparison: Result<Comparison, String>,
}

/// The totals of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Scenarios run.
    pub scenarios: usize,
    /// With identical captures.
    pub identical: usize,
    /// With every difference explained.
    pub explained: usize,
    /// With an unexplained difference, or that failed to run.
    pub unexplained: usize,
    /// Of those, the ones that failed to run.
    pub failed: usize,
}

impl Totals {
    /// Adds up results.
    pub fn of(results: &[ScenarioResult]) -> Totals {
        let mut t = Totals {
            scenarios: results.len(),
            ..Totals::default()
        };
        for r in results {
            match &r.comparison {
                Ok(c) => match c.outcome() {
                    Outcome::Identical => t.identical += 1,
                    Outcome::Explained => t.explained += 1,
                    Outcome::Unexplained => t.unexplained += 1,
                },
                Err(_) => {
                    t.unexplained += 1;
                    t.failed += 1;
                }
            }
        }
        t
    }

    /// The last line of a run.
    pub fn line(&self) -> String {
        format!(
            "conformance: {} scenarios, {} identical, {} explained, {} unexplained",
            self.scenarios, self.identical, self.explained, self.unexplained
        )
    }
}

/// How a scenario's result is reported: a heading line, then its differences.
pub fn report(result: &ScenarioResult) -> String {
    let mut out = String::new();
    match &result.comparison {
        Err(why) => {
            let _ = writeln!(out, "scenario {}: FAILED: {why}", result.name);
        }
        Ok(c) => {
            let n = c.judged.len();
            let unexplained = c.unexplained().count();
            let _ = match c.outcome() {
                Outcome::Identical => writeln!(out, "scenario {}: identical", result.name),
                Outcome::Explained => {
                    writeln!(out, "scenario {}: explained ({n} differences)", result.name)
                }
                Outcome::Unexplained => writeln!(
                    out,
                    "scenario {}: UNEXPLAINED ({unexplained} of {n} differences)",
                    result.name
                ),
            };
            out.push_str(&c.report());
        }
    }
    out
}

/// Every unexplained difference of a run, once, with the scenarios it was found in
/// (`-` only kube-proxy's node has the line, `+` only kipvs'), most widespread first: the
/// list of what kipvs still does differently.
pub fn unexplained_summary(results: &[ScenarioResult]) -> String {
    let mut seen: std::collections::BTreeMap<(String, char, String), Vec<&str>> =
        std::collections::BTreeMap::new();
    for result in results {
        let Ok(comparison) = &result.comparison else {
            continue;
        };
        for d in comparison.unexplained() {
            let sign = match d.side {
                crate::rules::Side::KubeProxy => '-',
                crate::rules::Side::Kipvs => '+',
            };
            seen.entry((d.section.to_string(), sign, d.line.clone()))
                .or_default()
                .push(&result.name);
        }
    }
    let mut rows: Vec<_> = seen.into_iter().collect();
    rows.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
    let mut out = String::new();
    for ((section, sign, line), scenarios) in rows {
        let _ = writeln!(
            out,
            "{section} {sign}{line}\n    in {} scenarios: {}",
            scenarios.len(),
            scenarios.join(", ")
        );
    }
    out
}

/// Runs one scenario: creates its objects, runs both proxies, compares.
pub fn run_scenario(setup: &Setup, scenario: &Scenario, rules: &[Rule]) -> ScenarioResult {
    let dir = setup.results.join(&scenario.name);
    let comparison = (|| {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let kubectl = Kubectl {
            bin: setup.peers.kubectl.clone(),
            kubeconfig: setup.peers.admin_kubeconfig.clone(),
        };
        kubectl.reset()?;
        kubectl.create(scenario, &dir)?;
        let kube_proxy = run_proxy(setup, scenario, Proxy::KubeProxy, &dir)?;
        let kipvs = run_proxy(setup, scenario, Proxy::Kipvs, &dir)?;
        Ok(Comparison::new(&kube_proxy, &kipvs, rules))
    })();
    let result = ScenarioResult {
        name: scenario.name.clone(),
        comparison,
    };
    let _ = std::fs::write(dir.join("report.txt"), report(&result));
    result
}

/// Runs `proxy` on a fresh node for `scenario` until it has synced and its node is
/// stable, captures the node, stops the proxy and deletes the node.
fn run_proxy(
    setup: &Setup,
    scenario: &Scenario,
    proxy: Proxy,
    dir: &Path,
) -> Result<Capture, String> {
    let netns = format!("kc-{}-{}", proxy.name(), std::process::id());
    let node = Node::create(&netns, setup, scenario.node_script.as_deref())?;
    let name = proxy.name();
    let log_path = dir.join(format!("{name}.log"));
    let mut running = start_proxy(setup, scenario, proxy, &netns, dir)?;
    let probes = Probes {
        healthz: scenario.healthz_address(),
        metrics: scenario.metrics_address(),
        health_check_node_ports: scenario.health_check_node_ports(),
        node_ip: NODE_IP.to_owned(),
    };
    let failed = |why: String| format!("{name}: {why} (log: {})", log_path.display());
    let metrics = probes.metrics.clone().ok_or_else(|| {
        failed("the scenario turns the metrics server off: no way to see a sync".into())
    })?;
    let start = Instant::now();
    loop {
        if let Some(status) = running.exited() {
            return Err(failed(format!(
                "exited ({status}) before its first sync:\n{}",
                tail(&log_path)
            )));
        }
        if synced(&node.ns.metric_samples(&metrics, SYNC_METRIC)) {
            break;
        }
        if start.elapsed() > setup.sync_timeout {
            return Err(failed(format!(
                "no sync within {:?}:\n{}",
                setup.sync_timeout,
                tail(&log_path)
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let capture = stable_capture(&node.ns, &probes).map_err(failed)?;
    write(&dir.join(format!("{name}.capture")), &capture.render())?;
    running.stop();
    Ok(capture)
}

/// Starts `proxy` in the node namespace `netns` with the scenario's configuration (its
/// kubeconfig filled in), writing `PROXY.config.yaml` and `PROXY.log` into `dir`. The
/// process is the proxy itself (`ip netns exec` executes it in place), so its id is the
/// proxy's.
pub(crate) fn start_proxy(
    setup: &Setup,
    scenario: &Scenario,
    proxy: Proxy,
    netns: &str,
    dir: &Path,
) -> Result<Running, String> {
    let name = proxy.name();
    let kubeconfig = match proxy {
        Proxy::KubeProxy => &setup.peers.kube_proxy_kubeconfig,
        Proxy::Kipvs => &setup.peers.kipvs_kubeconfig,
    };
    let config = dir.join(format!("{name}.config.yaml"));
    write(&config, &scenario.config_with_kubeconfig(kubeconfig))?;
    let log_path = dir.join(format!("{name}.log"));
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let err_log = log.try_clone().map_err(|e| e.to_string())?;
    let config_arg = config.display().to_string();
    let owners = dir.join("kipvs.owners.json").display().to_string();
    let args: Vec<&str> = match proxy {
        Proxy::KubeProxy => vec!["--config", &config_arg],
        Proxy::Kipvs => vec!["run", "--config", &config_arg, "--owners-file", &owners],
    };
    let bin = match proxy {
        Proxy::KubeProxy => &setup.peers.kube_proxy,
        Proxy::Kipvs => &setup.kipvs,
    };
    let child = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(bin)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    Ok(Running { child, name })
}

/// Whether the samples of [`SYNC_METRIC`] say the proxy has synced: each is set, and
/// when they are per address family (an `ip_family` label, as kube-proxy's), both of the
/// node's families have one (kube-proxy syncs them one after the other).
pub(crate) fn synced(samples: &[(String, f64)]) -> bool {
    let families: Vec<&str> = samples
        .iter()
        .filter_map(|(labels, _)| {
            labels
                .split(',')
                .find_map(|l| l.trim().strip_prefix("ip_family="))
                .map(|v| v.trim_matches('"'))
        })
        .collect();
    !samples.is_empty()
        && samples.iter().all(|(_, v)| *v > 0.0)
        && (families.is_empty() || NODE_FAMILIES.iter().all(|f| families.contains(f)))
}

/// The address families every node namespace has ([`NODE_SETUP`]).
const NODE_FAMILIES: [&str; 2] = ["IPv4", "IPv6"];

/// Captures until two captures in a row, 2 s apart, are equal (a proxy may sync more
/// than once as its informers settle).
fn stable_capture(ns: &NodeNs, probes: &Probes) -> Result<Capture, String> {
    let mut last = ns.capture(probes).map_err(|e| e.to_string())?;
    for _ in 0..15 {
        std::thread::sleep(Duration::from_secs(2));
        let next = ns.capture(probes).map_err(|e| e.to_string())?;
        if next == last {
            return Ok(next);
        }
        let moved: Vec<String> = differences(&last, &next)
            .iter()
            .take(5)
            .map(|d| format!("{} {}", d.section, d.line))
            .collect();
        eprintln!("  still settling: {}", moved.join("; "));
        last = next;
    }
    let again = ns.capture(probes).map_err(|e| e.to_string())?;
    let moving: Vec<String> = differences(&last, &again)
        .iter()
        .map(|d| format!("{} {}", d.section, d.line))
        .collect();
    Err(format!(
        "the node never settled; still changing: {}",
        moving.join("; ")
    ))
}

/// A process of the run (a proxy, a forwarder); stopped (SIGTERM, then SIGKILL after
/// 30 s) when dropped.
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) name: &'static str,
}

impl Running {
    /// Its exit status, once it has exited.
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops it: SIGTERM, SIGKILL after 30 s.
    pub(crate) fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let start = Instant::now();
        while self.exited().is_none() {
            if start.elapsed() > Duration::from_secs(30) {
                eprintln!("{} did not stop within 30 s of SIGTERM: killed", self.name);
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh node namespace (with its API server forwarder, if any); deleted when dropped.
pub(crate) struct Node {
    pub(crate) ns: NodeNs,
    forwarder: Option<Running>,
}

impl Node {
    /// Creates the namespace `name` with [`NODE_SETUP`], starts the setup's forwarder in
    /// it and runs `node_script` (a scenario's `node.sh`) there.
    pub(crate) fn create(
        name: &str,
        setup: &Setup,
        node_script: Option<&str>,
    ) -> Result<Node, String> {
        // A namespace left by an interrupted run goes first.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(Command::new("ip").args(["netns", "add", name]))?;
        let mut node = Node {
            ns: NodeNs::new(name),
            forwarder: None,
        };
        node.ns
            .run("sh", &["-euc", NODE_SETUP])
            .map_err(|e| e.to_string())?;
        if let Some((program, listen)) = &setup.forward {
            let child = Command::new("ip")
                .args(["netns", "exec", name])
                .arg(program)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
            node.forwarder = Some(Running {
                child,
                name: "the API server forwarder",
            });
            let start = Instant::now();
            while !node.ns.accepts(listen) {
                if start.elapsed() > Duration::from_secs(20) {
                    return Err(format!("{} does not listen on {listen}", program.display()));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if let Some(script) = node_script {
            node.ns
                .run("sh", &["-euc", script])
                .map_err(|e| format!("node.sh: {e}"))?;
        }
        Ok(node)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", self.ns.name()])
            .output();
    }
}

/// kubectl with the admin kubeconfig.
struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str]) -> Result<String, String> {
        run(Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args))
    }

    /// Deletes what earlier scenarios created: every Service and EndpointSlice but the
    /// API server's own `default/kubernetes`, and every Node. Namespaces stay (without
    /// a controller manager they would never finish terminating).
    fn reset(&self) -> Result<(), String> {
        self.run(&[
            "delete",
            "services,endpointslices.discovery.k8s.io,nodes",
            "-A",
            "--field-selector",
            "metadata.name!=kubernetes",
        ])?;
        Ok(())
    }

    /// Creates the scenario's namespaces and objects, then writes their statuses (one
    /// kubectl each: every process is slow in an emulated VM).
    fn create(&self, scenario: &Scenario, dir: &Path) -> Result<(), String> {
        let namespaces = scenario.namespaces().into_iter().map(|ns| {
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        });
        let items: Vec<serde_json::Value> = namespaces.chain(scenario.creatable()).collect();
        let objects = dir.join("objects.json");
        write(
            &objects,
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
        )?;
        // A ClusterIP or NodePort freed by the reset can take a moment to be reusable.
        let apply = |file: &Path, extra: &[&str]| -> Result<(), String> {
            let file = file.display().to_string();
            let mut args = vec!["apply", "--server-side", "--force-conflicts", "-f", &file];
            args.extend_from_slice(extra);
            let mut attempt = 0;
            loop {
                match self.run(&args) {
                    Ok(_) => return Ok(()),
                    Err(e) if attempt < 10 => {
                        attempt += 1;
                        eprintln!("{}: apply failed, retrying: {e}", scenario.name);
                        std::thread::sleep(Duration::from_secs(3));
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        apply(&objects, &[])?;
        // Statuses by JSON merge patch, as a kubelet replaces its Node's addresses (a
        // server-side apply would refuse two InternalIPs: it keys addresses by type).
        for status in scenario.statuses() {
            let kind = status["kind"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let name = status["metadata"]["name"].as_str().unwrap_or_default();
            let patch = serde_json::json!({"status": status["status"]}).to_string();
            let mut args = vec!["patch", &kind, name];
            if let Some(ns) = status["metadata"]["namespace"].as_str() {
                args.extend(["-n", ns]);
            }
            args.extend(["--subresource=status", "--type=merge", "-p", &patch]);
            self.run(&args)?;
        }
        Ok(())
    }
}

fn run(command: &mut Command) -> Result<String, String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{command:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The last 30 lines of a log file.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Section;

    fn result(name: &str, kube_proxy: &[&str], kipvs: &[&str]) -> ScenarioResult {
        let capture = |lines: &[&str]| {
            let mut c = Capture::new();
            c.set(
                Section::Sysctl,
                lines.iter().map(|l| (*l).to_owned()).collect(),
            );
            c
        };
        ScenarioResult {
            name: name.to_owned(),
            comparison: Ok(Comparison::new(&capture(kube_proxy), &capture(kipvs), &[])),
        }
    }

    #[test]
    fn a_sync_counts_once_every_family_has_synced() {
        let sample = |labels: &str, v: f64| (labels.to_owned(), v);
        assert!(!synced(&[]));
        assert!(synced(&[sample("", 1.7e9)]));
        assert!(!synced(&[sample("", 0.0)]));
        assert!(!synced(&[sample("ip_family=\"IPv4\"", 1.7e9)]));
        assert!(synced(&[
            sample("ip_family=\"IPv4\"", 1.7e9),
            sample("ip_family=\"IPv6\"", 1.7e9)
        ]));
        assert!(!synced(&[
            sample("ip_family=\"IPv4\"", 1.7e9),
            sample("ip_family=\"IPv6\"", 0.0)
        ]));
    }

    #[test]
    fn totals_and_the_summary_count_each_difference_once_with_its_scenarios() {
        let results = [
            result("a", &["x = 1"], &["x = 2"]),
            result("b", &["x = 1", "y = 1"], &["x = 2", "y = 1"]),
            result("c", &["y = 1"], &["y = 1"]),
            ScenarioResult {
                name: "d".into(),
                comparison: Err("no sync".into()),
            },
        ];
        let totals = Totals::of(&results);
        assert_eq!(
            totals.line(),
            "conformance: 4 scenarios, 1 identical, 0 explained, 3 unexplained"
        );
        assert_eq!(totals.failed, 1);
        assert_eq!(
            unexplained_summary(&results),
            "sysctl +x = 2\n    in 2 scenarios: a, b\nsysctl -x = 1\n    in 2 scenarios: a, b\n"
        );
        assert!(report(&results[3]).starts_with("scenario d: FAILED: no sync"));
        assert!(report(&results[2]).starts_with("scenario c: identical"));
    }
}
