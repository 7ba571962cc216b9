//! The `peer` benchmark (`tests/bench peer`): the real kube-proxy (ipvs mode) and kipvs,
//! each on a fresh node of the test VM, for one cluster of many Services created through
//! the real kube-apiserver.
//!
//! [`Cluster`] is the cluster's model: it writes the objects the host creates
//! ([`generate`]), the endpoint changes the benchmark makes, and the IPVS table a proxy
//! must program ([`Cluster::expected`]). [`run`] measures each proxy in turn (processes,
//! nodes and captures come from [`crate::driver`] and [`crate::node`]):
//! - start: from the process' start to the node fully programmed (its sync metric set for
//!   both families and `ipvsadm -Sn` equal to the model);
//! - network programming: one endpoint change at a time, from sending the EndpointSlice
//!   update (through `kubectl proxy`) to the kernel showing it, polled from outside the
//!   proxy (a netlink dump of that one virtual service every millisecond); and the proxy's own `kubeproxy_network_programming_duration_seconds`
//!   (the slice is stamped with `endpoints.kubernetes.io/last-change-trigger-time`);
//! - churn: many endpoint changes at a fixed rate: the proxy's CPU seconds and peak RSS
//!   (`/proc/PID/stat`, `VmHWM` reset through `clear_refs` before), the time until the
//!   kernel equals the model;
//! - idle: CPU seconds with no change, and what the proxy wrote into the kernel meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kipvs_ipvs::{Client, Protocol, ServiceKey};
use serde_json::{json, Value};

use crate::driver::{self, Node, Proxy, Running, Setup, SYNC_METRIC};
use crate::node::NodeNs;
use crate::scenario::{Scenario, NODE_IP, NODE_IP6};

/// The namespace of the benchmark's Services.
pub const NAMESPACE: &str = "bench";
/// The node both proxies run as.
pub const NODE_NAME: &str = "node-a";
/// The annotation the EndpointSlice controller stamps on a changed slice.
pub const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// The Service of the API server itself, which the benchmark leaves out of its model.
const KUBERNETES_SERVICE: &str = "-t 10.96.0.1:443";

/// The sizes of a run.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Services in the cluster.
    pub services: usize,
    /// Endpoints of each Service (at most 12).
    pub dests: usize,
    /// Endpoint changes whose programming latency is measured, one at a time.
    pub changes: usize,
    /// Endpoint changes of the churn.
    pub churn: usize,
    /// Their rate, per second.
    pub churn_rate: f64,
    /// How long the idle phase lasts.
    pub idle: Duration,
}

/// One port of a Service.
#[derive(Debug, Clone)]
struct Port {
    name: &'static str,
    port: u16,
    target: u16,
    node_port: Option<u16>,
}

/// One Service of the model, with its one EndpointSlice.
#[derive(Debug, Clone)]
struct Service {
    name: String,
    ip: Ipv4Addr,
    kind: &'static str,
    ports: Vec<Port>,
    load_balancer: Option<Ipv4Addr>,
    endpoints: Vec<Ipv4Addr>,
}

/// The benchmark's cluster: Service `i` (`bench/s<i>`) has ClusterIP 10.96.0.16 + i and
/// one EndpointSlice `s<i>-1` of `dests` endpoints `10.(128+k).(i/256).(i%256)`. One in
/// ten has two ports (80 and 443), one in ten is a NodePort, and one in 2,000 (at least
/// one) a LoadBalancer with ingress IP 203.0.113.x; NodePorts are given from 30000 up.
#[derive(Debug, Clone)]
pub struct Cluster {
    services: Vec<Service>,
    changes: u32,
}

