//! `kipvs run` against the real kernel, with the real tools as oracles: the example
//! cluster is programmed, a restart adopts without changing anything, drift is repaired,
//! state-file changes are applied, SIGTERM leaves the rules, and the servers answer.

// Helpers below are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kipvs_testkit::{terminate, wait_for, Netns};

const KIPVS: &str = env!("CARGO_BIN_EXE_kipvs");

fn repo_file(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// A node namespace with eth0 carrying the example node's address.
fn node() -> Netns {
    let ns = Netns::new();
    ns.sh("ip link add eth0 type dummy
           ip addr add 192.168.1.10/24 dev eth0
           ip link set eth0 up");
    ns
}

/// A scratch directory for configs and state files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kipvs-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(dir: &Path, sync_period: &str) -> String {
    config_with(dir, sync_period, "", "")
}

/// A config with more `ipvs` fields (`, key: value` pairs) and more top-level lines.
fn config_with(dir: &Path, sync_period: &str, ipvs_extra: &str, top_extra: &str) -> String {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs\n\
             clusterCIDR: 10.244.0.0/16\nhealthzBindAddress: 127.0.0.1:10256\nmetricsBindAddress: 127.0.0.1:10249\n\
             ipvs: {{syncPeriod: {sync_period}, minSyncPeriod: 0s{ipvs_extra}}}\n{top_extra}"
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn run_once(ns: &Netns, state: &str, config: &str) -> std::process::Output {
    ns.run(
        KIPVS,
        &[
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

fn start(ns: &Netns, state: &str, config: &str) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            KIPVS,
            "run",
            "--state",
            state,
            "--config",
            config,
        ])
        .args(["--hostname-override", "node-a"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn ipvs(ns: &Netns) -> String {
    ns.run_ok("ipvsadm", &["-Sn"])
}

/// What `ipvsadm -Sn` lists, sorted (the kernel lists services in hash order).
fn sorted(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// The example cluster as kube-proxy's ipvs mode would program it on node-a.
const EXAMPLE_IPVS: &str = "\
-A -t 10.96.0.1:443 -s rr
-a -t 10.96.0.1:443 -r 192.168.1.10:6443 -m -w 1
-A -t 10.96.0.10:53 -s rr -p 10800
-a -t 10.96.0.10:53 -r 10.244.1.2:53 -m -w 1
-A -u 10.96.0.10:53 -s rr -p 10800
-a -u 10.96.0.10:53 -r 10.244.1.2:53 -m -w 1
-A -t 10.96.10.20:80 -s mh -b mh-fallback,mh-port
-a -t 10.96.10.20:80 -r 10.244.1.5:8080 -m -w 1
-a -t 10.96.10.20:80 -r 10.244.2.7:8080 -m -w 1
-A -t 127.0.0.1:30080 -s mh -b mh-fallback,mh-port
-a -t 127.0.0.1:30080 -r 10.244.1.5:8080 -m -w 1
-a -t 127.0.0.1:30080 -r 10.244.2.7:8080 -m -w 1
-A -t 192.168.1.10:30080 -s mh -b mh-fallback,mh-port
-a -t 192.168.1.10:30080 -r 10.244.1.5:8080 -m -w 1
-a -t 192.168.1.10:30080 -r 10.244.2.7:8080 -m -w 1
";

fn http_get(ns: &Netns, port: u16, path: &str) -> (u16, String) {
    let _inside = ns.enter();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: kipvs\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn run_once_programs_the_example_cluster() {
    let ns = node();
    let dir = scratch("once");
    let out = run_once(
        &ns,
        &repo_file("examples/cluster.yaml"),
        &config(&dir, "30s"),
    );
    assert!(
        out.status.success(),
        "kipvs run --once failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sorted(&ipvs(&ns)), sorted(EXAMPLE_IPVS));

    let addrs = ns.ip(&["-o", "addr", "show", "dev", "kube-ipvs0"]);
    for vip in ["10.96.0.1/32", "10.96.0.10/32", "10.96.10.20/32"] {
        assert!(addrs.contains(vip), "{vip} not on kube-ipvs0: {addrs}");
    }
    let local = ns.ip(&["route", "show", "table", "local"]);
    assert!(
        local.contains("local 10.96.10.20 dev kube-ipvs0"),
        "{local}"
    );

    let cluster_ip = ns.run_ok("ipset", &["list", "KUBE-CLUSTER-IP"]);
    for member in [
        "10.96.0.1,tcp:443",
        "10.96.0.10,udp:53",
        "10.96.0.10,tcp:53",
        "10.96.10.20,tcp:80",
    ] {
        assert!(
            cluster_ip.contains(member),
            "{member} not in KUBE-CLUSTER-IP: {cluster_ip}"
        );
    }
    let node_ports = ns.run_ok("ipset", &["list", "KUBE-NODE-PORT-TCP"]);
    assert!(node_ports.contains("\n30080\n"), "{node_ports}");

    let nat = ns.run_ok("iptables-save", &["-t", "nat"]);
    assert!(nat.contains(":KUBE-SERVICES"), "{nat}");
    assert!(
        nat.contains(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        ) || nat.contains("-A PREROUTING") && nat.contains("-j KUBE-SERVICES"),
        "{nat}"
    );
    assert!(nat.contains("--match-set KUBE-CLUSTER-IP"), "{nat}");
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn a_restart_adopts_the_kernel_state_and_leaves_foreign_services_alone() {
    let ns = node();
    let dir = scratch("adopt");
    let cfg = config(&dir, "30s");
    let state = repo_file("examples/cluster.yaml");
    assert!(run_once(&ns, &state, &cfg).status.success());
    // keepalived-style state kipvs does not own, and a weight an operator set to 0 on a
    // kipvs destination (a restart must bring it back, unlike kube-proxy).
    ns.run_ok("ipvsadm", &["-A", "-t", "198.51.100.1:80", "-s", "wlc"]);
    ns.run_ok(
        "ipvsadm",
        &[
            "-a",
            "-t",
            "198.51.100.1:80",
            "-r",
            "192.0.2.9:80",
            "-g",
            "-w",
            "3",
        ],
    );
    ns.run_ok(
        "ipvsadm",
        &[
            "-e",
            "-t",
            "10.96.0.1:443",
            "-r",
            "192.168.1.10:6443",
            "-m",
            "-w",
            "0",
        ],
    );
    let out = run_once(&ns, &state, &cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut expected = sorted(EXAMPLE_IPVS);
    expected.push("-A -t 198.51.100.1:80 -s wlc".to_owned());
    expected.push("-a -t 198.51.100.1:80 -r 192.0.2.9:80 -g -w 3".to_owned());
    expected.sort();
    assert_eq!(sorted(&ipvs(&ns)), expected);
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn drift_is_repaired_and_state_file_changes_applied_and_sigterm_keeps_the_rules() {
    let ns = node();
    let dir = scratch("daemon");
    let cfg = config(&dir, "2s");
    let state = dir.join("state.yaml");
    std::fs::copy(repo_file("examples/cluster.yaml"), &state).unwrap();
    let state = state.display().to_string();
    let child = start(&ns, &state, &cfg);
    wait_for("the example cluster", Duration::from_secs(60), || {
        sorted(&ipvs(&ns)) == sorted(EXAMPLE_IPVS)
    });

    // Drift: a virtual service and a VIP removed by hand come back at the next verify.
    ns.run_ok("ipvsadm", &["-D", "-t", "10.96.0.1:443"]);
    ns.ip(&["addr", "del", "10.96.0.1/32", "dev", "kube-ipvs0"]);
    wait_for("drift repair", Duration::from_secs(60), || {
        sorted(&ipvs(&ns)) == sorted(EXAMPLE_IPVS)
            && ns
                .ip(&["-o", "addr", "show", "dev", "kube-ipvs0"])
                .contains("10.96.0.1/32")
    });

    // The state file changes: kube-dns goes away, its services and VIP with it.
    let text = std::fs::read_to_string(repo_file("examples/cluster.yaml")).unwrap();
    let without_dns = text
        .split("- apiVersion: v1\n  kind: Service\n  metadata: {name: kube-dns")
        .next()
        .unwrap();
    std::fs::write(&state, without_dns).unwrap();
    wait_for("kube-dns removal", Duration::from_secs(60), || {
        !ipvs(&ns).contains("10.96.0.10:53")
    });
    assert!(!ns
        .ip(&["-o", "addr", "show", "dev", "kube-ipvs0"])
        .contains("10.96.0.10/32"));

    // Health, metrics and proxy mode answer like kube-proxy's.
    let (status, body) = http_get(&ns, 10256, "/healthz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"nodeEligible\":true"), "{body}");
    assert_eq!(http_get(&ns, 10249, "/proxyMode"), (200, "ipvs".to_owned()));
    let (_, metrics) = http_get(&ns, 10249, "/metrics");
    assert!(
        metrics.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kipvs_kernel_operations_total{kind=\"delete_service\",result=\"ok\"}"),
        "{metrics}"
    );

    // SIGTERM: kipvs stops, the rules stay.
    let before = ipvs(&ns);
    terminate(child);
    assert_eq!(ipvs(&ns), before);
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn cleanup_removes_what_kipvs_owns_and_nothing_else_and_can_run_twice() {
    let ns = node();
    let dir = scratch("cleanup");
    let cfg = config(&dir, "30s");
    assert!(run_once(&ns, &repo_file("examples/cluster.yaml"), &cfg)
        .status
        .success());
    ns.run_ok("ipvsadm", &["-A", "-t", "198.51.100.1:80", "-s", "wlc"]);
    ns.run_ok("ipset", &["create", "FOREIGN", "hash:ip"]);
    ns.run_ok("iptables", &["-t", "nat", "-N", "FOREIGN-CHAIN"]);
    ns.run_ok(
        "iptables",
        &["-t", "nat", "-A", "PREROUTING", "-j", "FOREIGN-CHAIN"],
    );

    let out = ns.run(KIPVS, &["cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ipvs(&ns), "-A -t 198.51.100.1:80 -s wlc\n");
    assert!(
        !ns.run("ip", &["link", "show", "kube-ipvs0"])
            .status
            .success(),
        "kube-ipvs0 survived"
    );
    assert_eq!(ns.run_ok("ipset", &["list", "-n"]), "FOREIGN\n");
    for table in ["nat", "filter"] {
        let saved = ns.run_ok("iptables-save", &["-t", table]);
        assert!(!saved.contains("KUBE-"), "{table}: {saved}");
    }
    let nat = ns.run_ok("iptables-save", &["-t", "nat"]);
    assert!(nat.contains("-A PREROUTING -j FOREIGN-CHAIN"), "{nat}");

    // Again, through kube-proxy's spelling: nothing left to remove, and no error.
    let out = ns.run(KIPVS, &["run", "--cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ipvs(&ns), "-A -t 198.51.100.1:80 -s wlc\n");
    assert_eq!(ns.run_ok("ipset", &["list", "-n"]), "FOREIGN\n");
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn ipvs_timeouts_from_the_config_reach_the_kernel_and_zero_leaves_a_value_alone() {
    let ns = node();
    let dir = scratch("timeouts");
    ns.run_ok("ipvsadm", &["--set", "100", "10", "50"]);
    let cfg = config_with(&dir, "30s", ", tcpTimeout: 900s, udpTimeout: 200s", "");
    let out = run_once(&ns, &repo_file("examples/cluster.yaml"), &cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let timeouts = ns.run_ok("ipvsadm", &["-L", "--timeout"]);
    assert_eq!(timeouts.trim(), "Timeout (tcp tcpfin udp): 900 10 200");
}
