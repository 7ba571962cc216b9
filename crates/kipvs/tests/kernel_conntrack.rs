//! The `conntrack` section of the configuration reaches the kernel as kube-proxy's
//! `setupConntrack` puts it there, read back from `/proc/sys` and `/sys`: the timeouts
//! and be_liberal in the proxy's own network namespace; `nf_conntrack_max` and the hash
//! table, which only the initial namespace may change, from there, and a proxy in another
//! namespace stops with what to do when the limit it needs differs, as kube-proxy stops.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use kipvs_host::conntrack::{ConntrackPlan, Sysfs, HASHSIZE};
use kipvs_host::sysctl::Sysctls;
use kipvs_testkit::Netns;

const KIPVS: &str = env!("CARGO_BIN_EXE_kipvs");
const MAX_FILE: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

fn config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kipvs-conntrack-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn number(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn in_ns(ns: &Netns, sysctl: &str) -> String {
    ns.sh(&format!("cat /proc/sys/net/netfilter/{sysctl}"))
        .trim()
        .to_owned()
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn prepare_sets_the_conntrack_timeouts_and_be_liberal_in_its_namespace() {
    kipvs_testkit::modprobe("nf_conntrack");
    let ns = Netns::new();
    let file = config(
        "timeouts",
        "conntrack:\n  maxPerCore: 0\n  tcpEstablishedTimeout: 2h\n  tcpCloseWaitTimeout: 30m\n  \
         tcpBeLiberal: true\n  udpTimeout: 45s\n  udpStreamTimeout: 3m\n",
    );
    let before_max = number(MAX_FILE);
    let out = ns.run(KIPVS, &["prepare", "--config", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (sysctl, value) in [
        ("nf_conntrack_tcp_timeout_established", "7200"),
        ("nf_conntrack_tcp_timeout_close_wait", "1800"),
        ("nf_conntrack_tcp_be_liberal", "1"),
        ("nf_conntrack_udp_timeout", "45"),
        ("nf_conntrack_udp_timeout_stream", "180"),
    ] {
        assert_eq!(in_ns(&ns, sysctl), value, "{sysctl}");
    }
    assert_eq!(
        number(MAX_FILE),
        before_max,
        "maxPerCore: 0 leaves the limit"
    );
    // The log says what was changed.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("nf_conntrack_tcp_timeout_established") && log.contains("7200"),
        "{log}"
    );

    // kube-proxy's defaults, with no file: 24h and 1h; the rest left as it is.
    let fresh = Netns::new();
    let udp_before = in_ns(&fresh, "nf_conntrack_udp_timeout");
    let out = fresh.run(KIPVS, &["prepare"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        in_ns(&fresh, "nf_conntrack_tcp_timeout_established"),
        "86400"
    );
    assert_eq!(in_ns(&fresh, "nf_conntrack_tcp_timeout_close_wait"), "3600");
    assert_eq!(in_ns(&fresh, "nf_conntrack_udp_timeout"), udp_before);
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn outside_the_initial_namespace_a_different_limit_stops_prepare_as_it_stops_kube_proxy() {
    kipvs_testkit::modprobe("nf_conntrack");
    let ns = Netns::new();
    let current = number(MAX_FILE);
    // maxPerCore 1 x a few CPUs is below min, so the limit wanted is min.
    let different = config(
        "different",
        &format!("conntrack: {{maxPerCore: 1, min: {}}}\n", current + 1024),
    );
    let out = ns.run(KIPVS, &["prepare", "--config", different.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("kipvs prepare: ")
            && line.contains(&format!(
                "cannot set net.netfilter.nf_conntrack_max to {}",
                current + 1024
            ))
            && line.contains("host's network namespace")
            && line.contains("conntrack.maxPerCore: 0"),
        "{stderr}"
    );
    assert_eq!(number(MAX_FILE), current);

    // The same limit as the host's: nothing to write, prepare goes on.
    let same = config(
        "same",
        &format!("conntrack: {{maxPerCore: 1, min: {current}}}\n"),
    );
    let out = ns.run(KIPVS, &["prepare", "--config", same.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Puts the initial namespace's limit and hash table back as they were.
struct Restore {
    max: u64,
    hashsize: u64,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(HASHSIZE, self.hashsize.to_string());
        let _ = std::fs::write(MAX_FILE, self.max.to_string());
    }
}

/// This test runs in the initial network namespace (the only one where the limit and
/// the hash table can change) and puts both back when it ends.
#[test]
#[ignore = "kernel: run by tests/run"]
fn in_the_initial_namespace_the_limit_is_set_and_the_hash_table_grows_only_when_needed() {
    kipvs_testkit::modprobe("nf_conntrack");
    let restore = Restore {
        max: number(MAX_FILE),
        hashsize: number(HASHSIZE),
    };
    let sysctls = Sysctls::default();
    let sysfs = Sysfs::default();
    let hashsize = restore.hashsize;

    // A limit the table already serves (hashsize >= max / 4): only the limit moves.
    let small = ConntrackPlan {
        max: Some(hashsize * 4),
        sysctls: Vec::new(),
    };
    let applied = sysctls.apply_conntrack(&small, &sysfs).unwrap();
    assert_eq!(number(MAX_FILE), hashsize * 4);
    assert_eq!(number(HASHSIZE), hashsize);
    assert_eq!(applied.hashsize, None);

    // A limit past it: the table grows to a quarter of the limit.
    let big = ConntrackPlan {
        max: Some(hashsize * 8),
        sysctls: Vec::new(),
    };
    let applied = sysctls.apply_conntrack(&big, &sysfs).unwrap();
    assert_eq!(number(MAX_FILE), hashsize * 8);
    assert_eq!(number(HASHSIZE), hashsize * 2);
    assert_eq!(applied.hashsize, Some((hashsize, hashsize * 2)));
    drop(restore);
}