impl Cluster {
    /// The model of `services` Services x `dests` endpoints.
    ///
    /// # Errors
    /// Sizes the address plan cannot hold.
    pub fn new(services: usize, dests: usize) -> Result<Cluster, String> {
        if services == 0 || services > 60_000 {
            return Err(format!("{services} Services: between 1 and 60,000"));
        }
        if dests == 0 || dests > 12 {
            return Err(format!("{dests} endpoints a Service: between 1 and 12"));
        }
        let mut next_node_port = 30000u16;
        let mut lbs = 0u8;
        let mut list = Vec::with_capacity(services);
        for i in 0..services {
            let n = u32::try_from(i).map_err(|e| e.to_string())?;
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 16)) + n);
            let (kind, two_ports) = match i % 10 {
                1 => ("ClusterIP", true),
                2 => ("NodePort", false),
                3 if (i / 10) % 200 == 0 => ("LoadBalancer", false),
                _ => ("ClusterIP", false),
            };
            let mut node_port = || {
                let p = next_node_port;
                next_node_port += 1;
                Some(p)
            };
            let mut ports = vec![Port {
                name: "http",
                port: 80,
                target: 8080,
                node_port: if kind == "ClusterIP" {
                    None
                } else {
                    node_port()
                },
            }];
            if two_ports {
                ports.push(Port {
                    name: "https",
                    port: 443,
                    target: 8443,
                    node_port: None,
                });
            }
            let load_balancer = (kind == "LoadBalancer").then(|| {
                lbs += 1;
                Ipv4Addr::new(203, 0, 113, lbs)
            });
            let [_, _, hi, lo] = n.to_be_bytes();
            let endpoints = (0..dests)
                .map(|k| Ipv4Addr::new(10, 128 + u8::try_from(k).unwrap_or(0), hi, lo))
                .collect();
            list.push(Service {
                name: format!("s{i}"),
                ip,
                kind,
                ports,
                load_balancer,
                endpoints,
            });
        }
        Ok(Cluster {
            services: list,
            changes: 0,
        })
    }

    /// The objects to create, in order: the namespace, the Node, each Service and its
    /// EndpointSlice.
    pub fn objects(&self) -> Vec<Value> {
        let mut out = vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE_NAME,
                "labels": {"kubernetes.io/hostname": NODE_NAME}}}),
        ];
        for s in &self.services {
            let ports: Vec<Value> = s
                .ports
                .iter()
                .map(|p| {
                    let mut port = json!({"name": p.name, "protocol": "TCP", "port": p.port,
                        "targetPort": p.target});
                    if let Some(np) = p.node_port {
                        port["nodePort"] = json!(np);
                    }
                    port
                })
                .collect();
            out.push(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": s.name, "namespace": NAMESPACE},
                "spec": {"type": s.kind, "clusterIP": s.ip.to_string(),
                    "clusterIPs": [s.ip.to_string()], "ports": ports}}));
            out.push(self.slice(s, None));
        }
        out
    }

    /// The status patches to make once the objects exist: `(kind, name, namespace, JSON
    /// merge patch of the status subresource)`.
    pub fn statuses(&self) -> Vec<(String, String, Option<String>, Value)> {
        let mut out = vec![(
            "node".to_owned(),
            NODE_NAME.to_owned(),
            None,
            json!({"status": {"addresses": [
                {"type": "InternalIP", "address": NODE_IP},
                {"type": "InternalIP", "address": NODE_IP6},
                {"type": "Hostname", "address": NODE_NAME}]}}),
        )];
        for s in &self.services {
            if let Some(ip) = s.load_balancer {
                out.push((
                    "service".to_owned(),
                    s.name.clone(),
                    Some(NAMESPACE.to_owned()),
                    json!({"status": {"loadBalancer": {"ingress": [{"ip": ip.to_string()}]}}}),
                ));
            }
        }
        out
    }

    fn endpoints_json(s: &Service) -> Vec<Value> {
        s.endpoints
            .iter()
            .map(|a| json!({"addresses": [a.to_string()], "conditions": {"ready": true}}))
            .collect()
    }

    fn slice(&self, s: &Service, trigger: Option<&str>) -> Value {
        let mut metadata = json!({"name": format!("{}-1", s.name), "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": s.name}});
        if let Some(t) = trigger {
            metadata["annotations"] = json!({TRIGGER_TIME: t});
        }
        let ports: Vec<Value> = s
            .ports
            .iter()
            .map(|p| json!({"name": p.name, "protocol": "TCP", "port": p.target}))
            .collect();
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": metadata, "addressType": "IPv4",
            "endpoints": Self::endpoints_json(s), "ports": ports})
    }

    /// Number of Services.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether there is no Service (never: [`Cluster::new`] refuses it).
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Changes the model: endpoint `slot` of Service `service` gets a fresh address.
    /// Returns the change to make through the API.
    pub fn change(&mut self, service: usize, slot: usize) -> Change {
        let c = self.changes;
        self.changes += 1;
        let [_, b, hi, lo] = c.to_be_bytes();
        let address = Ipv4Addr::new(10, 140 + (b & 3), hi, lo);
        let index = service % self.services.len();
        let s = &mut self.services[index];
        let slot = slot % s.endpoints.len();
        s.endpoints[slot] = address;
        let body = json!({"metadata": {"annotations": {TRIGGER_TIME: TRIGGER_MARK}},
            "endpoints": Self::endpoints_json(s)});
        Change {
            path: format!(
                "/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices/{}-1",
                s.name
            ),
            body: body.to_string(),
            virtual_service: format!("{}:{}", s.ip, s.ports[0].port),
            destination: format!("{address}:{}", s.ports[0].target),
        }
    }

    /// The IPVS table a proxy programs for the cluster: each virtual service (as
    /// `ipvsadm -Sn` names it, `-t ADDRESS:PORT`) with its real servers.
    pub fn expected(&self) -> IpvsTable {
        let mut table = IpvsTable::new();
        for s in &self.services {
            for p in &s.ports {
                let dests: BTreeSet<String> = s
                    .endpoints
                    .iter()
                    .map(|a| format!("{a}:{}", p.target))
                    .collect();
                table.insert(format!("-t {}:{}", s.ip, p.port), dests.clone());
                if let Some(np) = p.node_port {
                    table.insert(format!("-t {NODE_IP}:{np}"), dests.clone());
                }
                if let Some(lb) = s.load_balancer {
                    table.insert(format!("-t {lb}:{}", p.port), dests.clone());
                }
            }
        }
        table
    }
}

