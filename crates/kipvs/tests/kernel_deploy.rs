//! The DaemonSet's split of privileges works on a real kernel: with `/proc/sys` read-only
//! (as in a non-privileged container), `kipvs run` cannot start on a fresh node; after
//! `kipvs prepare` (the privileged init container) has run, the same `kipvs run`
//! programs the cluster without writing a single sysctl.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use kipvs_testkit::{wait_for, Netns};

const KIPVS: &str = env!("CARGO_BIN_EXE_kipvs");

fn repo_file(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// The example ConfigMap's config.conf, written where the test can pass it to kipvs,
/// with the servers on loopback so tests cannot collide on the node's ports.
fn example_config() -> PathBuf {
    let text = std::fs::read_to_string(repo_file("examples/kubernetes/configmap.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let conf = doc["data"]["config.conf"].as_str().unwrap();
    let conf = conf
        .replace("0.0.0.0:10249", "127.0.0.1:10249")
        .replace("0.0.0.0:10256", "127.0.0.1:10256");
    let dir = std::env::temp_dir().join(format!("kipvs-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// Runs `kipvs args` in `ns` in its own mount namespace where `/proc/sys` is read-only,
/// as a container that is not privileged sees it.
fn kipvs_with_read_only_proc_sys(ns: &Netns, args: &str) -> Output {
    let script = format!(
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && \
         if echo 0 > /proc/sys/net/ipv4/ip_forward 2>/dev/null; then echo 'still writable'; exit 99; fi; \
         exec {KIPVS} {args}"
    );
    ns.run(
        "unshare",
        &["--mount", "--propagation", "private", "sh", "-c", &script],
    )
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn run_needs_no_writable_proc_sys_once_prepare_has_run() {
    let ns = Netns::new();
    ns.sh("ip link add eth0 type dummy
           ip addr add 192.168.1.10/24 dev eth0
           ip link set eth0 up");
    let config = example_config();
    let config = config.to_str().unwrap();
    let state = repo_file("examples/cluster.yaml");
    let run = format!("run --once --state {state} --config {config} --hostname-override node-a");

    // A fresh namespace has none of the sysctls: run must say it cannot set them.
    let fresh = ns.run("sysctl", &["-n", "net.ipv4.vs.conntrack"]);
    assert_ne!(String::from_utf8_lossy(&fresh.stdout).trim(), "1");
    let refused = kipvs_with_read_only_proc_sys(&ns, &run);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("cannot prepare the node"),
        "{}",
        text(&refused)
    );
    assert!(ns.run_ok("ipvsadm", &["-Sn"]).trim().is_empty());

    // The init container's job.
    let prepared = ns.run(KIPVS, &["prepare", "--config", config]);
    assert!(prepared.status.success(), "{}", text(&prepared));
    for (name, value) in [
        ("net.ipv4.vs.conntrack", "1"),
        ("net.ipv4.ip_forward", "1"),
        // strictARP: true in the example ConfigMap.
        ("net.ipv4.conf.all.arp_ignore", "1"),
        ("net.ipv4.conf.all.arp_announce", "2"),
    ] {
        assert_eq!(ns.run_ok("sysctl", &["-n", name]).trim(), value, "{name}");
    }

    // The long-running container's job, with /proc/sys read-only.
    let ran = kipvs_with_read_only_proc_sys(&ns, &run);
    assert!(ran.status.success(), "{}", text(&ran));
    let table = ns.run_ok("ipvsadm", &["-Sn"]);
    assert!(table.contains("-A -t 10.96.0.1:443 -s rr"), "{table}");
    assert!(
        ns.ip(&["-o", "addr", "show", "dev", "kube-ipvs0"])
            .contains("10.96.0.1/32"),
        "kube-ipvs0 carries the ClusterIP"
    );

    // prepare is idempotent: a pod restart runs it again.
    let again = ns.run(KIPVS, &["prepare", "--config", config]);
    assert!(again.status.success(), "{}", text(&again));
}

/// `ipvsadm -Ln --stats --exact` Conns of the virtual service `service` (`10.96.0.1:443`).
fn connections_counted(ns: &Netns, service: &str) -> u64 {
    let stats = ns.run_ok("ipvsadm", &["-Ln", "--stats", "--exact", "-t", service]);
    stats
        .lines()
        .find(|line| line.starts_with("TCP"))
        .and_then(|line| line.split_whitespace().nth(2))
        .and_then(|conns| conns.parse().ok())
        .unwrap_or_else(|| panic!("no stats for {service}:\n{stats}"))
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn takes_over_a_node_programmed_by_kube_proxy_without_recreating_what_is_right() {
    let ns = Netns::new();
    ns.sh("ip link add eth0 type dummy
           ip addr add 192.168.1.10/24 dev eth0
           ip link set eth0 up");
    // What kube-proxy's ipvs mode leaves on a node of the example cluster, as it creates
    // it: kube-ipvs0 with the VIPs, the virtual services, its sets; plus what it gets
    // wrong (a real server left at weight 0) and what went stale while no proxy ran (a
    // Service deleted since: its VIP, virtual service and set member).
    ns.sh("ip link add kube-ipvs0 type dummy
           ip addr add 10.96.0.1/32 dev kube-ipvs0
           ip addr add 10.96.0.10/32 dev kube-ipvs0
           ip addr add 10.96.99.99/32 dev kube-ipvs0
           ipvsadm -A -t 10.96.0.1:443 -s rr
           ipvsadm -a -t 10.96.0.1:443 -r 192.168.1.10:6443 -m -w 1
           ipvsadm -A -t 10.96.0.10:53 -s rr -p 10800
           ipvsadm -a -t 10.96.0.10:53 -r 10.244.1.2:53 -m -w 0
           ipvsadm -A -t 10.96.99.99:80 -s rr
           ipvsadm -a -t 10.96.99.99:80 -r 10.244.9.9:80 -m -w 1
           ipset create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536
           ipset add KUBE-CLUSTER-IP 10.96.0.1,tcp:443
           ipset add KUBE-CLUSTER-IP 10.96.0.10,tcp:53
           ipset add KUBE-CLUSTER-IP 10.96.99.99,tcp:80
           sysctl -qw net.ipv4.vs.conntrack=1");
    // Someone else's IPVS service (keepalived's, say), on an address kipvs does not own.
    ns.sh("ip addr add 172.16.0.1/32 dev eth0
           ipvsadm -A -t 172.16.0.1:80 -s wlc
           ipvsadm -a -t 172.16.0.1:80 -r 192.168.1.20:80 -m -w 3");
    // One connection through the kubernetes Service, so its virtual service has history
    // that a delete and re-create would wipe. Whether the connect succeeds does not
    // matter: IPVS counts the connection when it schedules it.
    ns.run(
        "socat",
        &[
            "-u",
            "OPEN:/dev/null",
            "TCP:10.96.0.1:443,connect-timeout=2",
        ],
    );
    // The kernel folds its per-CPU counters into what it reports every 2 s.
    wait_for(
        "the test connection in the service's counters",
        Duration::from_secs(20),
        || connections_counted(&ns, "10.96.0.1:443") >= 1,
    );
    let before = connections_counted(&ns, "10.96.0.1:443");

    let config = example_config();
    let state = repo_file("examples/cluster.yaml");
    let out = ns.run(
        KIPVS,
        &[
            "run",
            "--once",
            "--state",
            &state,
            "--config",
            config.to_str().unwrap(),
            "--hostname-override",
            "node-a",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));

    let table = ns.run_ok("ipvsadm", &["-Sn"]);
    // Adopted, not re-created: the counters are still there.
    assert!(
        connections_counted(&ns, "10.96.0.1:443") >= before,
        "{table}"
    );
    // kube-proxy's weight-0 leftover gets its weight back.
    assert!(
        table.contains("-a -t 10.96.0.10:53 -r 10.244.1.2:53 -m -w 1"),
        "{table}"
    );
    // The stale Service is gone everywhere.
    assert!(!table.contains("10.96.99.99"), "{table}");
    let addresses = ns.ip(&["-o", "addr", "show", "dev", "kube-ipvs0"]);
    assert!(!addresses.contains("10.96.99.99"), "{addresses}");
    let members = ns.run_ok("ipset", &["list", "KUBE-CLUSTER-IP"]);
    assert!(!members.contains("10.96.99.99"), "{members}");
    assert!(members.contains("10.96.0.1,tcp:443"), "{members}");
    // The rest of the example cluster is there, and the foreign service is untouched.
    assert!(
        table.contains("-A -u 10.96.0.10:53 -s rr -p 10800"),
        "{table}"
    );
    assert!(table.contains("-A -t 10.96.10.20:80 -s mh"), "{table}");
    assert!(table.contains("-A -t 172.16.0.1:80 -s wlc"), "{table}");
    assert!(
        table.contains("-a -t 172.16.0.1:80 -r 192.168.1.20:80 -m -w 3"),
        "{table}"
    );
}
