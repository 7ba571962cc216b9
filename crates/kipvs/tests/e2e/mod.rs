//! The end-to-end topology shared by the `kernel_e2e*` tests: a node running the real
//! `kipvs run --state FILE`, pods routed to it Calico-style, an external client, and
//! clients and servers that are threads of the test process.
//!
//! ```text
//!   client netns                 node netns (kipvs run)                pod netns (one each)
//!   eth0 192.168.1.100/24 ─veth─ eth0 192.168.1.10/24
//!        192.168.1.101/24        caliN (no address, proxy_arp) ─veth─ eth0 10.244.1.N/32
//!   default via .10              10.244.1.N/32 dev caliN              default via 169.254.1.1
//!                                default via .100
//! ```
//!
//! The node's default route (the client stands for the upstream router) is what makes
//! proxy ARP answer for the pods' gateway 169.254.1.1, as on a Calico node.
//!
//! Everything is dual-stack: the same links carry fd00:192:168:1::/64 (node `::10`,
//! client `::100`), each pod has fd00:10:244:1::N/128 with its default route via
//! fe80::1, the node-side veth's link-local address. DAD is off, so addresses work at
//! once.
//!
//! [`Cluster::add_bridged_pod`] attaches pods the other common way instead: to a Linux
//! bridge `cni0` (10.244.2.1/24, fd00:10:244:2::1/64) with `br_netfilter` loaded,
//! `bridge-nf-call-iptables=1` and hairpin mode on the pods' ports, as bridge CNIs
//! (flannel's `hairpinMode: true`, kubenet) set them up.
//!
//! Every pod answers on TCP and UDP port [`POD_PORT`] with its name and the source
//! address it saw, so a test asserts what a client got: which pod, through which
//! translation. Servers and clients only *create* their sockets inside a namespace (a
//! socket stays in the namespace it was made in), so the threads that serve them need
//! not enter anything.
//!
//! Services and EndpointSlices are written as YAML to the state file `kipvs run`
//! follows; [`Cluster::apply`] replaces the whole file atomically.

// Each kernel_e2e* binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use kipvs_testkit::{terminate, wait_for, Netns};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
use nix::sys::time::TimeVal;

/// The kipvs binary under test.
pub const KIPVS: &str = env!("CARGO_BIN_EXE_kipvs");
/// This node's name, as kipvs is told with `--hostname-override`.
pub const NODE: &str = "node-a";
/// Another node's name: endpoints on it are not local (the pods are still reachable
/// from this node, as they would be one hop further on a real cluster).
pub const OTHER_NODE: &str = "node-b";
/// The node's address on the client-facing link.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
/// The external client's first address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 100);
/// The external client's second address (for source-range tests).
pub const CLIENT_IP_2: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 101);
/// The node's IPv6 address on the client-facing link.
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x192, 0x168, 1, 0, 0, 0, 0x10);
/// The external client's IPv6 address.
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x192, 0x168, 1, 0, 0, 0, 0x100);
/// The node's address on the pods' bridge, their gateway.
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 1);
/// The port every pod serves on, TCP and UDP.
pub const POD_PORT: u16 = 8080;
/// How long a client waits to connect or for an answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

/// What a pod answered: its name and the source address it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The pod's name.
    pub pod: String,
    /// The client address as the pod saw it (after any masquerade).
    pub source: IpAddr,
}

impl Reply {
    fn parse(line: &str) -> io::Result<Reply> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("reply {line:?}"));
        let (pod, source) = line.trim().split_once(' ').ok_or_else(bad)?;
        Ok(Reply {
            pod: pod.to_owned(),
            source: source.parse().map_err(|_| bad())?,
        })
    }
}

/// A pod: its own namespace, an address routed from the node, TCP and UDP servers.
#[derive(Debug)]
pub struct Pod {
    /// Its name, which it answers with.
    pub name: String,
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// Its IPv6 address.
    pub ip6: Ipv6Addr,
    /// The node the EndpointSlices say it runs on.
    pub node: &'static str,
    /// Its namespace.
    pub ns: Netns,
}

/// One endpoint of a Service, as an EndpointSlice lists it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The pod's address.
    pub ip: IpAddr,
    /// The node it runs on.
    pub node: &'static str,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
}

