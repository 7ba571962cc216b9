//! Kernel tests of `kipvs plan`: its `--diff` lines are commands that, run by hand,
//! bring the kernel to the planned table, and never touch foreign services.
//!
//! Run by `tests/run` as root in a fresh network namespace of a kernel with IPVS.

// Test code: a panic is a test failure, with the message of what was unwrapped.
#![allow(clippy::unwrap_used)]

use kipvs_testkit::Netns;

const KIPVS: &str = env!("CARGO_BIN_EXE_kipvs");
const STATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/cluster.yaml");
const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/kube-proxy.yaml");

/// A service someone made by hand: kipvs must leave it alone.
const FOREIGN: &str = "ipvsadm -A -t 1.2.3.4:80 -s rr
ipvsadm -a -t 1.2.3.4:80 -r 10.9.9.9:80 -m -w 1";

/// The virtual services of a `dump --services` listing that a Service owns (not `# -`),
/// each with its destinations, as a set: the order of the listing follows the kernel's,
/// which differs between tables holding different foreign services.
fn owned_blocks(listing: &str) -> std::collections::BTreeSet<String> {
    let mut blocks: Vec<String> = Vec::new();
    for line in listing.lines().skip(3) {
        if line.starts_with("  ->") {
            if let Some(block) = blocks.last_mut() {
                block.push_str(line);
                block.push('\n');
            }
        } else {
            blocks.push(format!("{line}\n"));
        }
    }
    blocks
        .into_iter()
        .filter(|b| !b.lines().next().unwrap_or_default().ends_with("  # -"))
        .collect()
}