/// Stands for the time of the change in a [`Change`]'s body until it is sent.
const TRIGGER_MARK: &str = "@TRIGGER@";

/// One endpoint change: a JSON merge patch of an EndpointSlice, and what the kernel
/// shows once it is applied.
#[derive(Debug, Clone)]
pub struct Change {
    /// The slice's API path.
    pub path: String,
    /// The merge patch, its trigger time still [`TRIGGER_MARK`].
    pub body: String,
    /// The first port's virtual service, `IP:PORT`.
    pub virtual_service: String,
    /// The new destination, `IP:PORT`.
    pub destination: String,
}

/// An IPVS table: virtual service (`-t IP:PORT`) -> real servers (`IP:PORT`).
pub type IpvsTable = BTreeMap<String, BTreeSet<String>>;

/// Reads `ipvsadm -Sn` into an [`IpvsTable`] of the real servers in service (weight above
/// 0), leaving out the API server's own Service; also returns how many real servers are
/// draining (weight 0: both proxies keep a removed endpoint so until its connections end).
pub fn parse_ipvsadm(text: &str) -> (IpvsTable, usize) {
    let mut table = IpvsTable::new();
    let mut draining = 0;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < 3 {
            continue;
        }
        let key = format!("{} {}", words[1], words[2]);
        if key == KUBERNETES_SERVICE {
            continue;
        }
        match words[0] {
            "-A" => {
                table.entry(key).or_default();
            }
            "-a" => {
                let after = |flag: &str| {
                    let i = words.iter().position(|w| *w == flag)?;
                    words.get(i + 1).copied()
                };
                if after("-w") == Some("0") {
                    draining += 1;
                    table.entry(key).or_default();
                } else if let Some(rs) = after("-r") {
                    table.entry(key).or_default().insert(rs.to_owned());
                }
            }
            _ => {}
        }
    }
    (table, draining)
}

/// How `actual` differs from `expected`, shortly; `None` when they are equal.
pub fn table_difference(expected: &IpvsTable, actual: &IpvsTable) -> Option<String> {
    if expected == actual {
        return None;
    }
    let count = |t: &IpvsTable| (t.len(), t.values().map(BTreeSet::len).sum::<usize>());
    let (ev, er) = count(expected);
    let (av, ar) = count(actual);
    let mut out = format!("expected {ev} virtual services / {er} real servers, found {av} / {ar}");
    let mut shown = 0;
    for (k, v) in expected {
        if shown >= 3 {
            break;
        }
        match actual.get(k) {
            None => {
                let _ = write!(out, "; missing {k}");
                shown += 1;
            }
            Some(a) if a != v => {
                let _ = write!(out, "; {k} has {a:?}, not {v:?}");
                shown += 1;
            }
            Some(_) => {}
        }
    }
    for k in actual.keys().filter(|k| !expected.contains_key(*k)).take(3) {
        let _ = write!(out, "; unexpected {k}");
    }
    Some(out)
}

/// Writes the cluster's objects into `dir` for the host to create: `objects-NNNN.json`
/// (a `kind: List` of at most `chunk` objects each, the namespace and the Node in the
/// first) and `statuses.tsv` (`kind`, `name`, `namespace` or `-`, status patch).
///
/// # Errors
/// When a file cannot be written.
pub fn generate(cluster: &Cluster, dir: &Path, chunk: usize) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let objects = cluster.objects();
    let (head, rest) = objects.split_at(2);
    driver::write(
        &dir.join("objects-head.json"),
        &json!({"apiVersion": "v1", "kind": "List", "items": head}).to_string(),
    )?;
    for (n, items) in rest.chunks(chunk.max(2)).enumerate() {
        driver::write(
            &dir.join(format!("objects-{n:04}.json")),
            &json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
        )?;
    }
    let mut tsv = String::new();
    for (kind, name, namespace, patch) in cluster.statuses() {
        let _ = writeln!(
            tsv,
            "{kind}\t{name}\t{}\t{patch}",
            namespace.as_deref().unwrap_or("-")
        );
    }
    driver::write(&dir.join("statuses.tsv"), &tsv)
}

/// The configuration both proxies run with: ipvs mode, kube-proxy's defaults otherwise
/// but for what a node namespace needs (`conntrack.maxPerCore: 0`) and NodePorts on the
/// node's primary addresses.
pub const CONFIG: &str = "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
hostnameOverride: node-a
clusterCIDR: 10.128.0.0/12
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
nodePortAddresses: [primary]
";