impl Endpoint {
    /// A ready endpoint for `pod`'s IPv4 address.
    pub fn ready(pod: &Pod) -> Endpoint {
        Endpoint {
            ip: IpAddr::V4(pod.ip),
            node: pod.node,
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    /// A ready endpoint for `pod`'s IPv6 address.
    pub fn ready6(pod: &Pod) -> Endpoint {
        Endpoint {
            ip: IpAddr::V6(pod.ip6),
            ..Endpoint::ready(pod)
        }
    }

    /// A terminating endpoint for `pod` that still serves (a pod being rolled away).
    pub fn terminating(pod: &Pod) -> Endpoint {
        Endpoint {
            ready: false,
            serving: true,
            terminating: true,
            ..Endpoint::ready(pod)
        }
    }
}

/// One Service port.
#[derive(Debug, Clone)]
pub struct Port {
    /// Its name (also the EndpointSlice port's).
    pub name: &'static str,
    /// `TCP` or `UDP`.
    pub protocol: &'static str,
    /// The Service port.
    pub port: u16,
    /// The NodePort, when the Service has one.
    pub node_port: Option<u16>,
}

/// A Service with its endpoints, rendered as a Service and one EndpointSlice.
#[derive(Debug, Clone)]
pub struct Service {
    /// Its name (namespace `e2e`).
    pub name: &'static str,
    /// `ClusterIP`, `NodePort` or `LoadBalancer`.
    pub kind: &'static str,
    /// The ClusterIP.
    pub cluster_ip: IpAddr,
    /// Its ports; each targets [`POD_PORT`].
    pub ports: Vec<Port>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`.
    pub source_ranges: Vec<&'static str>,
    /// `spec.externalTrafficPolicy: Local` when true.
    pub external_local: bool,
    /// `spec.sessionAffinity: ClientIP` with this timeout, when set.
    pub affinity_seconds: Option<u32>,
    /// Annotations.
    pub annotations: Vec<(&'static str, &'static str)>,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
}

impl Service {
    /// A ClusterIP Service with one TCP and one UDP port (both `port`), on `endpoints`
    /// (their addresses of the ClusterIP's family).
    pub fn cluster_ip(name: &'static str, ip: &str, port: u16, endpoints: &[&Pod]) -> Service {
        let cluster_ip: IpAddr = ip.parse().expect("a test ClusterIP");
        Service {
            name,
            kind: "ClusterIP",
            cluster_ip,
            ports: vec![
                Port {
                    name: "tcp",
                    protocol: "TCP",
                    port,
                    node_port: None,
                },
                Port {
                    name: "udp",
                    protocol: "UDP",
                    port,
                    node_port: None,
                },
            ],
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            source_ranges: Vec::new(),
            external_local: false,
            affinity_seconds: None,
            annotations: Vec::new(),
            endpoints: endpoints
                .iter()
                .map(|p| match cluster_ip {
                    IpAddr::V4(_) => Endpoint::ready(p),
                    IpAddr::V6(_) => Endpoint::ready6(p),
                })
                .collect(),
        }
    }

    /// Makes it a NodePort Service, its TCP port on `tcp` and its UDP port on `udp`.
    pub fn node_port(mut self, tcp: u16, udp: u16) -> Service {
        self.kind = "NodePort";
        for p in &mut self.ports {
            p.node_port = Some(if p.protocol == "TCP" { tcp } else { udp });
        }
        self
    }

    /// Renders the Service and its EndpointSlice as two YAML documents.
    pub fn yaml(&self) -> String {
        let mut y = String::new();
        let ip = self.cluster_ip;
        y.push_str("apiVersion: v1\nkind: Service\nmetadata:\n");
        let _ = writeln!(y, "  name: {}\n  namespace: e2e", self.name);
        if !self.annotations.is_empty() {
            y.push_str("  annotations:\n");
            for (k, v) in &self.annotations {
                let _ = writeln!(y, "    {k}: \"{v}\"");
            }
        }
        let family = match ip {
            IpAddr::V4(_) => "IPv4",
            IpAddr::V6(_) => "IPv6",
        };
        let _ = writeln!(
            y,
            "spec:\n  type: {}\n  clusterIP: \"{ip}\"\n  clusterIPs: [\"{ip}\"]\n  ipFamilies: [{family}]",
            self.kind
        );
        if !self.external_ips.is_empty() {
            let _ = writeln!(y, "  externalIPs: [{}]", quoted(&self.external_ips));
        }
        if !self.source_ranges.is_empty() {
            let _ = writeln!(
                y,
                "  loadBalancerSourceRanges: [{}]",
                quoted(&self.source_ranges)
            );
        }
        if self.external_local {
            y.push_str("  externalTrafficPolicy: Local\n");
        }
        if let Some(seconds) = self.affinity_seconds {
            let _ = writeln!(
                y,
                "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {seconds}}}}}"
            );
        }
        y.push_str("  ports:\n");
        for p in &self.ports {
            let _ = write!(
                y,
                "  - {{name: {}, protocol: {}, port: {}, targetPort: {POD_PORT}",
                p.name, p.protocol, p.port
            );
            if let Some(np) = p.node_port {
                let _ = write!(y, ", nodePort: {np}");
            }
            y.push_str("}\n");
        }
        if !self.load_balancer_ips.is_empty() {
            y.push_str("status:\n  loadBalancer:\n    ingress:\n");
            for lb in &self.load_balancer_ips {
                let _ = writeln!(y, "    - ip: \"{lb}\"");
            }
        }
        y.push_str("---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n");
        let _ = writeln!(
            y,
            "  name: {}-1\n  namespace: e2e\n  labels: {{kubernetes.io/service-name: {}}}\naddressType: {family}\nendpoints:",
            self.name, self.name
        );
        if self.endpoints.is_empty() {
            y.push_str("  []\n");
        }
        for e in &self.endpoints {
            let _ = writeln!(
                y,
                "- addresses: [\"{}\"]\n  nodeName: {}\n  conditions: {{ready: {}, serving: {}, terminating: {}}}",
                e.ip, e.node, e.ready, e.serving, e.terminating
            );
        }
        y.push_str("ports:\n");
        for p in &self.ports {
            let _ = writeln!(
                y,
                "- {{name: {}, protocol: {}, port: {POD_PORT}}}",
                p.name, p.protocol
            );
        }
        y
    }
}

/// A state file (or what an API server holds): this node and `services`, with their
/// EndpointSlices, as multi-document YAML.
pub fn state_yaml(services: &[Service]) -> String {
    let mut text = format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE}}}\nstatus:\n  addresses:\n  - {{type: InternalIP, address: {NODE_IP}}}\n  - {{type: InternalIP, address: \"{NODE_IP6}\"}}\n"
    );
    for s in services {
        text.push_str("---\n");
        text.push_str(&s.yaml());
    }
    text
}

fn quoted<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Turns duplicate address detection off for links created from now on in a
/// namespace, so IPv6 addresses (link-local ones too) work at once.
const NO_DAD: &str = "sysctl -qw net.ipv6.conf.default.accept_dad=0
                      sysctl -qw net.ipv6.conf.all.accept_dad=0";

/// The whole topology: node, client, pods, and the kipvs process once started.
#[derive(Debug)]
pub struct Cluster {
    /// The node's namespace, where kipvs runs.
    pub node: Netns,
    /// The external client's namespace (addresses [`CLIENT_IP`] and [`CLIENT_IP_2`]).
    pub client: Netns,
    /// The pods, in the order they were added.
    pub pods: Vec<Pod>,
    dir: PathBuf,
    config: PathBuf,
    state: PathBuf,
    /// The running `kipvs run`; behind a lock so a test can restart it while client
    /// threads borrow the namespaces.
    kipvs: Mutex<Option<Child>>,
}

impl Cluster {
    /// Builds the node and the client, with `extra_ipvs` (`, key: value` pairs) added to
    /// the configuration's `ipvs` block.
    pub fn new(test: &str, extra_ipvs: &str) -> Cluster {
        Cluster::with_sync_period(test, "30s", extra_ipvs)
    }

    /// [`Cluster::new`] with `ipvs.syncPeriod` set: how often kipvs verifies the kernel,
    /// and so how soon a drained destination is deleted.
    pub fn with_sync_period(test: &str, sync_period: &str, extra_ipvs: &str) -> Cluster {
        let node = Netns::new();
        let client = Netns::new();
        client.sh(NO_DAD);
        node.sh(&format!(
            "{NO_DAD}
             sysctl -qw net.ipv4.ip_forward=1
             sysctl -qw net.ipv6.conf.all.forwarding=1
             ip link add eth0 type veth peer name eth0 netns {client}
             ip addr add {NODE_IP}/24 dev eth0
             ip -6 addr add {NODE_IP6}/64 dev eth0 nodad
             ip link set eth0 up
             ip route add default via {CLIENT_IP}
             ip -6 route add default via {CLIENT_IP6}",
            client = client.name()
        ));
        client.sh(&format!(
            "ip addr add {CLIENT_IP}/24 dev eth0
             ip addr add {CLIENT_IP_2}/24 dev eth0
             ip -6 addr add {CLIENT_IP6}/64 dev eth0 nodad
             ip link set eth0 up
             ip route add default via {NODE_IP}
             ip -6 route add default via {NODE_IP6}"
        ));
        let dir = std::env::temp_dir().join(format!("kipvs-e2e-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs\n\
                 clusterCIDR: \"10.244.0.0/16,fd00:10:244::/56\"\nhealthzBindAddress: 127.0.0.1:10256\nmetricsBindAddress: 127.0.0.1:10249\n\
                 ipvs: {{syncPeriod: {sync_period}, minSyncPeriod: 0s{extra_ipvs}}}\n"
            ),
        )
        .expect("config written");
        let state = dir.join("state.yaml");
        Cluster {
            node,
            client,
            pods: Vec::new(),
            dir,
            config,
            state,
            kipvs: Mutex::new(None),
        }
    }

    /// Adds a pod on `node` (its address 10.244.1.N in order of creation), serving TCP and
    /// UDP on [`POD_PORT`], and returns its index in [`Cluster::pods`].
    pub fn add_pod(&mut self, name: &str, node: &'static str) -> usize {
        self.new_pod(name, node, 1, |host, pod, n, ip, ip6| {
            let veth = format!("cali{n}");
            host.sh(&format!(
                "ip link add {veth} type veth peer name eth0 netns {pod}
                 ip -6 addr add fe80::1/64 dev {veth} nodad
                 ip link set {veth} up
                 sysctl -qw net.ipv4.conf.{veth}.proxy_arp=1
                 ip route add {ip}/32 dev {veth}
                 ip -6 route add {ip6}/128 dev {veth}",
                pod = pod.name()
            ));
            pod.sh(&format!(
                "ip addr add {ip}/32 dev eth0
                 ip -6 addr add {ip6}/128 dev eth0 nodad
                 ip link set eth0 up
                 ip route add 169.254.1.1 dev eth0 scope link
                 ip route add default via 169.254.1.1 dev eth0
                 ip -6 route add default via fe80::1 dev eth0"
            ));
        })
    }

    /// Adds a pod on this node attached to the bridge `cni0` (created with the first
    /// one): its address 10.244.2.N/24 (fd00:10:244:2::N/64), its gateway the bridge's
    /// [`BRIDGE_IP`]. Returns its index in [`Cluster::pods`].
    pub fn add_bridged_pod(&mut self, name: &str) -> usize {
        if !self.node.ip(&["link", "show"]).contains("cni0") {
            kipvs_testkit::modprobe("br_netfilter");
            self.node.sh(&format!(
                "ip link add cni0 type bridge
                 ip addr add {BRIDGE_IP}/24 dev cni0
                 ip -6 addr add fd00:10:244:2::1/64 dev cni0 nodad
                 ip link set cni0 up
                 sysctl -qw net.bridge.bridge-nf-call-iptables=1
                 sysctl -qw net.bridge.bridge-nf-call-ip6tables=1"
            ));
        }
        self.new_pod(name, NODE, 2, |host, pod, n, ip, ip6| {
            let veth = format!("veth{n}");
            host.sh(&format!(
                "ip link add {veth} type veth peer name eth0 netns {pod}
                 ip link set {veth} master cni0
                 ip link set {veth} type bridge_slave hairpin on
                 ip link set {veth} up",
                pod = pod.name()
            ));
            pod.sh(&format!(
                "ip addr add {ip}/24 dev eth0
                 ip -6 addr add {ip6}/64 dev eth0 nodad
                 ip link set eth0 up
                 ip route add default via {BRIDGE_IP}
                 ip -6 route add default via fd00:10:244:2::1"
            ));
        })
    }

    /// Creates the namespace of pod number N (in order of creation) with addresses
    /// 10.244.`subnet`.N and fd00:10:244:`subnet`::N, lets `wire` connect it to the node
    /// (`wire(node, pod, N, ip, ip6)`), starts its servers and records it. Returns its
    /// index in [`Cluster::pods`].
    fn new_pod(
        &mut self,
        name: &str,
        node: &'static str,
        subnet: u8,
        wire: impl FnOnce(&Netns, &Netns, u8, Ipv4Addr, Ipv6Addr),
    ) -> usize {
        let index = self.pods.len();
        let n = u8::try_from(index + 2).expect("fewer than 250 pods");
        let ip = Ipv4Addr::new(10, 244, subnet, n);
        let ip6 = Ipv6Addr::new(0xfd00, 0x10, 0x244, subnet.into(), 0, 0, 0, n.into());
        let ns = Netns::new();
        ns.sh(NO_DAD);
        wire(&self.node, &ns, n, ip, ip6);
        serve(&ns, name);
        self.pods.push(Pod {
            name: name.to_owned(),
            ip,
            ip6,
            node,
            ns,
        });
        index
    }

    /// Adds pods named `prefix-0`, `prefix-1`, ... on this node and returns their indices.
    pub fn add_pods(&mut self, prefix: &str, count: usize) -> Vec<usize> {
        (0..count)
            .map(|i| self.add_pod(&format!("{prefix}-{i}"), NODE))
            .collect()
    }

    /// The pod at `index`.
    pub fn pod(&self, index: usize) -> &Pod {
        &self.pods[index]
    }

    /// Writes the state file: this node and `services`, replacing what was there in one
    /// rename (kipvs never reads half a file).
    pub fn apply(&self, services: &[Service]) {
        let tmp = self.dir.join("state.yaml.tmp");
        std::fs::write(&tmp, state_yaml(services)).expect("state written");
        std::fs::rename(&tmp, &self.state).expect("state renamed");
    }

    /// The test's scratch directory (removed when the cluster drops).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state file's path.
    pub fn state_path(&self) -> &Path {
        &self.state
    }

    /// Starts `kipvs run --state` in the node (after [`Cluster::apply`]) and waits until
    /// the kernel holds what it plans.
    pub fn start(&self) {
        self.spawn(&["--state".as_ref(), self.state.as_os_str()]);
    }

    /// [`Cluster::start`] with more `kipvs run` flags.
    pub fn start_with(&self, flags: &[&str]) {
        let mut args = vec!["--state".as_ref(), self.state.as_os_str()];
        args.extend(flags.iter().map(std::ffi::OsStr::new));
        self.spawn(&args);
    }

    /// Starts `kipvs run` reading the API server of `kubeconfig` (named in the
    /// configuration's `clientConnection.kubeconfig`: with `--config`, kipvs ignores
    /// `--kubeconfig` as kube-proxy does) instead of the state file, and waits until the
    /// kernel holds what the state file plans: a test keeps both saying the same.
    pub fn start_watching(&self, kubeconfig: &Path) {
        let text = std::fs::read_to_string(&self.config).expect("config read");
        let config = self.dir.join("config-watching.yaml");
        std::fs::write(
            &config,
            format!(
                "{text}clientConnection: {{kubeconfig: \"{}\"}}\n",
                kubeconfig.display()
            ),
        )
        .expect("config written");
        self.spawn_with(&[], &config);
    }

    fn spawn(&self, source: &[&std::ffi::OsStr]) {
        self.spawn_with(source, &self.config);
    }

    fn spawn_with(&self, source: &[&std::ffi::OsStr], config: &Path) {
        let mut running = self.kipvs.lock().expect("kipvs lock");
        assert!(running.is_none(), "kipvs already runs");
        let child = Command::new("ip")
            .args(["netns", "exec", self.node.name(), KIPVS, "run"])
            .args(source)
            .arg("--config")
            .arg(config)
            .args(["--hostname-override", NODE])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kipvs starts");
        *running = Some(child);
        drop(running);
        self.wait_synced();
    }

    /// Stops kipvs with SIGTERM (it must exit cleanly, leaving the rules).
    pub fn stop(&self) {
        let child = self.kipvs.lock().expect("kipvs lock").take();
        if let Some(child) = child {
            terminate(child);
        }
    }

    /// Waits until `kipvs plan --diff` finds nothing left to do for the state file: the
    /// IPVS table, kube-ipvs0's addresses and the ipsets are what the file asks for.
    pub fn wait_synced(&self) {
        let state = self.state.display().to_string();
        let config = self.config.display().to_string();
        let args = [
            "plan",
            "--diff",
            "--state",
            &state,
            "--config",
            &config,
            "--hostname-override",
            NODE,
        ];
        let start = std::time::Instant::now();
        loop {
            let out = self.node.run(KIPVS, &args);
            let last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() && out.stdout.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "kipvs did not converge; plan --diff still says:\n{last}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        // iptables rules (both families) are written after the sets, in the same pass,
        // seconds later in the emulated VM: wait for the pass to end after the last
        // change was queued, or the first packets would miss the masquerade rules.
        wait_for("kipvs' pass to finish", Duration::from_secs(60), || {
            let metrics = self.metrics();
            let gauge = |name: &str| -> f64 {
                metrics
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                    .unwrap_or(0.0)
            };
            let synced =
                gauge("kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} ");
            synced > 0.0
                && synced
                    >= gauge(
                        "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family=\"IPv4\"} ",
                    )
        });
    }

    /// What kipvs' `/metrics` says (empty when it does not answer).
    pub fn metrics(&self) -> String {
        let stream = {
            let _inside = self.node.enter();
            TcpStream::connect_timeout(&addr("127.0.0.1", 10249), CLIENT_TIMEOUT)
        };
        let Ok(mut stream) = stream else {
            return String::new();
        };
        let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
        let mut response = String::new();
        let request = "GET /metrics HTTP/1.1\r\nHost: kipvs\r\nConnection: close\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return String::new();
        }
        let _ = io::Read::read_to_string(&mut stream, &mut response);
        response
    }

    /// `ipvsadm -Ln` in the node.
    pub fn ipvsadm(&self) -> String {
        self.node.run_ok("ipvsadm", &["-Ln"])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let child = self.kipvs.get_mut().ok().and_then(Option::take);
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `name`'s TCP and UDP servers on [`POD_PORT`] in `ns` (both families).
fn serve(ns: &Netns, name: &str) {
    let (tcp, udp) = {
        let _inside = ns.enter();
        (
            TcpListener::bind(("::", POD_PORT)).expect("pod TCP listener"),
            UdpSocket::bind(("::", POD_PORT)).expect("pod UDP socket"),
        )
    };
    let tcp_name = name.to_owned();
    std::thread::spawn(move || {
        for stream in tcp.incoming().flatten() {
            let name = tcp_name.clone();
            std::thread::spawn(move || answer_lines(stream, &name));
        }
    });
    let name = name.to_owned();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, peer)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(
                format!("{name} {}\n", peer.ip().to_canonical()).as_bytes(),
                peer,
            );
        }
    });
}

/// Answers every line a client sends with the pod's name and the client's address,
/// until the client closes.
fn answer_lines(stream: TcpStream, name: &str) {
    let Ok(peer) = stream.peer_addr() else { return };
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let reply = format!("{name} {}\n", peer.ip().to_canonical());
    for line in BufReader::new(stream).lines() {
        if line.is_err() || writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// A TCP connection to a Service, kept open across requests.
#[derive(Debug)]
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects from `ns`, from `source` when given (else the route's address), to `dst`.
    pub fn open(ns: &Netns, source: Option<IpAddr>, dst: SocketAddr) -> io::Result<Conn> {
        let stream = {
            let _inside = ns.enter();
            connect(source, dst)?
        };
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    /// Closes the connection with a reset (SO_LINGER 0), so IPVS forgets it within
    /// seconds instead of keeping it in TIME_WAIT for two minutes.
    pub fn reset(self) {
        let stream = self.reader.into_inner();
        let linger = nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        socket::setsockopt(&stream, sockopt::Linger, &linger).expect("SO_LINGER");
    }

    /// Sends one request and reads the pod's answer.
    pub fn ask(&mut self) -> io::Result<Reply> {
        self.reader.get_mut().write_all(b"?\n")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Reply::parse(&line)
    }
}

fn connect(source: Option<IpAddr>, dst: SocketAddr) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect_timeout(&dst, CLIENT_TIMEOUT);
    };
    let family = match dst {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    // On Linux the send timeout bounds connect() too.
    let timeout = TimeVal::new(i64::try_from(CLIENT_TIMEOUT.as_secs()).unwrap_or(3), 0);
    socket::setsockopt(&fd, sockopt::SendTimeout, &timeout)?;
    socket::bind(
        fd.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(source, 0)),
    )?;
    socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(dst))?;
    Ok(TcpStream::from(fd))
}

/// One request on a fresh TCP connection from `ns` to `dst`.
pub fn tcp(ns: &Netns, dst: SocketAddr) -> io::Result<Reply> {
    tcp_from(ns, None, dst)
}

/// One request on a fresh TCP connection from `ns`, from `source`, to `dst`.
pub fn tcp_from(ns: &Netns, source: Option<IpAddr>, dst: SocketAddr) -> io::Result<Reply> {
    Conn::open(ns, source, dst)?.ask()
}

/// One datagram from `ns` (a fresh socket, so a fresh source port) to `dst`, and its
/// answer.
pub fn udp(ns: &Netns, dst: SocketAddr) -> io::Result<Reply> {
    UdpConn::open(ns, dst)?.ask()
}

/// A UDP socket connected to a Service: every datagram from the same source port, as
/// a DNS resolver's would be, so conntrack and IPVS keep one entry for it.
#[derive(Debug)]
pub struct UdpConn {
    socket: UdpSocket,
}

impl UdpConn {
    /// A socket in `ns`, connected to `dst`.
    pub fn open(ns: &Netns, dst: SocketAddr) -> io::Result<UdpConn> {
        let socket = {
            let _inside = ns.enter();
            let any: SocketAddr = match dst {
                SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("an address"),
                SocketAddr::V6(_) => "[::]:0".parse().expect("an address"),
            };
            UdpSocket::bind(any)?
        };
        socket.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        socket.connect(dst)?;
        Ok(UdpConn { socket })
    }

    /// Sends one datagram and reads the answer.
    pub fn ask(&self) -> io::Result<Reply> {
        self.socket.send(b"?\n")?;
        let mut buf = [0u8; 512];
        let n = self.socket.recv(&mut buf)?;
        Reply::parse(&String::from_utf8_lossy(&buf[..n]))
    }
}

/// Every pod name that answered `count` fresh TCP connections and as many datagrams.
pub fn answered(ns: &Netns, dst: SocketAddr, count: usize) -> BTreeSet<String> {
    let mut pods = BTreeSet::new();
    for i in 0..count {
        let t = tcp(ns, dst).unwrap_or_else(|e| panic!("TCP request {i} to {dst}: {e}"));
        let u = udp(ns, dst).unwrap_or_else(|e| panic!("UDP request {i} to {dst}: {e}"));
        pods.insert(t.pod);
        pods.insert(u.pod);
    }
    pods
}

/// A set of pod names, to compare with what answered.
pub fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// `count` requests on fresh TCP connections; the pods that answered, by name, with how
/// many answers each. Any failure fails the test, with its number.
pub fn spread(
    ns: &Netns,
    dst: SocketAddr,
    count: usize,
) -> std::collections::BTreeMap<String, usize> {
    let mut by_pod = std::collections::BTreeMap::new();
    for i in 0..count {
        let reply = tcp(ns, dst).unwrap_or_else(|e| panic!("request {i} to {dst} failed: {e}"));
        *by_pod.entry(reply.pod).or_insert(0) += 1;
    }
    by_pod
}

/// `ip:port` as a socket address.
pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("a test address"), port)
}
