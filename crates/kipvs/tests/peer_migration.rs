//! Migration under traffic, against the real peers: a node programmed by the real
//! kube-proxy (ipvs mode) is taken over by `kipvs run` and handed back, while pods and an
//! outside client keep talking to a ClusterIP, a NodePort and a LoadBalancer IP.
//!
//! The node is the end-to-end topology of `e2e/` (pods routed to a node namespace, an
//! external client, servers that say which pod answered). Services, EndpointSlices and
//! the Node are created through the real kube-apiserver with the real kubectl; both
//! proxies read the same KubeProxyConfiguration but for `clientConnection.kubeconfig`,
//! which names each one's own credentials (kube-proxy's, and kipvs' ServiceAccount's:
//! with `--config`, kipvs ignores `--kubeconfig` as kube-proxy does).
//!
//! 1. kube-proxy programs the node; at the same time kipvs programs a second, fresh node
//!    with the same addresses (the reference for what kipvs programs on a fresh node).
//! 2. Traffic starts: new TCP connections, long-lived TCP connections and UDP, from a pod
//!    and from outside, to the three kinds of address.
//! 3. kube-proxy gets SIGTERM (it dies at once, leaving its rules); `kipvs run` starts
//!    and adopts the node. The node must then equal the fresh kipvs node.
//! 4. kipvs gets SIGTERM; kube-proxy starts again. The node must then equal what
//!    kube-proxy programmed on it when it was fresh (step 1).
//!
//! Asserted: no request failed, every long-lived connection answered throughout from the
//! pod it first reached, and both node states. Compared: the IPVS table (`ipvsadm -Sn`,
//! sorted), the ipsets (`ipset save`, members sorted), kube-ipvs0 and its addresses, and
//! `iptables-save` / `ip6tables-save` (rule order inside each chain kept). The sysctls
//! either proxy writes are captured and reported but not asserted: a sysctl the previous
//! proxy wrote stays as it was, which is no fault of the next one.
//!
//! Not a `kernel*` target: it needs the real peers (`tests/peer/cluster env`) and takes
//! about ten minutes in the emulated VM, so `tests/run` does not run it;
//! `tests/peer/migration` does.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod e2e;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use e2e::{addr, Cluster, Service, KIPVS, NODE, NODE_IP, NODE_IP6};
use kipvs_testkit::{terminate, Netns};

/// The LoadBalancer ingress IP clients use.
const LB_IP: &str = "203.0.113.20";
/// How long kube-proxy may take to report its first sync of both families (62-163 s
/// were seen in the emulated VM under load).
const KUBE_PROXY_SYNC: Duration = Duration::from_secs(600);
/// How long kipvs may take to report its first sync.
const KIPVS_SYNC: Duration = Duration::from_secs(240);
/// How long the node may take to settle into the expected state after a sync.
const SETTLE: Duration = Duration::from_secs(120);
/// The pause between two requests of one traffic flow.
const PACE: Duration = Duration::from_millis(150);
/// A request slower than this is counted as slow (a dropped SYN costs 1 s).
const SLOW: Duration = Duration::from_millis(900);
/// How long a client waits to connect or for an answer before the request counts as
/// failed. Long enough that a request only fails when a packet is lost for good (TCP
/// retransmits a SYN after 1 s and 3 s): in the emulated VM, under load, answers that
/// were merely late took up to 3.7 s.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP connection to a Service, kept open across requests; each request is a line,
/// each answer the pod's name and the source it saw.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connects from `ns` to `dst`.
    fn open(ns: &Netns, dst: SocketAddr) -> io::Result<Client> {
        let stream = {
            let _inside = ns.enter();
            TcpStream::connect_timeout(&dst, ANSWER_TIMEOUT)?
        };
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        Ok(Client {
            reader: BufReader::new(stream),
        })
    }

    /// One request; the name of the pod that answered.
    fn ask(&mut self) -> io::Result<String> {
        self.reader.get_mut().write_all(b"?\n")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        pod_of(&line)
    }
}

/// The pod's name in an answer (`NAME SOURCE`).
fn pod_of(answer: &str) -> io::Result<String> {
    answer
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("answer {answer:?}")))
}

/// One request on a new TCP connection from `ns` to `dst`.
fn tcp_request(ns: &Netns, dst: SocketAddr) -> io::Result<String> {
    Client::open(ns, dst)?.ask()
}

/// A UDP socket in `ns` connected to `dst` (one source port for all its datagrams).
fn udp_socket(ns: &Netns, dst: SocketAddr) -> io::Result<UdpSocket> {
    let socket = {
        let _inside = ns.enter();
        UdpSocket::bind("0.0.0.0:0")?
    };
    socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    socket.connect(dst)?;
    Ok(socket)
}

/// One datagram on `socket` and its answer: the pod's name.
fn udp_ask(socket: &UdpSocket) -> io::Result<String> {
    socket.send(b"?\n")?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf)?;
    pod_of(&String::from_utf8_lossy(&buf[..n]))
}