/// What was measured of one proxy.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Seconds from the process' start to the node fully programmed.
    pub start: f64,
    /// How the start went (per family, when the kernel was complete), for the report.
    pub start_detail: String,
    /// Peak RSS (KiB) at the end of the start.
    pub start_hwm: u64,
    /// Send -> kernel shows it, per change, milliseconds.
    pub latency: Vec<f64>,
    /// The proxy's own network programming duration, per change, milliseconds.
    pub programming: Vec<f64>,
    /// Round trip of the update through the API server, per change, milliseconds.
    pub round_trip: Vec<f64>,
    /// Syncs the proxy made for the timed changes, and their mean duration (ms).
    pub change_syncs: (f64, f64),
    /// CPU seconds of the churn, until the kernel was exact.
    pub churn_cpu: f64,
    /// Peak RSS (KiB) during the churn.
    pub churn_hwm: u64,
    /// Peak RSS (KiB) over the process' life, at the end of the churn.
    pub life_hwm: u64,
    /// Seconds the churn's updates took to send.
    pub churn_sent: f64,
    /// Seconds from the last update sent to the kernel equal to the model.
    pub churn_settle: f64,
    /// Whether the kernel equalled the model after the churn.
    pub churn_exact: bool,
    /// Real servers still draining (weight 0) once it did.
    pub churn_draining: usize,
    /// Whether the kernel equalled the model at the end of the idle phase, drained
    /// real servers gone.
    pub idle_exact: bool,
    /// CPU seconds of the idle phase.
    pub idle_cpu: f64,
    /// Syncs the proxy reported during the idle phase.
    pub idle_syncs: f64,
    /// kipvs' kernel operations during the idle phase (kipvs only).
    pub idle_ops: Option<f64>,
    /// Whether the node's rules were the same after the idle phase.
    pub idle_same: bool,
}

/// What [`run`] measured of each proxy that went through, and each failure.
pub type Outcomes = (Vec<(Proxy, Measured)>, Vec<String>);

/// Runs the benchmark for each proxy of `proxies`, in order, on the cluster `cluster`
/// (already created through the API server). `api` is `kubectl proxy`'s address.
/// Returns what was measured of each proxy that went through, and the failure of each
/// that did not (a proxy that fails to start or to program what it must, an update the
/// API refuses); the progress goes to standard output as it goes.
///
/// # Errors
/// When the configuration cannot be read.
pub fn run(
    setup: &Setup,
    cluster: &mut Cluster,
    sizes: &Sizes,
    proxies: &[Proxy],
    api: &str,
    sync_timeout: Duration,
) -> Result<Outcomes, String> {
    let scenario = Scenario {
        name: "bench-peer".into(),
        dir: setup.results.clone(),
        objects: Vec::new(),
        config: serde_yaml::from_str(CONFIG).map_err(|e| e.to_string())?,
        node_script: None,
    };
    let metrics = scenario
        .metrics_address()
        .ok_or("the configuration has no metrics server")?;
    let mut out = Vec::new();
    let mut failed = Vec::new();
    for &proxy in proxies {
        let dir = setup.results.join(proxy.name());
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let measured = run_one(
            setup,
            &scenario,
            proxy,
            &dir,
            cluster,
            sizes,
            api,
            &metrics,
            sync_timeout,
        )
        .map_err(|e| format!("{}: {e} (log: {})", proxy.name(), dir.display()));
        match measured {
            Ok(m) => out.push((proxy, m)),
            Err(e) => {
                println!("FAILED: {e}");
                failed.push(e);
            }
        }
    }
    Ok((out, failed))
}