/// A node namespace: eth0 carries the example node's address, kube-ipvs0 exists.
fn node() -> Netns {
    let ns = Netns::new();
    ns.sh("ip link add eth0 type dummy
           ip addr add 192.168.1.10/24 dev eth0
           ip link set eth0 up
           ip link add kube-ipvs0 type dummy");
    ns
}

/// A scratch directory for files the test writes.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kipvs-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `kipvs run --once` for node-a of the example cluster, recording owners in `owners`.
fn run_once(ns: &Netns, owners: &str) {
    ns.run_ok(
        KIPVS,
        &[
            "run",
            "--once",
            "--state",
            STATE,
            "--config",
            CONFIG,
            "--hostname-override",
            "node-a",
            "--owners-file",
            owners,
        ],
    );
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn plan_diff_commands_build_the_planned_table_and_spare_foreign_services() {
    let ns = node();
    ns.sh(FOREIGN);
    let args = ["plan", "--state", STATE, "--config", CONFIG];
    let planned = ns.run_ok(KIPVS, &args);
    let diff = ns.run_ok(KIPVS, &[&args[..], &["--diff"]].concat());
    assert!(diff.contains("ipvsadm -A "), "{diff}");
    assert!(
        !diff.contains("1.2.3.4"),
        "a foreign service in the diff:\n{diff}"
    );
    let commands: String = diff
        .lines()
        .filter(|l| l.starts_with("ipvsadm ") || l.starts_with("ip addr "))
        .map(|l| format!("{l}\n"))
        .collect();
    ns.sh(&commands);
    let again = ns.run_ok(KIPVS, &[&args[..], &["--diff"]].concat());
    assert!(
        !again.lines().any(|l| l.starts_with("ipvsadm ")),
        "IPVS did not converge:\n{again}"
    );
    let dumped = ns.run_ok(
        KIPVS,
        &["dump", "--services", "--state", STATE, "--config", CONFIG],
    );
    assert!(dumped.contains("TCP  1.2.3.4:80 rr  # -\n"), "{dumped}");
    // --diff plans NodePorts on this machine's addresses, but never on loopback ones
    // (kube-proxy leaves them out too).
    assert!(!dumped.contains("127.0.0.1:30080"), "{dumped}");
    assert_eq!(owned_blocks(&dumped), owned_blocks(&planned));
    assert_eq!(owned_blocks(&planned).len(), 5, "{planned}");
    let saved = ns.run_ok("ipvsadm", &["-Sn"]);
    assert!(
        saved.contains("-a -t 1.2.3.4:80 -r 10.9.9.9:80 -m -w 1"),
        "{saved}"
    );
    let owned = ns.run_ok(
        KIPVS,
        &["dump", "--state", STATE, "--service", "default/kubernetes"],
    );
    assert!(owned.contains("TCP  10.96.0.1:443 rr\n"), "{owned}");
    assert!(!owned.contains("1.2.3.4"), "{owned}");
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn plan_needs_no_privileges() {
    let ns = Netns::new();
    let as_root = ns.run_ok(KIPVS, &["plan", "--state", STATE, "--config", CONFIG]);
    let out = ns.run(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            KIPVS,
            "plan",
            "--state",
            STATE,
            "--config",
            CONFIG,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), as_root);
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn plan_diff_after_run_is_empty_and_shows_address_and_ipset_drift_one_line_each() {
    let ns = node();
    let dir = scratch("diff-drift");
    run_once(&ns, &dir.join("owners.json").display().to_string());
    let diff = [
        "plan",
        "--diff",
        "--state",
        STATE,
        "--config",
        CONFIG,
        "--hostname-override",
        "node-a",
    ];
    assert_eq!(
        ns.run_ok(KIPVS, &diff),
        "",
        "kipvs run left something to do"
    );

    ns.sh("ip addr del 10.96.0.1/32 dev kube-ipvs0
           ip addr add 10.96.99.99/32 dev kube-ipvs0
           ipset del KUBE-CLUSTER-IP 10.96.0.10,udp:53
           ipset add KUBE-CLUSTER-IP 10.96.99.99,tcp:80");
    let drift = ns.run_ok(KIPVS, &diff);
    assert_eq!(
        drift,
        "\
ipset add KUBE-CLUSTER-IP 10.96.0.10,udp:53
ip addr add 10.96.0.1/32 dev kube-ipvs0
ip addr del 10.96.99.99/32 dev kube-ipvs0
ipset del KUBE-CLUSTER-IP 10.96.99.99,tcp:80
"
    );
    ns.sh(&drift);
    assert_eq!(
        ns.run_ok(KIPVS, &diff),
        "",
        "the lines did not repair the drift"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The listing without the `  # owner` notes.
fn without_notes(listing: &str) -> String {
    listing
        .lines()
        .map(|l| format!("{}\n", l.split_once("  # ").map_or(l, |(head, _)| head)))
        .collect()
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn dump_services_names_owners_from_the_file_kipvs_run_writes() {
    let ns = node();
    ns.sh(FOREIGN);
    let dir = scratch("dump-owners");
    let owners = dir.join("owners.json").display().to_string();
    run_once(&ns, &owners);

    let listing = ns.run_ok(KIPVS, &["dump", "--services", "--owners-file", &owners]);
    for line in [
        "TCP  10.96.0.1:443 rr  # default/kubernetes:https\n",
        "UDP  10.96.0.10:53 rr persistent 10800  # kube-system/kube-dns:dns\n",
        "TCP  192.168.1.10:30080 mh (mh-fallback,mh-port)  # shop/web:http\n",
        "TCP  1.2.3.4:80 rr  # -\n",
    ] {
        assert!(listing.contains(line), "no {line:?} in\n{listing}");
    }
    assert_eq!(without_notes(&listing), ns.run_ok("ipvsadm", &["-Ln"]));

    // The environment variable moves the file as the flag does.
    let by_env = ns.run_ok(
        "env",
        &[
            &format!("KIPVS_OWNERS_FILE={owners}"),
            KIPVS,
            "dump",
            "--services",
        ],
    );
    assert_eq!(by_env, listing);

    // --service filters by the recorded owner.
    let web = ns.run_ok(
        KIPVS,
        &["dump", "--owners-file", &owners, "--service", "shop/web"],
    );
    // Its ClusterIP and its NodePort on the node's address (none on loopback).
    assert_eq!(web.matches("TCP  ").count(), 2, "{web}");
    assert!(
        !web.contains("10.96.0.1:443") && !web.contains("1.2.3.4"),
        "{web}"
    );

    // No file: one line saying who writes it, and failure.
    let missing = ns.run(
        KIPVS,
        &[
            "dump",
            "--services",
            "--owners-file",
            "/nonexistent/owners.json",
        ],
    );
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("kipvs run"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
