//! `kipvs run` against the real kernel, with the real tools as oracles: the example
//! cluster is programmed, a restart adopts without changing anything, drift is repaired,
//! state-file changes are applied, SIGTERM leaves the rules, and the servers answer.

// Helpers below are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kipvs_testkit::{terminate, try_http_get, wait_for, Netns};

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
    run_once_with_path(ns, None, state, config)
}

/// `kipvs run --once`, with `PATH` set to `path` when given.
fn run_once_with_path(
    ns: &Netns,
    path: Option<&str>,
    state: &str,
    config: &str,
) -> std::process::Output {
    let run = [
        "run",
        "--once",
        "--state",
        state,
        "--config",
        config,
        "--hostname-override",
        "node-a",
    ];
    match path {
        None => ns.run(KIPVS, &run),
        Some(path) => {
            let path = format!("PATH={path}");
            ns.run("env", &[&[path.as_str(), KIPVS], &run[..]].concat())
        }
    }
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

/// The example cluster as kube-proxy's ipvs mode would program it on node-a (NodePorts on
/// the node's addresses, never on loopback ones).
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
-A -t 192.168.1.10:30080 -s mh -b mh-fallback,mh-port
-a -t 192.168.1.10:30080 -r 10.244.1.5:8080 -m -w 1
-a -t 192.168.1.10:30080 -r 10.244.2.7:8080 -m -w 1
";

fn http_get(ns: &Netns, port: u16, path: &str) -> (u16, String) {
    let (status, _, body) = try_http_get(ns, port, path).unwrap();
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

/// Puts, first in `PATH`, a wrapper for every iptables-restore program there is: it
/// appends to `log` how many virtual services the kernel holds at that moment, then runs
/// the real program. Returns the `PATH` to use.
fn record_restores(dir: &Path, log: &Path) -> String {
    let wrappers = dir.join("bin");
    std::fs::create_dir_all(&wrappers).unwrap();
    let path = std::env::var("PATH").unwrap();
    let mut wrapped = 0;
    for base in ["iptables", "ip6tables"] {
        for backend in ["", "-nft", "-legacy"] {
            let name = format!("{base}{backend}-restore");
            let Some(real) = std::env::split_paths(&path)
                .map(|d| d.join(&name))
                .find(|p| p.is_file())
            else {
                continue;
            };
            let wrapper = wrappers.join(&name);
            std::fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh\nipvsadm -Sn | grep -c '^-A' >>{}\nexec {} \"$@\"\n",
                    log.display(),
                    real.display()
                ),
            )
            .unwrap();
            let status = Command::new("chmod").arg("+x").arg(&wrapper).status();
            assert!(status.unwrap().success());
            wrapped += 1;
        }
    }
    assert!(wrapped >= 2, "no iptables-restore in PATH {path}");
    format!("{}:{path}", wrappers.display())
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn on_a_first_start_the_iptables_rules_come_before_any_virtual_service() {
    let ns = node();
    let dir = scratch("order");
    let log = dir.join("restores.log");
    let _ = std::fs::remove_file(&log);
    let path = record_restores(&dir, &log);
    let config = config(&dir, "30s");
    let state = repo_file("examples/cluster.yaml");
    let out = run_once_with_path(&ns, Some(&path), &state, &config);
    assert!(
        out.status.success(),
        "kipvs run --once failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sorted(&ipvs(&ns)), sorted(EXAMPLE_IPVS));
    let counts = std::fs::read_to_string(&log).unwrap();
    let counts: Vec<&str> = counts.lines().collect();
    assert!(!counts.is_empty(), "kipvs ran no iptables-restore");
    assert!(
        counts.iter().all(|c| *c == "0"),
        "virtual services existed while the rules were written (one count per restore): {counts:?}"
    );
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
fn exclude_cidrs_keep_unwanted_virtual_services_and_services_inside_are_still_programmed() {
    let ns = node();
    let dir = scratch("exclude");
    // The example's ClusterIPs (10.96.0.1, 10.96.0.10, 10.96.10.20) and its NodePort
    // address are all inside the excluded ranges.
    let cfg = config_with(
        &dir,
        "30s",
        ", excludeCIDRs: [10.96.0.0/16, 10.97.0.0/16, 192.168.1.0/24]",
        "",
    );
    // What an earlier proxy left on kube-ipvs0: one virtual service in an excluded
    // range, one outside; no Service wants either.
    ns.sh("ip link add kube-ipvs0 type dummy
           ip addr add 10.97.0.9/32 dev kube-ipvs0
           ip addr add 10.98.0.9/32 dev kube-ipvs0
           ipvsadm -A -t 10.97.0.9:80 -s rr
           ipvsadm -a -t 10.97.0.9:80 -r 10.244.9.9:80 -m -w 1
           ipvsadm -A -t 10.98.0.9:80 -s rr");
    let state = repo_file("examples/cluster.yaml");
    let out = run_once(&ns, &state, &cfg);
    assert!(
        out.status.success(),
        "kipvs run --once failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut expected = sorted(EXAMPLE_IPVS);
    expected.push("-A -t 10.97.0.9:80 -s rr".to_owned());
    expected.push("-a -t 10.97.0.9:80 -r 10.244.9.9:80 -m -w 1".to_owned());
    expected.sort();
    assert_eq!(sorted(&ipvs(&ns)), expected);
    // Addresses no Service wants leave kube-ipvs0, excluded or not, as in kube-proxy.
    let addrs = ns.ip(&["-o", "addr", "show", "dev", "kube-ipvs0"]);
    assert!(addrs.contains("10.96.0.1/32"), "{addrs}");
    assert!(
        !addrs.contains("10.97.0.9/") && !addrs.contains("10.98.0.9/"),
        "{addrs}"
    );
    // A second run finds nothing to do and still leaves the excluded service alone.
    let out = run_once(&ns, &state, &cfg);
    assert!(out.status.success());
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

    // kube-ipvs0 and an (unreferenced, empty) KUBE-* set deleted by hand: the next verify
    // creates both again, as kube-proxy does at every sync, and binds the VIPs again.
    ns.ip(&["link", "del", "kube-ipvs0"]);
    ns.run_ok("ipset", &["destroy", "KUBE-LOAD-BALANCER-LOCAL"]);
    wait_for(
        "kube-ipvs0 and the set again",
        Duration::from_secs(60),
        || {
            ns.run("ip", &["-o", "addr", "show", "dev", "kube-ipvs0"])
                .status
                .success()
                && ns
                    .ip(&["-o", "addr", "show", "dev", "kube-ipvs0"])
                    .contains("10.96.10.20/32")
                && ns
                    .run_ok("ipset", &["list", "-n"])
                    .lines()
                    .any(|l| l == "KUBE-LOAD-BALANCER-LOCAL")
        },
    );
    assert_eq!(sorted(&ipvs(&ns)), sorted(EXAMPLE_IPVS));

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

/// A LoadBalancer Service `shop/NAME` with `externalTrafficPolicy: Local` and a
/// healthCheckNodePort, and its slice with `endpoints` (YAML flow list items).
fn local_load_balancer(name: &str, cluster_ip: &str, hc_port: u16, endpoints: &str) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  type: LoadBalancer
  clusterIP: {cluster_ip}
  clusterIPs: [{cluster_ip}]
  externalTrafficPolicy: Local
  healthCheckNodePort: {hc_port}
  ports: [{{name: http, protocol: TCP, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
endpoints: [{endpoints}]
ports: [{{name: http, protocol: TCP, port: 8080}}]
"
    )
}

/// Writes the state file atomically, so kipvs never reads half of it.
fn write_state(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn health_check_node_ports_answer_with_local_endpoints_and_close_when_the_service_goes() {
    const LOCAL_READY: &str =
        "{addresses: [10.244.1.9], conditions: {ready: true}, nodeName: node-a}";
    const REMOTE_READY: &str =
        "{addresses: [10.244.2.9], conditions: {ready: true}, nodeName: node-b}";
    const LOCAL_NOT_READY: &str =
        "{addresses: [10.244.1.9], conditions: {ready: false}, nodeName: node-a}";
    let ns = node();
    let dir = scratch("healthcheck");
    let cfg = config(&dir, "2s");
    let example = std::fs::read_to_string(repo_file("examples/cluster.yaml")).unwrap();
    let state_path = dir.join("state.yaml");
    // `busy`'s port is taken by another program: kipvs warns and serves the rest.
    let with = |endpoints: &str| {
        format!(
            "{example}{}{}",
            local_load_balancer("lb", "10.96.20.1", 32100, endpoints),
            local_load_balancer("busy", "10.96.20.2", 32101, LOCAL_READY)
        )
    };
    write_state(&state_path, &with(REMOTE_READY));
    let squatter = {
        let _inside = ns.enter();
        std::net::TcpListener::bind(("0.0.0.0", 32101)).unwrap()
    };
    let log = dir.join("kipvs.log");
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name(), KIPVS, "run", "--state"])
        .arg(&state_path)
        .args(["--config", &cfg, "--hostname-override", "node-a"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    // No local endpoint: 503, on any path, with kube-proxy's headers and JSON.
    wait_for("the health check server", Duration::from_secs(60), || {
        try_http_get(&ns, 32100, "/").is_ok()
    });
    let (status, head, body) = try_http_get(&ns, 32100, "/anything").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"service": {"namespace": "shop", "name": "lb"},
                           "localEndpoints": 0, "serviceProxyHealthy": true})
    );

    // A ready endpoint on this node: 200.
    write_state(
        &state_path,
        &with(&format!("{LOCAL_READY}, {REMOTE_READY}")),
    );
    wait_for(
        "200 with one local endpoint",
        Duration::from_secs(60),
        || try_http_get(&ns, 32100, "/healthz").is_ok_and(|(s, _, _)| s == 200),
    );
    let (_, _, body) = try_http_get(&ns, 32100, "/").unwrap();
    assert_eq!(
        body,
        "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"lb\"\n\t},\n\t\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}"
    );

    // It stops being ready: 503 again.
    write_state(&state_path, &with(LOCAL_NOT_READY));
    wait_for(
        "503 once the endpoint is not ready",
        Duration::from_secs(60),
        || try_http_get(&ns, 32100, "/").is_ok_and(|(s, _, _)| s == 503),
    );

    // The busy port was reported, and everything else works.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("cannot open health check port"), "{logged}");
    assert!(ipvs(&ns).contains("-A -t 10.96.20.2:80"), "{}", ipvs(&ns));

    // The port is freed: kipvs opens it at a later sync.
    drop(squatter);
    wait_for(
        "busy's server once its port is free",
        Duration::from_secs(60),
        || try_http_get(&ns, 32101, "/").is_ok_and(|(s, _, _)| s == 200),
    );

    // The Service goes: its port closes.
    write_state(&state_path, &example);
    wait_for(
        "the health check ports to close",
        Duration::from_secs(60),
        || try_http_get(&ns, 32100, "/").is_err() && try_http_get(&ns, 32101, "/").is_err(),
    );
    terminate(child);
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn node_cidr_local_detection_masquerades_by_the_nodes_pod_cidr_and_follows_it() {
    let ns = node();
    let dir = scratch("nodecidr");
    let cfg = config_with(&dir, "2s", "", "detectLocalMode: NodeCIDR\n");
    let example = std::fs::read_to_string(repo_file("examples/cluster.yaml")).unwrap();
    let node_line = "  metadata: {name: node-a, labels: {topology.kubernetes.io/zone: zone-a}}\n";
    assert!(example.contains(node_line));
    let with_pod_cidr = |cidr: &str| {
        example.replace(
            node_line,
            &format!("{node_line}  spec: {{podCIDR: {cidr}, podCIDRs: [{cidr}]}}\n"),
        )
    };
    let state = dir.join("state.yaml");
    write_state(&state, &with_pod_cidr("10.244.1.0/24"));
    let child = start(&ns, &state.display().to_string(), &cfg);
    // Traffic to a ClusterIP from outside this node's pods is masqueraded.
    let masquerades_by = |nat: &str, cidr: &str| {
        nat.lines().any(|l| {
            l.starts_with("-A KUBE-SERVICES ")
                && l.contains(&format!("! -s {cidr} "))
                && l.contains("--match-set KUBE-CLUSTER-IP dst,dst")
                && l.ends_with("-j KUBE-MARK-MASQ")
        })
    };
    wait_for(
        "masquerade by the node's pod CIDR",
        Duration::from_secs(60),
        || masquerades_by(&ns.run_ok("iptables-save", &["-t", "nat"]), "10.244.1.0/24"),
    );
    let nat = ns.run_ok("iptables-save", &["-t", "nat"]);
    assert!(!nat.contains("10.244.0.0/16"), "clusterCIDR used: {nat}");

    // The Node gets another pod CIDR: the rules follow.
    write_state(&state, &with_pod_cidr("10.244.7.0/24"));
    wait_for(
        "masquerade by the new pod CIDR",
        Duration::from_secs(60),
        || {
            let nat = ns.run_ok("iptables-save", &["-t", "nat"]);
            masquerades_by(&nat, "10.244.7.0/24") && !nat.contains("10.244.1.0/24")
        },
    );
    terminate(child);
}

/// The value of the sample `series` (name and labels, as written) in `/metrics`, 0 when
/// absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// An `iptables-restore` that fails is counted as kube-proxy counts it
/// (`kubeproxy_sync_proxy_rules_iptables_restore_failures_total` by `ip_family`), holds
/// the node's health down as a sync that fails as a whole, and is retried until the
/// rules are written. The failure is the kernel's own: the node uses the legacy backend
/// (the kubelet's hint chain in its legacy `mangle` table), whose `nat` tables work (so
/// both families run, as kube-proxy's start-up check finds them), but the `set` match
/// (`xt_set`) is not loaded and the kernel's module loading is off meanwhile, so
/// `iptables-legacy-restore` and `ip6tables-legacy-restore` cannot commit rules that
/// match the KUBE-* sets (each counted under its family); loading the module lets the
/// next retry through.
#[test]
#[ignore = "kernel: run by tests/run"]
fn a_failed_iptables_restore_is_counted_by_family_and_retried_until_the_rules_are_written() {
    /// Puts `kernel.modprobe` back when dropped.
    struct Autoload(String);
    impl Drop for Autoload {
        fn drop(&mut self) {
            let _ = std::fs::write("/proc/sys/kernel/modprobe", &self.0);
        }
    }
    // Every other module kipvs needs (set types, schedulers, matches) is loaded first,
    // by a run on another node with module loading on.
    {
        let warm = node();
        let out = run_once(
            &warm,
            &repo_file("examples/cluster.yaml"),
            &config(&scratch("restore-failure-warm"), "2s"),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // iptables-legacy loads no table module itself.
    for module in [
        "iptable_mangle",
        "iptable_filter",
        "iptable_nat",
        "ip6table_mangle",
        "ip6table_filter",
        "ip6table_nat",
    ] {
        kipvs_testkit::modprobe(module);
    }
    // The warm node's rules go with its namespace, which the kernel tears down in the
    // background: xt_set is free to unload soon after.
    wait_for("xt_set unloaded", Duration::from_secs(30), || {
        let _ = Command::new("modprobe").args(["-r", "xt_set"]).status();
        !Path::new("/sys/module/xt_set").exists()
    });
    let autoload = Autoload(
        std::fs::read_to_string("/proc/sys/kernel/modprobe")
            .unwrap()
            .trim()
            .to_owned(),
    );
    std::fs::write("/proc/sys/kernel/modprobe", "/bin/false").unwrap();
    let ns = node();
    ns.run_ok(
        "iptables-legacy",
        &["-t", "mangle", "-N", "KUBE-IPTABLES-HINT"],
    );
    let dir = scratch("restore-failure");
    let config = config(&dir, "2s");
    let state = repo_file("examples/cluster.yaml");
    let child = start(&ns, &state, &config);
    let failures = |family: &str| {
        format!(
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total{{ip_family=\"{family}\"}}"
        )
    };
    let metrics = || {
        try_http_get(&ns, 10249, "/metrics")
            .map(|(_, _, body)| body)
            .unwrap_or_default()
    };
    wait_for("failed restores counted", Duration::from_secs(60), || {
        let metrics = metrics();
        sample(&metrics, &failures("IPv4")) >= 2.0 && sample(&metrics, &failures("IPv6")) >= 2.0
    });
    let nat = ns.run("iptables-legacy-save", &["-t", "nat"]);
    assert!(
        !String::from_utf8_lossy(&nat.stdout).contains(":KUBE-SERVICES"),
        "rules written without the set match"
    );
    // 2 x syncPeriod without a sync that succeeds as a whole: unhealthy, as kube-proxy.
    wait_for("/healthz 503", Duration::from_secs(30), || {
        try_http_get(&ns, 10256, "/healthz").is_ok_and(|(status, _, _)| status == 503)
    });

    drop(autoload);
    kipvs_testkit::modprobe("xt_set");
    wait_for("the rules written", Duration::from_secs(60), || {
        let nat = ns.run_ok("iptables-legacy-save", &["-t", "nat"]);
        let nat6 = ns.run_ok("ip6tables-legacy-save", &["-t", "nat"]);
        nat.contains(":KUBE-SERVICES")
            && nat.contains("--match-set KUBE-CLUSTER-IP")
            && nat6.contains(":KUBE-SERVICES")
    });
    wait_for("/healthz 200", Duration::from_secs(30), || {
        try_http_get(&ns, 10256, "/healthz").is_ok_and(|(status, _, _)| status == 200)
    });
    // Once written, no more failures: the count stays through further syncs.
    let counted = |metrics: &str| {
        (
            sample(metrics, &failures("IPv4")),
            sample(metrics, &failures("IPv6")),
        )
    };
    let before = counted(&metrics());
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(counted(&metrics()), before);
    // Served in Prometheus' text format, as kube-proxy serves it, to a plain GET.
    let (_, head, body) = try_http_get(&ns, 10249, "/metrics").unwrap();
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        body.contains("# TYPE kubeproxy_sync_proxy_rules_iptables_restore_failures_total counter")
            && !body.contains("# EOF"),
        "{body}"
    );
    terminate(child);
}

/// Inserts a UDP conntrack entry in `ns` from 10.0.0.1:`sport` to `dst`:`dport`,
/// answered (DNATed) from `reply`:`reply_port`, as IPVS leaves one with
/// `net.ipv4.vs.conntrack=1`.
fn insert_udp_entry(ns: &Netns, sport: u16, dst: &str, dport: u16, reply: &str, reply_port: u16) {
    let (sport, dport, reply_port) = (sport.to_string(), dport.to_string(), reply_port.to_string());
    ns.run_ok(
        "conntrack",
        &[
            "-I",
            "-p",
            "udp",
            "-s",
            "10.0.0.1",
            "-d",
            dst,
            "--sport",
            &sport,
            "--dport",
            &dport,
            "-r",
            reply,
            "-q",
            "10.0.0.1",
            "--reply-port-src",
            &reply_port,
            "--reply-port-dst",
            &sport,
            "-t",
            "600",
        ],
    );
}

/// The client ports of the UDP entries `conntrack -L` lists in `ns`.
fn udp_entries(ns: &Netns) -> Vec<u16> {
    let out = ns.run("conntrack", &["-L", "-p", "udp"]);
    let mut ports: Vec<u16> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("sport=")))
        .filter_map(|p| p.parse().ok())
        .collect();
    ports.sort_unstable();
    ports
}

/// kube-proxy 1.37's conntrack reconciler: after a pass that follows a UDP endpoint
/// change (the first listing counts), the UDP entries to a Service IP:port that are not
/// DNATed to a serving endpoint are deleted, read back with `conntrack -L`; the live
/// one, the one to a serving-terminating endpoint and foreign traffic stay; and
/// `kubeproxy_conntrack_reconciler_*` count it by family.
#[test]
#[ignore = "kernel: run by tests/run"]
fn stale_udp_conntrack_entries_to_service_ips_are_deleted_after_udp_endpoint_changes() {
    kipvs_testkit::modprobe("nf_conntrack");
    let ns = node();
    let dir = scratch("conntrack-reconciler");
    let cfg = config(&dir, "300s");
    let example = std::fs::read_to_string(repo_file("examples/cluster.yaml")).unwrap();
    let state_path = dir.join("state.yaml");
    write_state(&state_path, &example);
    // kube-dns, 10.96.0.10:53/UDP: 10.244.1.2 ready, 10.244.2.3 serving-terminating.
    insert_udp_entry(&ns, 40001, "10.96.0.10", 53, "10.244.1.2", 53);
    insert_udp_entry(&ns, 40002, "10.96.0.10", 53, "10.244.2.3", 53);
    insert_udp_entry(&ns, 40003, "10.96.0.10", 53, "10.244.9.9", 53);
    insert_udp_entry(&ns, 40004, "10.0.0.99", 5353, "10.0.0.99", 5353);
    // The right endpoint on the wrong port is not a serving endpoint either.
    insert_udp_entry(&ns, 40006, "10.96.0.10", 53, "10.244.1.2", 5353);
    assert_eq!(udp_entries(&ns), [40001, 40002, 40003, 40004, 40006]);

    let child = start(&ns, state_path.to_str().unwrap(), &cfg);
    let metrics = || {
        try_http_get(&ns, 10249, "/metrics")
            .map(|(_, _, body)| body)
            .unwrap_or_default()
    };
    let deleted = r#"kubeproxy_conntrack_reconciler_deleted_entries_total{ip_family="IPv4"}"#;
    let passes = r#"kubeproxy_conntrack_reconciler_sync_duration_seconds_count{ip_family="IPv4"}"#;
    wait_for("the first reconciler pass", Duration::from_secs(60), || {
        sample(&metrics(), passes) >= 1.0
    });
    let text = metrics();
    assert_eq!(sample(&text, deleted), 2.0, "{text}");
    assert_eq!(sample(&text, passes), 1.0, "{text}");
    assert_eq!(udp_entries(&ns), [40001, 40002, 40004]);

    // A new stale entry is left alone until the next UDP endpoint change, then goes;
    // adding an endpoint flushes nothing else (the live entry stays).
    insert_udp_entry(&ns, 40005, "10.96.0.10", 53, "10.244.9.8", 53);
    write_state(
        &state_path,
        &example.replacen(
            "  - addresses: [10.244.1.2]\n",
            "  - addresses: [10.244.1.7]\n    conditions: {ready: true}\n  - addresses: [10.244.1.2]\n",
            1,
        ),
    );
    wait_for(
        "the second reconciler pass",
        Duration::from_secs(60),
        || sample(&metrics(), passes) >= 2.0,
    );
    let text = metrics();
    assert_eq!(sample(&text, deleted), 3.0, "{text}");
    assert_eq!(udp_entries(&ns), [40001, 40002, 40004]);
    assert!(
        ns.run_ok("ipvsadm", &["-Ln", "-u", "10.96.0.10:53"])
            .contains("10.244.1.7:53"),
        "the endpoint change was programmed"
    );
    terminate(child);
}