#[allow(clippy::too_many_arguments, clippy::too_many_lines)]
fn run_one(
    setup: &Setup,
    scenario: &Scenario,
    proxy: Proxy,
    dir: &Path,
    cluster: &mut Cluster,
    sizes: &Sizes,
    api: &str,
    metrics: &str,
    sync_timeout: Duration,
) -> Result<Measured, String> {
    let name = proxy.name();
    let say = |what: &str| println!("{name}: {what}");
    let netns = format!("kb-{name}-{}", std::process::id());
    let node = Node::create(&netns, setup, None)?;
    let ns = &node.ns;
    let mut m = Measured::default();

    // Start.
    let wall0 = unix_now();
    let t0 = Instant::now();
    let mut running = driver::start_proxy(setup, scenario, proxy, &netns, dir)?;
    let pid = running.child.id();
    let log = dir.join(format!("{name}.log"));
    let alive = |running: &mut Running| match running.exited() {
        Some(status) => Err(format!("exited ({status}):\n{}", driver::tail(&log))),
        None => Ok(()),
    };
    let samples = loop {
        alive(&mut running)?;
        let samples = ns.metric_samples(metrics, SYNC_METRIC);
        if driver::synced(&samples) {
            break samples;
        }
        if t0.elapsed() > sync_timeout {
            return Err(format!("no sync within {sync_timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let seen_synced = t0.elapsed().as_secs_f64();
    let family_times: Vec<String> = samples
        .iter()
        .map(|(labels, v)| format!("{} {:.1} s", labels.replace('"', ""), v - wall0))
        .collect();
    let last_sync = samples.iter().map(|(_, v)| *v).fold(0.0, f64::max) - wall0;
    let expected = cluster.expected();
    let mut first = true;
    loop {
        alive(&mut running)?;
        let (table, _) = dump(ns)?;
        match table_difference(&expected, &table) {
            None => break,
            Some(d) if t0.elapsed() > sync_timeout => {
                return Err(format!("the kernel never equalled the cluster: {d}"))
            }
            Some(d) => {
                if first {
                    say(&format!("synced, but the kernel is not complete yet: {d}"));
                }
                first = false;
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    m.start = if first {
        last_sync
    } else {
        t0.elapsed().as_secs_f64()
    };
    m.start_detail = format!(
        "last sync metric {} (seen at {seen_synced:.1} s), kernel equal to the cluster {}",
        family_times.join(", "),
        if first {
            "at the first look".to_owned()
        } else {
            format!("at {:.1} s", m.start)
        }
    );
    m.start_hwm = proc_stats(pid)?.hwm;
    let _ = write!(
        m.start_detail,
        "; {} syncs until then, taking {:.1} s in all",
        metric_sum(ns, metrics, SYNC_COUNT),
        metric_sum(ns, metrics, SYNC_SUM)
    );
    say(&format!(
        "start {:.2} s ({}); peak RSS {} MiB",
        m.start,
        m.start_detail,
        m.start_hwm / 1024
    ));

    // Network programming, one change at a time.
    let n = cluster.len();
    let syncs0 = (
        metric_sum(ns, metrics, SYNC_COUNT),
        metric_sum(ns, metrics, SYNC_SUM),
    );
    for j in 0..sizes.changes {
        alive(&mut running)?;
        // Settle: the proxies' minimum sync period (1 s by default) is not the change's.
        std::thread::sleep(Duration::from_millis(1500));
        let service = (j * 7919 + n / 2) % n;
        let change = cluster.change(service, j);
        let count0 = metric_sum(ns, metrics, NP_COUNT);
        let sum0 = metric_sum(ns, metrics, NP_SUM);
        let poller = Poller::start(ns, &change, sync_timeout)?;
        std::thread::sleep(Duration::from_millis(100));
        let sent = Instant::now();
        patch(api, &change)?;
        let answered = sent.elapsed();
        let seen = poller.join().map_err(|e| {
            format!(
                "{} did not show {}: {e}",
                change.virtual_service, change.destination
            )
        })?;
        let latency = seen.saturating_duration_since(sent);
        let deadline = Instant::now() + Duration::from_secs(120);
        let programming = loop {
            let count = metric_sum(ns, metrics, NP_COUNT);
            if count > count0 {
                let sum = metric_sum(ns, metrics, NP_SUM);
                break Some((sum - sum0) / (count - count0) * 1000.0);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        m.latency.push(ms(latency));
        m.round_trip.push(ms(answered));
        if let Some(p) = programming {
            m.programming.push(p);
        }
        say(&format!(
            "change {}: kernel {:.1} ms after the update was sent (API round trip {:.1} ms), own metric {}",
            j + 1,
            ms(latency),
            ms(answered),
            programming.map_or("none".to_owned(), |p| format!("{p:.1} ms"))
        ));
    }

    let syncs = metric_sum(ns, metrics, SYNC_COUNT) - syncs0.0;
    m.change_syncs = (
        syncs,
        (metric_sum(ns, metrics, SYNC_SUM) - syncs0.1) * 1000.0 / syncs.max(1.0),
    );
    say(&format!(
        "the changes took {} syncs, {:.1} ms each on average",
        m.change_syncs.0, m.change_syncs.1
    ));

    // Churn.
    reset_peak(pid)?;
    let before = proc_stats(pid)?;
    let changes: Vec<Change> = (0..sizes.churn)
        .map(|i| cluster.change(i * 7 + 3, i / n.max(1) + 1))
        .collect();
    let started = Instant::now();
    let errors = send_at_rate(api, &changes, sizes.churn_rate);
    m.churn_sent = started.elapsed().as_secs_f64();
    if let Some(e) = errors.first() {
        return Err(format!(
            "{} churn updates failed; the first: {e}",
            errors.len()
        ));
    }
    let sent = Instant::now();
    let expected = cluster.expected();
    let mut shown = false;
    loop {
        alive(&mut running)?;
        let (table, draining) = dump(ns)?;
        match table_difference(&expected, &table) {
            None => {
                m.churn_exact = true;
                m.churn_draining = draining;
                break;
            }
            Some(d) if sent.elapsed() > sync_timeout => {
                say(&format!("after the churn the kernel differs: {d}"));
                break;
            }
            Some(d) => {
                if !shown {
                    say(&format!(
                        "{:.1} s after the churn's last update: {d}",
                        sent.elapsed().as_secs_f64()
                    ));
                    shown = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    m.churn_settle = sent.elapsed().as_secs_f64();
    let after = proc_stats(pid)?;
    m.churn_cpu = after.cpu - before.cpu;
    m.churn_hwm = after.hwm;
    m.life_hwm = before.hwm.max(after.hwm);
    say(&format!(
        "churn: {} changes sent in {:.1} s, kernel exact {:.1} s later: {} ({} real servers draining, weight 0); CPU {:.2} s; peak RSS {} MiB (process life {} MiB, now {} MiB)",
        changes.len(),
        m.churn_sent,
        m.churn_settle,
        m.churn_exact,
        m.churn_draining,
        m.churn_cpu,
        m.churn_hwm / 1024,
        m.life_hwm / 1024,
        after.rss / 1024
    ));

    // Idle.
    std::thread::sleep(Duration::from_secs(5));
    let rules0 = snapshot(ns)?;
    let syncs0 = metric_sum(ns, metrics, SYNC_COUNT);
    let ops0 = metric_sum(ns, metrics, KERNEL_OPS);
    let before = proc_stats(pid)?;
    std::thread::sleep(sizes.idle);
    alive(&mut running)?;
    let after = proc_stats(pid)?;
    let syncs1 = metric_sum(ns, metrics, SYNC_COUNT);
    let ops1 = metric_sum(ns, metrics, KERNEL_OPS);
    let rules1 = snapshot(ns)?;
    let (table, draining) = dump(ns)?;
    m.idle_exact = draining == 0 && table_difference(&cluster.expected(), &table).is_none();
    m.idle_cpu = after.cpu - before.cpu;
    m.idle_syncs = syncs1 - syncs0;
    m.idle_ops = (proxy == Proxy::Kipvs).then_some(ops1 - ops0);
    m.idle_same = rules0 == rules1;
    say(&format!(
        "idle {} s: CPU {:.2} s, {} syncs, kernel operations {}, rules the same after: {}; kernel exact, nothing draining: {}",
        sizes.idle.as_secs(),
        m.idle_cpu,
        m.idle_syncs,
        m.idle_ops.map_or("not exported".to_owned(), |o| o.to_string()),
        m.idle_same,
        m.idle_exact
    ));
    let _ = driver::write(&dir.join("idle.rules.before"), &rules0);
    let _ = driver::write(&dir.join("idle.rules.after"), &rules1);
    running.stop();
    drop(node);
    Ok(m)
}

const NP_COUNT: &str = "kubeproxy_network_programming_duration_seconds_count";
const NP_SUM: &str = "kubeproxy_network_programming_duration_seconds_sum";
const SYNC_COUNT: &str = "kubeproxy_sync_proxy_rules_duration_seconds_count";
const SYNC_SUM: &str = "kubeproxy_sync_proxy_rules_duration_seconds_sum";
const KERNEL_OPS: &str = "kipvs_kernel_operations_total";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The sum of every sample of metric `name` (0 when absent).
fn metric_sum(ns: &NodeNs, metrics: &str, name: &str) -> f64 {
    ns.metric_samples(metrics, name)
        .iter()
        .map(|(_, v)| v)
        .sum()
}

/// The node's IPVS table (`ipvsadm -Sn`), as [`parse_ipvsadm`] reads it.
fn dump(ns: &NodeNs) -> Result<(IpvsTable, usize), String> {
    Ok(parse_ipvsadm(
        &ns.run("ipvsadm", &["-Sn"]).map_err(|e| e.to_string())?,
    ))
}

/// The node's rules: IPVS, ipsets, iptables of both families.
fn snapshot(ns: &NodeNs) -> Result<String, String> {
    ns.run(
        "sh",
        &[
            "-ec",
            "ipvsadm -Sn; ipset save; iptables-save | grep -v '^#'; ip6tables-save | grep -v '^#'",
        ],
    )
    .map_err(|e| e.to_string())
}

/// CPU and memory of a process.
#[derive(Debug, Clone, Copy)]
struct ProcStats {
    /// User + system CPU seconds.
    cpu: f64,
    /// Resident set, KiB.
    rss: u64,
    /// Peak resident set (`VmHWM`), KiB.
    hwm: u64,
}

fn proc_stats(pid: u32) -> Result<ProcStats, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command's closing parenthesis; utime and stime are the 14th and
    // 15th fields of the line, in clock ticks (USER_HZ, 100 on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu = (tick(11) + tick(12)) as f64 / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcStats {
        cpu,
        rss: kib("VmRSS:"),
        hwm: kib("VmHWM:"),
    })
}

/// Resets the process' peak RSS to its current RSS (`clear_refs` 5).
fn reset_peak(pid: u32) -> Result<(), String> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .map_err(|e| format!("/proc/{pid}/clear_refs: {e}"))
}

/// A thread asking the node's IPVS table over netlink (one service's destinations, no
/// process started) every millisecond until the change's destination is there with a
/// weight above 0.
struct Poller {
    thread: std::thread::JoinHandle<Result<Instant, String>>,
}

impl Poller {
    fn start(ns: &NodeNs, change: &Change, timeout: Duration) -> Result<Poller, String> {
        let vs: SocketAddr = change
            .virtual_service
            .parse()
            .map_err(|e| format!("{}: {e}", change.virtual_service))?;
        let dest: SocketAddr = change
            .destination
            .parse()
            .map_err(|e| format!("{}: {e}", change.destination))?;
        let key = ServiceKey::Addr {
            protocol: Protocol::Tcp,
            addr: vs.ip(),
            port: vs.port(),
        };
        let mut client = Client::in_netns(ns.path()).map_err(|e| e.to_string())?;
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < timeout {
                let dests = client.destinations(&key).map_err(|e| e.to_string())?;
                let there = dests.iter().any(|d| {
                    d.destination.addr == dest.ip()
                        && d.destination.port == dest.port()
                        && d.destination.weight > 0
                });
                if there {
                    return Ok(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(format!("not within {timeout:?}"))
        });
        Ok(Poller { thread })
    }

    fn join(self) -> Result<Instant, String> {
        self.thread
            .join()
            .map_err(|_| "the polling thread panicked".to_owned())?
    }
}

/// The time now as RFC 3339 with nanoseconds, UTC (`2026-01-02T03:04:05.123456789Z`), as
/// the EndpointSlice controller writes the trigger time.
pub fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now)
}

/// `since_epoch` as RFC 3339 with nanoseconds, UTC.
pub fn rfc3339(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_nanos()
    )
}

/// Sends the change through `kubectl proxy` at `api`, its trigger time the time now.
fn patch(api: &str, change: &Change) -> Result<(), String> {
    let body = change.body.replace(TRIGGER_MARK, &rfc3339_now());
    let request = format!(
        "PATCH {} HTTP/1.1\r\nHost: {api}\r\nContent-Type: application/merge-patch+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        change.path,
        body.len()
    );
    let mut stream = TcpStream::connect(api).map_err(|e| format!("{api}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{api}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("{api}: {e}"))?;
    let answer = crate::node::parse_response(&raw)?;
    if answer.status != 200 {
        return Err(format!(
            "PATCH {}: {}: {}",
            change.path,
            answer.status,
            answer.body.chars().take(300).collect::<String>()
        ));
    }
    Ok(())
}

/// Sends `changes` at `rate` a second (change `i` at `i / rate` s), from four threads so
/// that one slow answer does not hold the others back. Returns the errors.
fn send_at_rate(api: &str, changes: &[Change], rate: f64) -> Vec<String> {
    let next = AtomicUsize::new(0);
    let errors = Mutex::new(Vec::new());
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(change) = changes.get(i) else {
                    return;
                };
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let at = Duration::from_secs_f64(i as f64 / rate.max(0.001));
                if let Some(wait) = at.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                // Changes to one slice are a Service count apart; a failed one is retried.
                let result = patch(api, change).or_else(|_| patch(api, change));
                if let Err(e) = result {
                    if let Ok(mut errors) = errors.lock() {
                        errors.push(e);
                        if errors.len() > 20 {
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
    });
    errors.into_inner().unwrap_or_default()
}

/// The median and the 99th percentile (nearest rank) of `values`.
pub fn median_p99(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    let rank = (v.len() * 99).div_ceil(100).max(1);
    (median, v[rank - 1])
}

/// The report: every figure of each proxy with kipvs' ratio to kube-proxy's, and the
/// last line `peer: network programming <kipvs median> ms | <ratio>x vs kube-proxy`.
pub fn report(results: &[(Proxy, Measured)], sizes: &Sizes, cluster: &Cluster) -> String {
    let get = |p: Proxy| results.iter().find(|(q, _)| *q == p).map(|(_, m)| m);
    let kp = get(Proxy::KubeProxy);
    let kv = get(Proxy::Kipvs);
    let expected = cluster.expected();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster: {} Services x {} endpoints ({} virtual services, {} real servers in IPVS)",
        sizes.services,
        cluster.services.first().map_or(0, |s| s.endpoints.len()),
        expected.len(),
        expected.values().map(BTreeSet::len).sum::<usize>()
    );
    // `faster`: kube-proxy's figure over kipvs' (how many times faster or less kipvs
    // needs); otherwise kipvs' over kube-proxy's.
    let mut line = |what: &str, unit: &str, f: &dyn Fn(&Measured) -> f64, faster: bool| {
        let a = kv.map(f);
        let b = kp.map(f);
        let ratio = match (a, b) {
            (Some(a), Some(b)) if faster && a > 0.0 => {
                format!(" | {:.1}x faster than kube-proxy", b / a)
            }
            (Some(a), Some(b)) if !faster && b > 0.0 => format!(" | {:.2}x kube-proxy's", a / b),
            _ => String::new(),
        };
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2} {unit}"));
        let _ = writeln!(
            out,
            "{what}: kipvs {}, kube-proxy {}{ratio}",
            show(a),
            show(b)
        );
    };
    line(
        "start (process start -> node fully programmed)",
        "s",
        &|m| m.start,
        true,
    );
    line(
        "network programming, median (update sent -> kernel shows it)",
        "ms",
        &|m| median_p99(&m.latency).0,
        true,
    );
    line(
        "network programming, p99",
        "ms",
        &|m| median_p99(&m.latency).1,
        true,
    );
    line(
        "kubeproxy_network_programming_duration_seconds, median",
        "ms",
        &|m| median_p99(&m.programming).0,
        true,
    );
    line(
        "kubeproxy_network_programming_duration_seconds, p99",
        "ms",
        &|m| median_p99(&m.programming).1,
        true,
    );
    line(
        "sync duration during the timed changes, mean",
        "ms",
        &|m| m.change_syncs.1,
        true,
    );
    line("churn CPU", "s", &|m| m.churn_cpu, false);
    line(
        "churn peak RSS",
        "MiB",
        &|m| m.churn_hwm as f64 / 1024.0,
        false,
    );
    line(
        "peak RSS over the process' life",
        "MiB",
        &|m| m.life_hwm as f64 / 1024.0,
        false,
    );
    line(
        "churn: last update sent -> kernel exact",
        "s",
        &|m| m.churn_settle,
        true,
    );
    line("idle CPU", "s", &|m| m.idle_cpu, false);
    line("idle syncs", "", &|m| m.idle_syncs, false);
    for (p, m) in results {
        let _ = writeln!(
            out,
            "{}: start: {}; API round trip median {:.1} ms; {} of {} own programming samples; churn of {} changes sent in {:.1} s at {}/s, kernel exact after: {} ({} draining); idle {} s: kernel operations {}, rules unchanged: {}, kernel exact with nothing draining at its end: {}",
            p.name(),
            m.start_detail,
            median_p99(&m.round_trip).0,
            m.programming.len(),
            m.latency.len(),
            sizes.churn,
            m.churn_sent,
            sizes.churn_rate,
            m.churn_exact,
            m.churn_draining,
            sizes.idle.as_secs(),
            m.idle_ops.map_or("not exported (compared the rules instead)".to_owned(), |o| o.to_string()),
            m.idle_same,
            m.idle_exact
        );
    }
    let np = kv.map(|m| median_p99(&m.latency).0);
    let ratio = match (np, kp.map(|m| median_p99(&m.latency).0)) {
        (Some(a), Some(b)) if a > 0.0 => format!("{:.0}x", b / a),
        _ => "-".to_owned(),
    };
    let _ = writeln!(
        out,
        "peer: network programming {} ms | {ratio} vs kube-proxy",
        np.map_or("-".to_owned(), |v| format!("{v:.1}"))
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_has_the_mix_of_the_issue_and_its_expected_table() {
        let c = Cluster::new(2001, 10).unwrap();
        let t = c.expected();
        // 2,001 ClusterIPs, 200 second ports, 200 NodePorts, and the one LoadBalancer's
        // NodePort and ingress IP.
        let lbs = c
            .services
            .iter()
            .filter(|s| s.load_balancer.is_some())
            .count();
        assert_eq!(lbs, 1);
        let node_ports = c.services.iter().filter(|s| s.kind == "NodePort").count();
        assert_eq!(node_ports, 200);
        assert_eq!(t.len(), 2001 + 200 + 200 + 1 + 1);
        assert!(t.values().all(|d| d.len() == 10));
        assert_eq!(
            t["-t 10.96.0.17:443"].iter().next().unwrap(),
            "10.128.0.1:8443"
        );
        assert!(t.contains_key("-t 192.168.1.10:30000"));
        assert!(t.contains_key("-t 203.0.113.1:80"));
    }

    #[test]
    fn a_change_replaces_one_endpoint_in_the_model_and_the_patch() {
        let mut c = Cluster::new(20, 3).unwrap();
        let change = c.change(5, 1);
        assert_eq!(change.virtual_service, "10.96.0.21:80");
        assert_eq!(change.destination, "10.140.0.0:8080");
        let body: Value = serde_json::from_str(&change.body).unwrap();
        assert_eq!(body["endpoints"][1]["addresses"][0], "10.140.0.0");
        assert_eq!(body["endpoints"][0]["addresses"][0], "10.128.0.5");
        assert!(c.expected()["-t 10.96.0.21:80"].contains("10.140.0.0:8080"));
        assert_eq!(
            change.path,
            "/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices/s5-1"
        );
    }

    #[test]
    fn ipvsadm_output_reads_into_a_table_without_the_api_servers_service() {
        let text = "-A -t 10.96.0.1:443 -s rr\n-a -t 10.96.0.1:443 -r 10.0.2.100:6443 -m -w 1\n-A -t 10.96.0.16:80 -s rr\n-a -t 10.96.0.16:80 -r 10.128.0.0:8080 -m -w 1\n";
        let (t, draining) = parse_ipvsadm(text);
        assert_eq!(draining, 0);
        assert_eq!(t.len(), 1);
        assert!(t["-t 10.96.0.16:80"].contains("10.128.0.0:8080"));
        let c = Cluster::new(1, 1).unwrap();
        assert_eq!(table_difference(&c.expected(), &t), None);
        assert!(table_difference(&IpvsTable::new(), &t).is_some());
        let (t, draining) = parse_ipvsadm(
            "-A -t 10.96.0.16:80 -s rr\n-a -t 10.96.0.16:80 -r 10.9.9.9:8080 -m -w 0\n-a -t 10.96.0.16:80 -r 10.128.0.0:8080 -m -w 1\n",
        );
        assert_eq!(draining, 1);
        assert_eq!(table_difference(&c.expected(), &t), None);
    }

    #[test]
    fn times_are_rfc3339_with_nanoseconds() {
        assert_eq!(
            rfc3339(Duration::new(1_780_000_000, 5)),
            "2026-05-28T20:26:40.000000005Z"
        );
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn median_and_p99_by_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(median_p99(&v), (10.5, 20.0));
        assert_eq!(median_p99(&[3.0]), (3.0, 3.0));
    }
}