/// One datagram from a new socket (a new source port) in `ns` to `dst`.
fn udp_request(ns: &Netns, dst: SocketAddr) -> io::Result<String> {
    udp_ask(&udp_socket(ns, dst)?)
}

/// The real peers, as `tests/peer/cluster env` describes them.
struct Peers {
    bin: PathBuf,
    admin: PathBuf,
    kipvs: PathBuf,
    kube_proxy: PathBuf,
}

impl Peers {
    fn from_env() -> Peers {
        let var = |name: &str| -> PathBuf {
            std::env::var_os(name)
                .unwrap_or_else(|| {
                    panic!("{name} is not set: run this test with tests/peer/migration")
                })
                .into()
        };
        Peers {
            bin: var("KIPVS_PEER_BIN"),
            admin: var("KIPVS_PEER_KUBECONFIG_ADMIN"),
            kipvs: var("KIPVS_PEER_KUBECONFIG_KIPVS"),
            kube_proxy: var("KIPVS_PEER_KUBECONFIG_KUBE_PROXY"),
        }
    }

    /// Runs kubectl as the admin (in the VM's root namespace, where the API server is
    /// served); panics with its output when it fails.
    fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.admin)
            .args(args)
            .output()
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates namespace `e2e`, Node [`NODE`] with both node addresses, and `services`
    /// with their EndpointSlices and LoadBalancer status, replacing any earlier ones.
    fn create(&self, dir: &Path, services: &[Service]) {
        let mut yaml = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: e2e}}\n---\n\
             apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE}\n  labels: {{kubernetes.io/hostname: {NODE}}}\n"
        );
        for s in services {
            yaml.push_str("---\n");
            yaml.push_str(&s.yaml());
        }
        let file = dir.join("objects.yaml");
        std::fs::write(&file, yaml).unwrap();
        // A cluster kept from an earlier run may hold other e2e objects.
        self.kubectl(&[
            "delete",
            "--ignore-not-found",
            "-n",
            "e2e",
            "services,endpointslices",
            "--all",
        ]);
        self.kubectl(&["apply", "-f", file.to_str().unwrap()]);
        let addresses = format!(
            r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{NODE_IP}"}},{{"type":"InternalIP","address":"{NODE_IP6}"}},{{"type":"Hostname","address":"{NODE}"}}]}}}}"#
        );
        self.kubectl(&[
            "patch",
            "node",
            NODE,
            "--subresource=status",
            "--type=merge",
            "-p",
            &addresses,
        ]);
        for s in services.iter().filter(|s| !s.load_balancer_ips.is_empty()) {
            let ingress: Vec<String> = s
                .load_balancer_ips
                .iter()
                .map(|ip| format!(r#"{{"ip":"{ip}"}}"#))
                .collect();
            let status = format!(
                r#"{{"status":{{"loadBalancer":{{"ingress":[{}]}}}}}}"#,
                ingress.join(",")
            );
            self.kubectl(&[
                "-n",
                "e2e",
                "patch",
                "service",
                s.name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status,
            ]);
        }
    }
}

/// `tests/peer/apiserver-forward` in a namespace, stopped on drop.
struct Forward(Child);

impl Forward {
    /// Starts the forwarder in `ns`.
    fn start(ns: &Netns) -> Forward {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/peer/apiserver-forward"
        );
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), script])
            .stdout(Stdio::null())
            .spawn()
            .expect("apiserver-forward starts");
        // It listens once socat runs; wait for the port.
        let start = Instant::now();
        loop {
            let up = {
                let _inside = ns.enter();
                TcpStream::connect_timeout(&addr("127.0.0.1", 6443), Duration::from_secs(1)).is_ok()
            };
            if up {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "apiserver-forward never listened"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Forward(child)
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The two proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proxy {
    KubeProxy,
    Kipvs,
}

impl Proxy {
    /// The proxy's name in messages.
    fn name(self) -> &'static str {
        match self {
            Proxy::KubeProxy => "kube-proxy",
            Proxy::Kipvs => "kipvs",
        }
    }

    /// Starts the proxy in `ns` with its configuration file `config`, its output
    /// appended to `log`.
    fn spawn(self, peers: &Peers, ns: &Netns, config: &Path, log: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name()]);
        match self {
            Proxy::KubeProxy => {
                cmd.arg(peers.bin.join("kube-proxy"))
                    .arg("--config")
                    .arg(config)
                    .arg("--v=2");
            }
            Proxy::Kipvs => {
                cmd.args([KIPVS, "run", "--config"]).arg(config);
            }
        }
        cmd.stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", self.name()))
    }

    /// Whether the proxy's `/metrics` says it has synced everything queued: kube-proxy
    /// reports each family's first sync separately (labelled `ip_family`) and runs the
    /// IPv4 one to the end before IPv6's; kipvs syncs both in one pass.
    fn synced(self, metrics: &str) -> bool {
        let last = samples(metrics, "kubeproxy_sync_proxy_rules_last_timestamp_seconds");
        match self {
            Proxy::KubeProxy => ["IPv4", "IPv6"].iter().all(|family| {
                last.iter()
                    .any(|(labels, v)| labels.contains(&format!("\"{family}\"")) && *v > 0.0)
            }),
            Proxy::Kipvs => {
                let queued = samples(
                    metrics,
                    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                );
                let newest = |s: &[(String, f64)]| s.iter().map(|(_, v)| *v).fold(0.0, f64::max);
                newest(&last) > 0.0 && newest(&last) >= newest(&queued)
            }
        }
    }
}

