//! The conformance suite's capture of a node (kipvs-conformance), checked on a node
//! programmed by `kipvs run --state`: each section says what the real tools say
//! (`ipvsadm`, `ipset`, `iptables-save`, `ip`, `sysctl`) and what the servers answer,
//! and two nodes programmed alike capture identically, so a difference between
//! kube-proxy's node and kipvs' is never noise of the capture itself.

// Helpers below are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kipvs_conformance::capture::{Capture, Section};
use kipvs_conformance::compare::{differences, Comparison, Outcome};
use kipvs_conformance::driver::SYNC_METRIC;
use kipvs_conformance::node::{NodeNs, Probes};
use kipvs_conformance::scenario::{NODE_IP, NODE_SETUP};
use kipvs_testkit::{terminate, wait_for, Netns};

const KIPVS: &str = env!("CARGO_BIN_EXE_kipvs");
const HEALTHZ: &str = "127.0.0.1:10256";
const METRICS: &str = "127.0.0.1:10249";

fn repo_file(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// The example cluster plus a LoadBalancer with `externalTrafficPolicy: Local`, an
/// ingress IP and a ready endpoint on this node, so every section has something in it.
fn state(dir: &Path) -> PathBuf {
    let example = std::fs::read_to_string(repo_file("examples/cluster.yaml")).unwrap();
    let lb = "- apiVersion: v1
  kind: Service
  metadata: {name: lb, namespace: shop}
  spec:
    type: LoadBalancer
    clusterIP: 10.96.20.1
    clusterIPs: [10.96.20.1]
    externalTrafficPolicy: Local
    healthCheckNodePort: 32100
    ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30081}]
  status: {loadBalancer: {ingress: [{ip: 203.0.113.10}]}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: lb-1, namespace: shop, labels: {kubernetes.io/service-name: lb}}
  addressType: IPv4
  endpoints: [{addresses: [10.244.1.9], conditions: {ready: true}, nodeName: node-a}]
  ports: [{name: http, protocol: TCP, port: 8080}]
";
    let path = dir.join("state.yaml");
    std::fs::write(&path, format!("{example}{lb}")).unwrap();
    path
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kipvs-conf-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A node as the conformance driver makes it, running `kipvs run --state`.
fn programmed_node(dir: &Path) -> (Netns, Child) {
    let ns = Netns::new();
    ns.sh(NODE_SETUP);
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "mode: ipvs\nclusterCIDR: 10.244.0.0/16\nhealthzBindAddress: {HEALTHZ}\nmetricsBindAddress: {METRICS}\n\
             ipvs: {{strictARP: true, tcpTimeout: 900s}}\n"
        ),
    )
    .unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", ns.name(), KIPVS, "run", "--state"])
        .arg(state(dir))
        .arg("--config")
        .arg(&config)
        .args(["--hostname-override", "node-a", "--owners-file"])
        .arg(dir.join(format!("owners-{}.json", ns.name())))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let node = NodeNs::new(ns.name());
    wait_for("kipvs' first sync", Duration::from_secs(90), || {
        let samples = node.metric_samples(METRICS, SYNC_METRIC);
        !samples.is_empty() && samples.iter().all(|(_, v)| *v > 0.0)
    });
    (ns, child)
}

fn probes() -> Probes {
    Probes {
        healthz: Some(HEALTHZ.into()),
        metrics: Some(METRICS.into()),
        health_check_node_ports: vec![32100],
        node_ip: NODE_IP.into(),
    }
}

/// Captures until two captures in a row are equal (kipvs' health check servers and
/// later syncs may still be settling right after the first sync).
fn settled_capture(node: &NodeNs) -> Capture {
    let mut last = node.capture(&probes()).unwrap();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_secs(1));
        let next = node.capture(&probes()).unwrap();
        if next == last {
            return next;
        }
        last = next;
    }
    panic!("the capture never settled:\n{}", last.render());
}

