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

fn without_foreign(listing: &str) -> String {
    listing
        .lines()
        .filter(|l| !l.contains("1.2.3.4:80") && !l.contains("10.9.9.9:80"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn plan_diff_commands_build_the_planned_table_and_spare_foreign_services() {
    let ns = Netns::new();
    ns.route_everything();
    ns.ip(&["link", "add", "kube-ipvs0", "type", "dummy"]);
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
    assert_eq!(without_foreign(&dumped), planned);
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
