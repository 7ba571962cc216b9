//! Families (issue 16, point 6): `kipvs run` on a node without IPv6, or whose ip6tables
//! does not work, runs IPv4 alone as kube-proxy 1.37 does (`platformCheckSupported`):
//! the IPv4 half of a dual-stack cluster is programmed in full with no failure, the IPv6
//! Services are left out, and nothing IPv6 is touched, ip6tables-restore least of all.
//! The real kernel and tools are the oracles: ipvsadm, ipset, ip, iptables-save, and a
//! log of every ip6tables program kipvs starts.

// Helpers below are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kipvs_testkit::{terminate, try_http_get, wait_for, Netns};

const KIPVS: &str = env!("CARGO_BIN_EXE_kipvs");

/// A scratch directory for configs, state files and wrappers.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kipvs-fam-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(dir: &Path, top_extra: &str) -> String {
    config_with_cidr(dir, "10.244.0.0/16,fd00:244::/48", top_extra)
}

fn config_with_cidr(dir: &Path, cluster_cidr: &str, top_extra: &str) -> String {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs\n\
             clusterCIDR: {cluster_cidr}\nhealthzBindAddress: 127.0.0.1:10256\n\
             metricsBindAddress: 127.0.0.1:10249\nipvs: {{syncPeriod: 2s, minSyncPeriod: 0s}}\n{top_extra}"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// A dual-stack cluster: Node node-a with `node_addresses` as InternalIPs (in order), a
/// dual-stack NodePort Service `web` with an endpoint of each family, and an IPv6-only
/// Service `web6`.
fn state(dir: &Path, node_addresses: &[&str]) -> String {
    let addresses: String = node_addresses
        .iter()
        .map(|a| format!("    - {{type: InternalIP, address: \"{a}\"}}\n"))
        .collect();
    let text = format!(
        "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {{name: node-a}}
  status:
    addresses:
{addresses}- apiVersion: v1
  kind: Service
  metadata: {{name: web, namespace: shop}}
  spec:
    type: NodePort
    ipFamilyPolicy: PreferDualStack
    ipFamilies: [IPv4, IPv6]
    clusterIP: 10.96.10.20
    clusterIPs: [10.96.10.20, \"fd00:96::20\"]
    ports: [{{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: web-v4, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
  addressType: IPv4
  endpoints: [{{addresses: [10.244.1.5], conditions: {{ready: true}}, nodeName: node-a}}]
  ports: [{{name: http, protocol: TCP, port: 8080}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: web-v6, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
  addressType: IPv6
  endpoints: [{{addresses: [\"fd00:244::5\"], conditions: {{ready: true}}, nodeName: node-a}}]
  ports: [{{name: http, protocol: TCP, port: 8080}}]
- apiVersion: v1
  kind: Service
  metadata: {{name: web6, namespace: shop}}
  spec:
    type: ClusterIP
    ipFamilies: [IPv6]
    clusterIP: \"fd00:96::30\"
    clusterIPs: [\"fd00:96::30\"]
    ports: [{{name: http, protocol: TCP, port: 80, targetPort: 8080}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: web6-v6, namespace: shop, labels: {{kubernetes.io/service-name: web6}}}}
  addressType: IPv6
  endpoints: [{{addresses: [\"fd00:244::6\"], conditions: {{ready: true}}, nodeName: node-a}}]
  ports: [{{name: http, protocol: TCP, port: 8080}}]
"
    );
    let path = dir.join("cluster.yaml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The IPv4 half of [`state`]'s cluster, as `ipvsadm -Sn` lists it (sorted).
const IPV4_IPVS: &str = "\
-A -t 10.96.10.20:80 -s rr
-A -t 192.168.1.10:30080 -s rr
-a -t 10.96.10.20:80 -r 10.244.1.5:8080 -m -w 1
-a -t 192.168.1.10:30080 -r 10.244.1.5:8080 -m -w 1
";

/// Puts, first in `PATH`, a wrapper for every ip6tables program name (plain, `-nft`,
/// `-legacy`; the command, `-save`, `-restore`) that appends its command line to `log`,
/// then runs the real program (`working`) or fails as ip6tables does where the kernel
/// has no IPv6 nat table. Returns the `PATH` to use.
fn ip6tables_wrappers(dir: &Path, log: &Path, working: bool) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let path = std::env::var("PATH").unwrap();
    for backend in ["", "-nft", "-legacy"] {
        for tool in ["", "-save", "-restore"] {
            let name = format!("ip6tables{backend}{tool}");
            let real = std::env::split_paths(&path)
                .map(|d| d.join(&name))
                .find(|p| p.is_file());
            let body = match (working, real) {
                (true, Some(real)) => format!("exec {} \"$@\"", real.display()),
                (true, None) => continue,
                (false, _) => "echo \"ip6tables v1.8.9: can't initialize ip6tables table \
                     \\`nat': Address family not supported by protocol\" >&2\nexit 3"
                    .to_owned(),
            };
            let wrapper = bin.join(&name);
            std::fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh\necho \"$(basename \"$0\") $*\" >>{}\n{body}\n",
                    log.display()
                ),
            )
            .unwrap();
            let status = Command::new("chmod").arg("+x").arg(&wrapper).status();
            assert!(status.unwrap().success());
        }
    }
    format!("{}:{path}", bin.display())
}

/// `kipvs run` in `ns` with `PATH` set to `path`, its standard error in `stderr`.
fn start(ns: &Netns, path: &str, state: &str, config: &str, stderr: &Path) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns.name(), "env"])
        .arg(format!("PATH={path}"))
        .args([KIPVS, "run", "--state", state, "--config", config])
        .args(["--hostname-override", "node-a"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap()
}

/// `kipvs run --once` in `ns` with `PATH` set to `path`.
fn run_once(ns: &Netns, path: &str, state: &str, config: &str) -> std::process::Output {
    let path = format!("PATH={path}");
    ns.run(
        "env",
        &[
            &path,
            KIPVS,
            "run",
            "--once",
            "--state",
            state,
            "--config",
            config,
            "--hostname-override",
            "node-a",
        ],
    )
}

/// The value of the sample `series` (name and labels, as written) in `/metrics`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn sorted(text: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// What a node that runs IPv4 alone must show once kipvs has synced: the IPv4 half in
/// full (virtual services, VIP, set members, iptables rules), nothing IPv6 (no virtual
/// service, VIP, KUBE-6-* set, ip6tables-restore), three clean passes by the metrics,
/// and `/healthz` healthy with IPv4 alone in its status.
fn assert_ipv4_alone(ns: &Netns, ip6tables_log: &Path, stderr: &Path) {
    let metrics = || {
        try_http_get(ns, 10249, "/metrics")
            .map(|(_, _, body)| body)
            .unwrap_or_default()
    };
    // syncPeriod 2s: three verifies (each reads the kernel back and plans again).
    wait_for("three passes", Duration::from_secs(60), || {
        let m = metrics();
        sample(&m, "kipvs_sync_errors_total") == Some(0.0)
            && sample(
                &m,
                "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
            )
            .is_some_and(|n| n >= 3.0)
    });
    let log = std::fs::read_to_string(stderr).unwrap_or_default();
    let m = metrics();
    assert_eq!(
        sample(&m, "kipvs_sync_errors_total"),
        Some(0.0),
        "{m}\n{log}"
    );
    assert!(!m.contains("ip_family=\"IPv6\""), "IPv6 series: {m}");
    assert_eq!(
        sample(
            &m,
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family=\"IPv4\"}"
        )
        .unwrap_or(0.0),
        0.0,
        "{m}"
    );
    assert!(
        !m.lines()
            .any(|l| l.starts_with("kipvs_kernel_operations_total") && !l.contains("result=\"ok\"")),
        "a kernel operation failed: {m}"
    );
    let (status, _, body) = try_http_get(ns, 10256, "/healthz").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":{\"IPv4\":"), "{body}");
    assert!(!body.contains("IPv6"), "{body}");

    assert_eq!(sorted(&ns.run_ok("ipvsadm", &["-Sn"])), IPV4_IPVS);
    let vips = ns.ip(&["-o", "addr", "show", "dev", "kube-ipvs0"]);
    assert!(vips.contains("10.96.10.20/32"), "{vips}");
    assert!(!vips.contains("fd00:"), "IPv6 on kube-ipvs0: {vips}");
    let sets = ns.run_ok("ipset", &["list", "-n"]);
    assert!(sets.lines().any(|s| s == "KUBE-CLUSTER-IP"), "{sets}");
    assert!(!sets.contains("KUBE-6-"), "IPv6 sets: {sets}");
    let cluster_ip = ns.run_ok("ipset", &["list", "KUBE-CLUSTER-IP"]);
    assert!(cluster_ip.contains("10.96.10.20,tcp:80"), "{cluster_ip}");
    let nat = ns.run_ok("iptables-save", &["-t", "nat"]);
    assert!(nat.contains("--match-set KUBE-CLUSTER-IP"), "{nat}");

    let runs = std::fs::read_to_string(ip6tables_log).unwrap_or_default();
    assert!(
        !runs.lines().any(|l| l.contains("-restore")),
        "ip6tables written: {runs}"
    );
    // Looked at once, as kube-proxy looks: can ip6tables list the nat table?
    assert!(
        runs.lines().any(|l| l.contains("-S POSTROUTING -t nat")),
        "kipvs never asked ip6tables: {runs}"
    );
    assert!(log.contains("kipvs running in single-stack mode"), "{log}");
}

/// A node namespace with eth0 at 192.168.1.10 (and fd00:1::10 when `ipv6`).
fn node(ipv6: bool) -> Netns {
    let ns = Netns::new();
    ns.sh("ip link add eth0 type dummy
           ip addr add 192.168.1.10/24 dev eth0
           ip link set eth0 up");
    if ipv6 {
        ns.sh("ip addr add fd00:1::10/64 dev eth0 nodad");
    }
    ns
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn a_node_with_ipv6_disabled_syncs_ipv4_in_full_and_never_runs_ip6tables_restore() {
    let ns = node(false);
    ns.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
    assert_eq!(
        ns.run_ok("cat", &["/proc/sys/net/ipv6/conf/default/disable_ipv6"])
            .trim(),
        "1"
    );
    let dir = scratch("disabled");
    let ip6tables_log = dir.join("ip6tables.log");
    // The real ip6tables, which works here (IPv6 is disabled, not absent): kipvs leaves
    // IPv6 out on the kernel's word alone, as kube-proxy does.
    let path = ip6tables_wrappers(&dir, &ip6tables_log, true);
    let state = state(&dir, &["192.168.1.10"]);
    let config = config(&dir, "");
    let stderr = dir.join("kipvs.log");
    let child = start(&ns, &path, &state, &config, &stderr);
    assert_ipv4_alone(&ns, &ip6tables_log, &stderr);
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert!(log.contains("Kernel support disabled for family"), "{log}");
    terminate(child);

    // A Node whose primary address is IPv6 cannot be served here: kube-proxy refuses to
    // start, and so does kipvs, saying why, before it changes anything.
    let ns = node(false);
    ns.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
    let state = self::state(&dir, &["fd00:1::10", "192.168.1.10"]);
    let out = run_once(&ns, &path, &state, &config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("no support for primary IP family \"IPv6\""),
        "{err}"
    );
    assert_eq!(
        ns.run_ok("ipvsadm", &["-Sn"]),
        "",
        "programmed a node it cannot serve"
    );

    // So does a bindAddress of the missing family, before any Node arrives.
    let config = self::config(&dir, "bindAddress: fd00:1::10\n");
    let state = self::state(&dir, &["192.168.1.10"]);
    let out = run_once(&ns, &path, &state, &config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no support for primary IP family"), "{err}");

    // A clusterCIDR of only the family that does not run: kube-proxy refuses it with
    // detectLocalMode ClusterCIDR (the default), and so does kipvs.
    let config = config_with_cidr(&dir, "fd00:244::/48", "");
    let out = run_once(&ns, &path, &state, &config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cluster is IPv4-only but clusterCIDRs contains only IPv6 addresses"),
        "{err}"
    );
    assert_eq!(ns.run_ok("ipvsadm", &["-Sn"]), "");
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn a_node_whose_ip6tables_fails_runs_ipv4_alone_and_cleans_up_without_it() {
    // IPv6 is up (the node has fd00:1::10), but ip6tables cannot work: as where IPv6 is
    // disabled at boot. kube-proxy runs IPv4 alone on such a node.
    let ns = node(true);
    let dir = scratch("no-ip6tables");
    let ip6tables_log = dir.join("ip6tables.log");
    let path = ip6tables_wrappers(&dir, &ip6tables_log, false);
    let state = state(&dir, &["192.168.1.10", "fd00:1::10"]);
    let config = config(&dir, "");
    let stderr = dir.join("kipvs.log");
    let child = start(&ns, &path, &state, &config, &stderr);
    assert_ipv4_alone(&ns, &ip6tables_log, &stderr);
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert!(log.contains("No iptables support for family"), "{log}");
    assert!(
        !ns.run_ok("ipvsadm", &["-Sn"]).contains("fd00:1::10"),
        "an IPv6 NodePort"
    );
    terminate(child);

    // `kipvs cleanup` removes the IPv4 half and skips the family it cannot reach.
    let path_env = format!("PATH={path}");
    let out = ns.run("env", &[&path_env, KIPVS, "cleanup"]);
    assert!(
        out.status.success(),
        "cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ns.run_ok("ipvsadm", &["-Sn"]), "");
    assert!(!ns.run_ok("iptables-save", &["-t", "nat"]).contains("KUBE-"));
    let runs = std::fs::read_to_string(&ip6tables_log).unwrap();
    assert!(!runs.lines().any(|l| l.contains("-restore")), "{runs}");
}