fn has(capture: &Capture, section: Section, line: &str) -> bool {
    capture.lines(section).iter().any(|l| l == line)
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn a_capture_says_what_the_real_tools_and_servers_say() {
    let dir = scratch("tools");
    let (ns, child) = programmed_node(&dir);
    let node = NodeNs::new(ns.name());
    let capture = settled_capture(&node);
    let text = capture.render();

    // ipvs: exactly ipvsadm -Sn's lines, sorted, and the timeouts as `--set`.
    let mut expected: Vec<String> = ns
        .run_ok("ipvsadm", &["-Sn"])
        .lines()
        .map(|l| l.trim_end().to_owned())
        .collect();
    expected.sort();
    let timeouts = ns.run_ok("ipvsadm", &["-Ln", "--timeout"]);
    let values = timeouts
        .trim()
        .split_once("):")
        .unwrap()
        .1
        .trim()
        .to_owned();
    assert!(values.starts_with("900 "), "{timeouts}");
    expected.push(format!("--set {values}"));
    assert_eq!(capture.lines(Section::Ipvs), expected.as_slice());
    assert!(
        has(&capture, Section::Ipvs, "-A -t 203.0.113.10:80 -s rr"),
        "{text}"
    );

    // ipset: every set ipset lists, with every member it lists.
    for set in ns.run_ok("ipset", &["list", "-n"]).lines() {
        let listed = ns.run_ok("ipset", &["list", set]);
        let header = capture
            .lines(Section::Ipset)
            .iter()
            .find(|l| l.starts_with(&format!("create {set} ")))
            .unwrap_or_else(|| panic!("no create line for {set}:\n{text}"));
        let kind = listed
            .lines()
            .find_map(|l| l.strip_prefix("Type: "))
            .unwrap();
        assert!(
            header.starts_with(&format!("create {set} {kind}")),
            "{header}"
        );
        assert!(!header.contains("initval"), "{header}");
        let members: Vec<&str> = listed
            .split("Members:\n")
            .nth(1)
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .collect();
        let captured = capture
            .lines(Section::Ipset)
            .iter()
            .filter(|l| l.starts_with(&format!("add {set} ")))
            .count();
        assert_eq!(captured, members.len(), "{set}: {listed}\n{text}");
        for member in members {
            assert!(
                has(&capture, Section::Ipset, &format!("add {set} {member}")),
                "{set} {member}\n{text}"
            );
        }
    }
    assert!(
        has(
            &capture,
            Section::Ipset,
            "add KUBE-LOAD-BALANCER-LOCAL 203.0.113.10,tcp:80"
        ),
        "{text}"
    );

    // iptables: every rule iptables-save prints, in its chain's order, and nothing else.
    for (section, tool) in [
        (Section::Iptables, "iptables-save"),
        (Section::Ip6tables, "ip6tables-save"),
    ] {
        let saved = ns.run_ok(tool, &[]);
        let mut table = String::new();
        let mut rules = Vec::new();
        for line in saved.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.to_owned();
            } else if line.starts_with("-A ") {
                rules.push(format!("{table} {line}"));
            }
        }
        let captured: Vec<&String> = capture
            .lines(section)
            .iter()
            .filter(|l| l.split_whitespace().nth(1) == Some("-A"))
            .collect();
        assert_eq!(captured.len(), rules.len(), "{tool}:\n{saved}\n{text}");
        for chain in rules
            .iter()
            .map(|r| r.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        {
            let in_save: Vec<&String> = rules
                .iter()
                .filter(|r| r.starts_with(&format!("{chain} ")))
                .collect();
            let in_capture: Vec<&String> = captured
                .iter()
                .copied()
                .filter(|r| r.starts_with(&format!("{chain} ")))
                .collect();
            assert_eq!(in_save, in_capture, "{chain}");
        }
    }
    assert!(
        has(
            &capture,
            Section::Iptables,
            "nat -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"
        ),
        "{text}"
    );
    assert!(
        has(&capture, Section::Iptables, "nat :KUBE-SERVICES -"),
        "{text}"
    );

    // links: kube-ipvs0 and each address `ip` lists on it.
    let addrs = ns.ip(&["-o", "addr", "show", "dev", "kube-ipvs0"]);
    let mut n = 0;
    for addr in addrs.lines().filter_map(|l| l.split_whitespace().nth(3)) {
        n += 1;
        assert!(
            capture
                .lines(Section::Links)
                .iter()
                .any(|l| l.starts_with(&format!("kube-ipvs0 inet {addr} "))),
            "{addr}\n{text}"
        );
    }
    assert!(n >= 4, "{addrs}");
    assert!(
        capture
            .lines(Section::Links)
            .iter()
            .any(|l| l.starts_with("kube-ipvs0 link dummy flags BROADCAST,NOARP")),
        "{text}"
    );

    // sysctl: the values sysctl reads.
    for key in [
        "net.ipv4.vs.conntrack",
        "net.ipv4.ip_forward",
        "net.ipv4.conf.all.arp_ignore",
        "net.ipv4.conf.all.arp_announce",
    ] {
        let value = ns.run_ok("sysctl", &["-n", key]);
        assert!(
            has(
                &capture,
                Section::Sysctl,
                &format!("{key} = {}", value.trim())
            ),
            "{key}\n{text}"
        );
    }
    assert!(
        has(&capture, Section::Sysctl, "net.ipv4.vs.conntrack = 1"),
        "{text}"
    );

    // health: the servers' answers, times normalized (whatever their format).
    assert!(
        capture
            .lines(Section::Health)
            .iter()
            .any(|l| l.starts_with("healthz body .lastUpdated <") && l.ends_with('>')),
        "{text}"
    );
    for line in [
        "healthz status 200",
        "livez status 200",
        "proxyMode status 200",
        "proxyMode text ipvs",
        "healthCheckNodePort 32100 status 200",
        "healthCheckNodePort 32100 body .localEndpoints 1",
        "healthCheckNodePort 32100 body .service.name \"lb\"",
    ] {
        assert!(has(&capture, Section::Health, line), "{line}\n{text}");
    }

    // metrics: names, and names with their labels.
    assert!(has(&capture, Section::Metrics, SYNC_METRIC), "{text}");
    assert!(
        capture
            .lines(Section::MetricLabels)
            .iter()
            .any(|l| l.starts_with("kubeproxy_sync_proxy_rules_duration_seconds_bucket{")),
        "{text}"
    );
    terminate(child);
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn two_nodes_programmed_alike_capture_identically() {
    let dir = scratch("twins");
    let (first, first_child) = programmed_node(&dir);
    let a = settled_capture(&NodeNs::new(first.name()));
    terminate(first_child);
    drop(first);
    let (second, second_child) = programmed_node(&dir);
    let b = settled_capture(&NodeNs::new(second.name()));
    terminate(second_child);
    let diffs = differences(&a, &b);
    assert!(diffs.is_empty(), "{diffs:#?}");
    assert_eq!(Comparison::new(&a, &b, &[]).outcome(), Outcome::Identical);
}