/// The samples of metric `name` in a Prometheus text exposition: labels (as written) and
/// value.
fn samples(metrics: &str, name: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            Some((labels.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// GET `path` from `127.0.0.1:port` inside `ns`; the body, or "" when nothing answers.
fn http_get(ns: &Netns, port: u16, path: &str) -> String {
    let stream = {
        let _inside = ns.enter();
        TcpStream::connect_timeout(&addr("127.0.0.1", port), Duration::from_secs(3))
    };
    let Ok(mut stream) = stream else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// Waits until `proxy`, running as `child` in `ns` since `start`, reports a full sync;
/// panics when it exits or `timeout` passes. Returns how long after `start` it did.
fn wait_synced(
    proxy: Proxy,
    child: &mut Child,
    ns: &Netns,
    start: Instant,
    timeout: Duration,
) -> Duration {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{} exited before its first sync: {status}", proxy.name());
        }
        if proxy.synced(&http_get(ns, 10249, "/metrics")) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{} did not report a sync within {timeout:?}",
            proxy.name()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The state of a node that a proxy programs, as sections of normalized lines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Capture(BTreeMap<&'static str, Vec<String>>);

/// The sections asserted equal; `sysctl` is reported only.
const ASSERTED: [&str; 5] = ["ipvs", "ipset", "kube-ipvs0", "iptables", "ip6tables"];

/// The sysctls either proxy may write.
const SYSCTLS: [&str; 11] = [
    "net.ipv4.ip_forward",
    "net.ipv4.vs.conntrack",
    "net.ipv4.vs.expire_nodest_conn",
    "net.ipv4.vs.expire_quiescent_template",
    "net.ipv4.vs.conn_reuse_mode",
    "net.ipv4.conf.all.arp_ignore",
    "net.ipv4.conf.all.arp_announce",
    "net.ipv4.conf.all.route_localnet",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
    "net.netfilter.nf_conntrack_tcp_be_liberal",
];

impl Capture {
    /// Reads the node's state in `ns` with the real tools.
    fn take(ns: &Netns) -> Capture {
        let mut c = BTreeMap::new();
        let mut ipvs: Vec<String> = ns
            .run_ok("ipvsadm", &["-Sn"])
            .lines()
            .map(str::to_owned)
            .collect();
        ipvs.sort();
        ipvs.push(format!(
            "timeouts: {}",
            ns.run_ok("ipvsadm", &["-Ln", "--timeout"]).trim()
        ));
        c.insert("ipvs", ipvs);
        c.insert("ipset", normalize_ipset(&ns.run_ok("ipset", &["save"])));
        c.insert("kube-ipvs0", kube_ipvs0(ns));
        c.insert(
            "iptables",
            normalize_iptables(&ns.run_ok("iptables-save", &[])),
        );
        c.insert(
            "ip6tables",
            normalize_iptables(&ns.run_ok("ip6tables-save", &[])),
        );
        c.insert(
            "sysctl",
            SYSCTLS
                .iter()
                .map(|key| {
                    let out = ns.run("sysctl", &["-n", key]);
                    let value = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                    format!("{key} = {}", if value.is_empty() { "-" } else { &value })
                })
                .collect(),
        );
        Capture(c)
    }

    /// Whether the asserted sections equal `other`'s.
    fn same_as(&self, other: &Capture) -> bool {
        ASSERTED.iter().all(|s| self.0.get(s) == other.0.get(s))
    }

    /// The differences of every section (asserted ones first), `-` for lines only in
    /// `self` (`ours`), `+` for lines only in `other` (`theirs`); empty when equal.
    fn diff(&self, ours: &str, other: &Capture, theirs: &str) -> String {
        let mut out = String::new();
        let sections = ASSERTED.iter().chain(std::iter::once(&"sysctl"));
        for section in sections {
            let a = self.0.get(section).cloned().unwrap_or_default();
            let b = other.0.get(section).cloned().unwrap_or_default();
            if a == b {
                continue;
            }
            let _ = writeln!(out, "[{section}] (- {ours}, + {theirs})");
            let only_a: Vec<_> = a.iter().filter(|l| !b.contains(l)).collect();
            let only_b: Vec<_> = b.iter().filter(|l| !a.contains(l)).collect();
            for l in &only_a {
                let _ = writeln!(out, "- {l}");
            }
            for l in &only_b {
                let _ = writeln!(out, "+ {l}");
            }
            if only_a.is_empty() && only_b.is_empty() {
                let _ = writeln!(out, "  same lines, different order or count:");
                for l in &a {
                    let _ = writeln!(out, "  - {l}");
                }
                for l in &b {
                    let _ = writeln!(out, "  + {l}");
                }
            }
        }
        out
    }

    /// The capture as text, one `[section]` heading before each section's lines.
    fn render(&self) -> String {
        let mut out = String::new();
        for (section, lines) in &self.0 {
            let _ = writeln!(out, "[{section}]");
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }
}

/// `ipset save` with each set's `create` line (its random `initval` dropped) followed by
/// its members sorted; sets sorted by name.
fn normalize_ipset(save: &str) -> Vec<String> {
    let mut sets: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in save.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["create", name, rest @ ..] => {
                let mut kept = Vec::new();
                let mut skip = false;
                for w in rest {
                    if skip {
                        skip = false;
                    } else if *w == "initval" {
                        skip = true;
                    } else {
                        kept.push(*w);
                    }
                }
                sets.entry((*name).to_owned()).or_default().0 =
                    format!("create {name} {}", kept.join(" "));
            }
            ["add", name, ..] => sets
                .entry((*name).to_owned())
                .or_default()
                .1
                .push(line.to_owned()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (_, (create, mut members)) in sets {
        members.sort();
        out.push(create);
        out.extend(members);
    }
    out
}

/// `iptables-save` without comments and counters: per table, the chain declarations
/// sorted, then each chain's rules in their order, chains sorted by name (the order
/// `iptables-save` lists chains in is the order they were created in, with nft). The
/// rules of `KUBE-IPVS-OUT-FILTER` are sorted too: kube-proxy writes them in the order it
/// walks its map of Services, which Go randomizes from one sync to the next (each rule
/// drops one LoadBalancer IP, protocol and port, so their order changes nothing).
fn normalize_iptables(save: &str) -> Vec<String> {
    type Table = (String, Vec<String>, BTreeMap<String, Vec<String>>);
    fn flush(t: Option<Table>, out: &mut Vec<String>) {
        if let Some((name, mut chains, rules)) = t {
            chains.sort();
            out.push(name);
            out.extend(chains);
            for (chain, mut r) in rules {
                if chain == "KUBE-IPVS-OUT-FILTER" {
                    r.sort();
                }
                out.extend(r);
            }
        }
    }
    let mut out = Vec::new();
    let mut table: Option<Table> = None;
    for line in save.lines() {
        if line.starts_with('#') || line.trim().is_empty() || line == "COMMIT" {
            continue;
        }
        if line.starts_with('*') {
            flush(table.take(), &mut out);
            table = Some((line.to_owned(), Vec::new(), BTreeMap::new()));
        } else if let Some((_, chains, rules)) = table.as_mut() {
            if let Some(decl) = line.strip_prefix(':') {
                // ":CHAIN POLICY [packets:bytes]"
                let mut w = decl.split_whitespace();
                let chain = w.next().unwrap_or_default();
                let policy = w.next().unwrap_or_default();
                chains.push(format!(":{chain} {policy}"));
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let chain = rule.split_whitespace().next().unwrap_or_default();
                rules
                    .entry(chain.to_owned())
                    .or_default()
                    .push(line.to_owned());
            } else {
                rules
                    .entry(String::new())
                    .or_default()
                    .push(line.to_owned());
            }
        }
    }
    flush(table.take(), &mut out);
    out
}

/// kube-ipvs0's flags and addresses (its index and MAC, which differ between nodes,
/// dropped).
fn kube_ipvs0(ns: &Netns) -> Vec<String> {
    let link = ns.run("ip", &["-o", "link", "show", "dev", "kube-ipvs0"]);
    if !link.status.success() {
        return vec!["no kube-ipvs0".to_owned()];
    }
    let link = String::from_utf8_lossy(&link.stdout);
    // "7: kube-ipvs0: <BROADCAST,NOARP> mtu 1500 qdisc noop state DOWN ... link/ether ..."
    let flags: Vec<&str> = link
        .split_whitespace()
        .skip(2)
        .take_while(|w| !w.starts_with("link/"))
        .collect();
    let mut out = vec![format!("link kube-ipvs0 {}", flags.join(" "))];
    let mut addrs: Vec<String> = ns
        .run_ok("ip", &["-o", "addr", "show", "dev", "kube-ipvs0"])
        .lines()
        .filter_map(|l| {
            // "7: kube-ipvs0    inet 10.96.0.1/32 scope global kube-ipvs0\       valid_lft ..."
            // kipvs adds IPv6 VIPs with `nodad`, kube-proxy without; on kube-ipvs0 (NOARP)
            // the kernel runs no duplicate address detection either way, and an address
            // one proxy added is kept as it is by the other: the flag is left out.
            let words: Vec<&str> = l.split('\\').next()?.split_whitespace().collect();
            let kept: Vec<&str> = words
                .get(2..)?
                .iter()
                .copied()
                .filter(|w| *w != "nodad")
                .collect();
            Some(kept.join(" "))
        })
        .collect();
    addrs.sort();
    out.extend(addrs);
    out
}

/// Polls the node until its state equals `expected` (asserted sections) or `timeout`
/// passes. Returns the last capture, how long it took when it matched, and how the
/// first capture differed (empty when it matched at once).
fn wait_state(
    ns: &Netns,
    expected: &Capture,
    timeout: Duration,
) -> (Capture, Option<Duration>, String) {
    let start = Instant::now();
    let mut first = None;
    loop {
        let now = Capture::take(ns);
        let first_diff = first
            .get_or_insert_with(|| now.diff("node", expected, "expected"))
            .clone();
        if now.same_as(expected) {
            return (now, Some(start.elapsed()), first_diff);
        }
        if start.elapsed() > timeout {
            return (now, None, first_diff);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Captures until two captures 3 s apart are equal: the state a proxy settled on.
fn settled(ns: &Netns) -> Capture {
    let mut last = Capture::take(ns);
    for _ in 0..40 {
        std::thread::sleep(Duration::from_secs(3));
        let now = Capture::take(ns);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the node's state never settled; last:\n{}", last.render());
}

/// One request's outcome.
#[derive(Debug)]
struct Outcome {
    /// Seconds since the test started.
    at: f64,
    flow: &'static str,
    took: Duration,
    /// The pod that answered, or the error.
    result: Result<String, String>,
}

/// What happened when, for the report.
#[derive(Debug, Default)]
struct Log {
    start: Option<Instant>,
    outcomes: Mutex<Vec<Outcome>>,
    events: Mutex<Vec<(f64, String)>>,
}

impl Log {
    /// Seconds since the test began.
    fn now(&self) -> f64 {
        self.start.unwrap().elapsed().as_secs_f64()
    }

    /// Records (and prints) a step of the timeline.
    fn event(&self, what: impl Into<String>) {
        let what = what.into();
        let at = self.now();
        eprintln!("[{at:7.1}s] {what}");
        self.events.lock().unwrap().push((at, what));
    }

    /// Records the outcome of one request of `flow`, begun at `begun`.
    fn record(&self, flow: &'static str, begun: Instant, result: Result<String, String>) {
        let outcome = Outcome {
            at: self.start.unwrap().elapsed().as_secs_f64() - begun.elapsed().as_secs_f64(),
            flow,
            took: begun.elapsed(),
            result,
        };
        self.outcomes.lock().unwrap().push(outcome);
    }

    /// The last event at or before `at`.
    fn phase(&self, at: f64) -> String {
        self.events
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(t, _)| *t <= at)
            .map(|(t, e)| format!("{:.1}s after \"{e}\"", at - t))
            .unwrap_or_default()
    }
}

/// The Services: `web` is what the traffic goes to (ClusterIP, NodePort and
/// LoadBalancer, TCP and UDP); the others give the node more of what both proxies
/// program (session affinity, an external IP, a Local-policy LoadBalancer with source
/// ranges, an IPv6 ClusterIP).
fn services(c: &Cluster, web: &[usize]) -> Vec<Service> {
    let pods: Vec<_> = web.iter().map(|&i| c.pod(i)).collect();
    let mut lb = Service::cluster_ip("web", "10.96.0.60", 80, &pods).node_port(30200, 30201);
    lb.kind = "LoadBalancer";
    lb.load_balancer_ips = vec![LB_IP.parse().unwrap()];
    let mut sticky = Service::cluster_ip("sticky", "10.96.0.61", 80, &pods);
    sticky.affinity_seconds = Some(600);
    sticky.external_ips = vec!["203.0.113.10".parse().unwrap()];
    let mut local =
        Service::cluster_ip("local", "10.96.0.62", 80, &pods[..1]).node_port(30210, 30211);
    local.kind = "LoadBalancer";
    local.external_local = true;
    local.load_balancer_ips = vec!["203.0.113.21".parse().unwrap()];
    local.source_ranges = vec!["192.168.1.100/32"];
    let web6 = Service::cluster_ip("web6", "fd00:10:96::60", 80, &pods);
    vec![lb, sticky, local, web6]
}

/// The KubeProxyConfiguration both proxies read, with `kubeconfig` as
/// `clientConnection.kubeconfig`.
fn config(kubeconfig: &Path) -> String {
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
clientConnection:
  kubeconfig: {}
hostnameOverride: {NODE}
clusterCIDR: \"10.244.0.0/16,fd00:10:244::/56\"
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# nf_conntrack_max is read-only outside the initial network namespace: with the default
# maxPerCore kube-proxy would try to raise it and fail to start.
conntrack:
  maxPerCore: 0
",
        kubeconfig.display()
    )
}

/// Where the test leaves its captures and logs: `$KIPVS_MIGRATION_OUT` when set (the
/// VM's results directory), else the scratch directory.
fn out_dir(scratch: &Path) -> PathBuf {
    let dir =
        std::env::var_os("KIPVS_MIGRATION_OUT").map_or_else(|| scratch.to_owned(), PathBuf::from);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Sends kube-proxy SIGTERM (it exits at once, leaving its rules) and waits for it.
fn stop_kube_proxy(child: &mut Child) -> ExitStatus {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    child.wait().unwrap()
}

/// The migration of the module's doc comment: kube-proxy -> kipvs -> kube-proxy under
/// traffic, no request failing and both node states as expected.
#[test]
#[ignore = "peer: run by tests/peer/migration"]
fn kube_proxy_to_kipvs_and_back_under_traffic_fails_no_request() {
    let peers = Peers::from_env();
    let log = Log {
        start: Some(Instant::now()),
        ..Log::default()
    };
    kipvs_testkit::modprobe("ip_vs");
    let mut c = Cluster::new("migration", "");
    let web = c.add_pods("web", 3);
    let caller = c.add_pod("caller", NODE);
    // The reference: a fresh node with the same addresses, for kipvs alone.
    let fresh = Cluster::new("migration-fresh", "");
    let out = out_dir(c.dir());
    let kube_proxy_config = c.dir().join("kube-proxy.yaml");
    std::fs::write(&kube_proxy_config, config(&peers.kube_proxy)).unwrap();
    std::fs::copy(&kube_proxy_config, out.join("kube-proxy.yaml")).unwrap();
    let kipvs_config = c.dir().join("kipvs.yaml");
    std::fs::write(&kipvs_config, config(&peers.kipvs)).unwrap();
    std::fs::copy(&kipvs_config, out.join("kipvs.yaml")).unwrap();
    let proxy_log = out.join("proxies.log");
    let fresh_log = out.join("kipvs-fresh.log");

    peers.create(c.dir(), &services(&c, &web));
    log.event("objects created through the API server");
    let _forward = Forward::start(&c.node);
    let _forward_fresh = Forward::start(&fresh.node);

    // 1. kube-proxy on the node, kipvs on the fresh node, side by side (kube-proxy's
    //    first sync takes minutes in the emulated VM).
    let mut kube_proxy = Proxy::KubeProxy.spawn(&peers, &c.node, &kube_proxy_config, &proxy_log);
    let kube_proxy_start = Instant::now();
    log.event("kube-proxy started on the node");
    let mut reference = Proxy::Kipvs.spawn(&peers, &fresh.node, &kipvs_config, &fresh_log);
    let took = wait_synced(
        Proxy::Kipvs,
        &mut reference,
        &fresh.node,
        Instant::now(),
        KIPVS_SYNC,
    );
    log.event(format!(
        "kipvs synced the fresh node in {:.1}s",
        took.as_secs_f64()
    ));
    let kipvs_fresh = settled(&fresh.node);
    let fresh_metrics = http_get(&fresh.node, 10249, "/metrics");
    std::fs::write(out.join("kipvs-fresh.metrics"), &fresh_metrics).unwrap();
    terminate(reference);
    std::fs::write(out.join("kipvs-fresh.capture"), kipvs_fresh.render()).unwrap();
    let took = wait_synced(
        Proxy::KubeProxy,
        &mut kube_proxy,
        &c.node,
        kube_proxy_start,
        KUBE_PROXY_SYNC,
    );
    log.event(format!(
        "kube-proxy synced both families {:.1}s after its start",
        took.as_secs_f64()
    ));
    let kube_proxy_fresh = settled(&c.node);
    std::fs::write(
        out.join("kube-proxy-fresh.capture"),
        kube_proxy_fresh.render(),
    )
    .unwrap();
    let ipvs = kube_proxy_fresh.0["ipvs"].join("\n");
    for vs in [
        "-A -t 10.96.0.60:80",
        "-A -t 192.168.1.10:30200",
        "-A -u 203.0.113.20:80",
    ] {
        assert!(
            ipvs.contains(vs),
            "kube-proxy did not program {vs}:\n{ipvs}"
        );
    }
    let proxies_differ = kube_proxy_fresh.diff("kube-proxy", &kipvs_fresh, "kipvs");

    // 2. Traffic.
    let cluster_ip = addr("10.96.0.60", 80);
    let node_port_tcp = addr("192.168.1.10", 30200);
    let node_port_udp = addr("192.168.1.10", 30201);
    let lb = addr(LB_IP, 80);
    let pod = &c.pod(caller).ns;
    let outside = &c.client;
    let long_targets: [(&'static str, &Netns, SocketAddr); 5] = [
        ("long TCP pod -> ClusterIP", pod, cluster_ip),
        ("long TCP pod -> NodePort", pod, node_port_tcp),
        ("long TCP pod -> LoadBalancer", pod, lb),
        ("long TCP outside -> NodePort", outside, node_port_tcp),
        ("long TCP outside -> LoadBalancer", outside, lb),
    ];
    let mut long: Vec<(&'static str, Client, String)> = long_targets
        .iter()
        .map(|&(name, ns, dst)| {
            let mut conn = Client::open(ns, dst).unwrap_or_else(|e| panic!("{name}: {e}"));
            let first = conn.ask().unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, conn, first)
        })
        .collect();
    let udp_long: Vec<(&'static str, UdpSocket)> = [
        ("UDP one socket pod -> ClusterIP", pod, cluster_ip),
        ("UDP one socket outside -> LoadBalancer", outside, lb),
    ]
    .into_iter()
    .map(|(name, ns, dst)| (name, udp_socket(ns, dst).unwrap()))
    .collect();
    log.event("traffic started");
    let done = AtomicBool::new(false);
    let log = &log;
    let mut problems: Vec<String> = Vec::new();
    let mut long_broken: Vec<String> = Vec::new();
    let mut adopted_metrics = String::new();
    std::thread::scope(|s| {
        let done = &done;
        let fresh_flows: [(&'static str, &Netns, SocketAddr, bool); 8] = [
            ("new TCP pod -> ClusterIP", pod, cluster_ip, true),
            ("new TCP pod -> NodePort", pod, node_port_tcp, true),
            ("new TCP pod -> LoadBalancer", pod, lb, true),
            ("new TCP outside -> NodePort", outside, node_port_tcp, true),
            ("new TCP outside -> LoadBalancer", outside, lb, true),
            ("UDP new socket pod -> ClusterIP", pod, cluster_ip, false),
            (
                "UDP new socket outside -> NodePort",
                outside,
                node_port_udp,
                false,
            ),
            ("UDP new socket outside -> LoadBalancer", outside, lb, false),
        ];
        for (flow, ns, dst, is_tcp) in fresh_flows {
            s.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let begun = Instant::now();
                    let result = if is_tcp {
                        tcp_request(ns, dst)
                    } else {
                        udp_request(ns, dst)
                    };
                    log.record(flow, begun, result.map_err(|e| e.to_string()));
                    std::thread::sleep(PACE);
                }
            });
        }
        let long = &mut long;
        let udp_long = &udp_long;
        let long_broken = &mut long_broken;
        s.spawn(move || {
            while !done.load(Ordering::Relaxed) {
                for (flow, conn, first) in long.iter_mut() {
                    let begun = Instant::now();
                    let result = match conn.ask() {
                        Ok(pod) if pod == *first => Ok(pod),
                        Ok(pod) => Err(format!("answered by {pod} instead of {first}")),
                        Err(e) => Err(e.to_string()),
                    };
                    if result.is_err() && !long_broken.contains(&(*flow).to_owned()) {
                        long_broken.push((*flow).to_owned());
                    }
                    log.record(flow, begun, result);
                }
                for (flow, socket) in udp_long.iter() {
                    let begun = Instant::now();
                    log.record(flow, begun, udp_ask(socket).map_err(|e| e.to_string()));
                }
                std::thread::sleep(PACE);
            }
        });

        let step = || {
            std::thread::sleep(Duration::from_secs(10));
            // 3. kube-proxy -> kipvs.
            log.event("SIGTERM to kube-proxy");
            let status = stop_kube_proxy(&mut kube_proxy);
            log.event(format!("kube-proxy exited ({status})"));
            let mut kipvs = Proxy::Kipvs.spawn(&peers, &c.node, &kipvs_config, &proxy_log);
            let kipvs_start = Instant::now();
            log.event("kipvs started on the node");
            let took = wait_synced(Proxy::Kipvs, &mut kipvs, &c.node, kipvs_start, KIPVS_SYNC);
            log.event(format!(
                "kipvs synced {:.1}s after its start",
                took.as_secs_f64()
            ));
            let (adopted, matched, first) = wait_state(&c.node, &kipvs_fresh, SETTLE);
            std::fs::write(out.join("adopted-by-kipvs.capture"), adopted.render()).unwrap();
            std::fs::write(out.join("adopted-by-kipvs.first-diff"), first).unwrap();
            match matched {
                Some(t) => log.event(format!(
                    "the node equals kipvs' fresh node {:.1}s after its sync",
                    t.as_secs_f64()
                )),
                None => problems.push(format!(
                    "after kube-proxy -> kipvs, the node differs from what kipvs programs on a fresh node:\n{}",
                    adopted.diff("node", &kipvs_fresh, "kipvs on a fresh node")
                )),
            }
            std::thread::sleep(Duration::from_secs(15));
            // 4. kipvs -> kube-proxy.
            adopted_metrics = http_get(&c.node, 10249, "/metrics");
            std::fs::write(out.join("kipvs-adopted.metrics"), &adopted_metrics).unwrap();
            log.event("SIGTERM to kipvs");
            let pid = kipvs.id();
            terminate(kipvs);
            log.event(format!("kipvs ({pid}) exited"));
            kube_proxy = Proxy::KubeProxy.spawn(&peers, &c.node, &kube_proxy_config, &proxy_log);
            let kube_proxy_start = Instant::now();
            log.event("kube-proxy started on the node again");
            let took = wait_synced(
                Proxy::KubeProxy,
                &mut kube_proxy,
                &c.node,
                kube_proxy_start,
                KUBE_PROXY_SYNC,
            );
            log.event(format!(
                "kube-proxy synced both families {:.1}s after its start",
                took.as_secs_f64()
            ));
            let (back, matched, first) = wait_state(&c.node, &kube_proxy_fresh, SETTLE);
            std::fs::write(out.join("handed-back.capture"), back.render()).unwrap();
            std::fs::write(out.join("handed-back.first-diff"), first).unwrap();
            match matched {
                Some(t) => log.event(format!(
                    "the node equals kube-proxy's fresh node {:.1}s after its sync",
                    t.as_secs_f64()
                )),
                None => problems.push(format!(
                    "after kipvs -> kube-proxy, the node differs from what kube-proxy programmed on it fresh:\n{}",
                    back.diff("node", &kube_proxy_fresh, "kube-proxy on the fresh node")
                )),
            }
            std::thread::sleep(Duration::from_secs(10));
        };
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(step));
        done.store(true, Ordering::Relaxed);
        log.event("traffic stopped");
        if let Err(panic) = stepped {
            std::panic::resume_unwind(panic);
        }
    });
    let _ = stop_kube_proxy(&mut kube_proxy);

    // The report.
    let outcomes = log.outcomes.lock().unwrap();
    let mut by_flow: BTreeMap<&str, (usize, usize, Duration, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    let events = log.events.lock().unwrap().clone();
    // Per phase (from one event to the next): requests, failed, slow, slowest.
    let mut by_phase = vec![(0usize, 0usize, 0usize, Duration::ZERO); events.len()];
    for o in outcomes.iter() {
        let phase = events.iter().rposition(|(t, _)| *t <= o.at).unwrap_or(0);
        let p = &mut by_phase[phase];
        p.0 += 1;
        p.1 += usize::from(o.result.is_err());
        p.2 += usize::from(o.took > SLOW);
        p.3 = p.3.max(o.took);
        let e = by_flow.entry(o.flow).or_default();
        match &o.result {
            Ok(_) => e.0 += 1,
            Err(err) => {
                e.1 += 1;
                failures.push(format!(
                    "{:.1}s ({}) {}: {err}",
                    o.at,
                    log.phase(o.at),
                    o.flow
                ));
            }
        }
        e.2 = e.2.max(o.took);
        e.3 += usize::from(o.took > SLOW);
    }
    let mut report = String::new();
    let _ = writeln!(
        report,
        "timeline, with the requests begun until the next event (failed, slower than {} ms, slowest):",
        SLOW.as_millis()
    );
    for ((at, e), (n, failed, slow, max)) in events.iter().zip(&by_phase) {
        let _ = write!(report, "  {at:7.1}s {e}");
        if *n > 0 {
            let _ = write!(
                report,
                "  [{n} requests, {failed} failed, {slow} slow, slowest {} ms]",
                max.as_millis()
            );
        }
        report.push('\n');
    }
    let _ = writeln!(
        report,
        "flows (ok, failed, slowest, slower than {} ms):",
        SLOW.as_millis()
    );
    for (flow, (ok, failed, max, slow)) in &by_flow {
        let _ = writeln!(
            report,
            "  {flow:40} {ok:6} ok {failed:4} failed {:6} ms {slow:4} slow",
            max.as_millis()
        );
    }
    let _ = writeln!(
        report,
        "kube-proxy vs kipvs, each on a fresh node (compared by the conformance suite, reported here):\n{}",
        if proxies_differ.is_empty() { "  no difference\n" } else { &proxies_differ }
    );
    let operations = |metrics: &str| -> String {
        metrics
            .lines()
            .filter(|l| l.starts_with("kipvs_kernel_operations"))
            .map(|l| format!("  {l}\n"))
            .collect()
    };
    let _ = writeln!(
        report,
        "kipvs' kernel operations on the fresh node:\n{}kipvs' kernel operations on the adopted node:\n{}",
        operations(&fresh_metrics),
        operations(&adopted_metrics)
    );
    let total: usize = by_flow.values().map(|v| v.0 + v.1).sum();
    let _ = writeln!(
        report,
        "migration: {total} requests, {} failed, {} long-lived connections broken of {}",
        failures.len(),
        long_broken.len(),
        long_targets.len()
    );
    eprintln!("{report}");
    std::fs::write(out.join("report"), &report).unwrap();

    if !failures.is_empty() {
        problems.push(format!(
            "{} requests failed:\n  {}",
            failures.len(),
            failures
                .iter()
                .take(60)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }
    if !long_broken.is_empty() {
        problems.push(format!("long-lived connections broken: {long_broken:?}"));
    }
    for (flow, (ok, _, _, _)) in &by_flow {
        if *ok < 20 {
            problems.push(format!("{flow}: only {ok} requests answered"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
