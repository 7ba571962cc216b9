//! The host benchmark (run by `tests/bench-suites/host`, as root, on a kernel with
//! `dummy` and `ip_set`): 100,000 ipset entries converged in one sync, and 10,000 VIPs
//! added to then removed from kube-ipvs0, each against its peer measured in the same run
//! (`ipset restore` of the same entries, `ip -batch` of the same addresses), each side
//! in a fresh network namespace.
//!
//! Usage: `bench_host [ENTRIES [VIPS]]` (defaults 100000 and 10000; VIPS 0 skips the VIP
//! part, so the ipset part can run on a kernel without `dummy`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kipvs_host::ipset::{self, sizing, KubeSets};
use kipvs_host::link::VipLink;
use kipvs_ipvs::{Family, Protocol};
use kipvs_proxy::{Member, SetKind};
use kipvs_testkit::Netns;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `i`-th distinct address in 10.96.0.0/12 (skipping .0 and .255).
fn vip(i: usize) -> IpAddr {
    let i = u32::try_from(i).unwrap();
    let host = 1 + (i % 254);
    let net = i / 254;
    IpAddr::V4(Ipv4Addr::from(0x0a60_0000 | (net << 8) | host))
}

/// Runs `program args` in `ns` with `input` on stdin; returns how long it took.
fn timed_stdin(ns: &Netns, program: &str, args: &[&str], input: &str) -> Duration {
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), program])
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let status = child.wait().unwrap();
    let took = start.elapsed();
    assert!(status.success(), "{program} {args:?} failed");
    took
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let entries: usize = args.next().map_or(100_000, |a| a.parse().unwrap());
    let vips: usize = args.next().map_or(10_000, |a| a.parse().unwrap());

    // ---- ipset: ENTRIES members of KUBE-CLUSTER-IP, one sync ----
    let mut sets = KubeSets::new(Family::V4);
    for i in 0..entries {
        let port = u16::try_from(1 + i % 4).unwrap() * 80;
        let member = Member::IpPort {
            ip: vip(i / 4),
            protocol: Protocol::Tcp,
            port,
        };
        sets.insert(SetKind::ClusterIp, member).unwrap();
    }

    let ours = Netns::new();
    let (kipvs_sets, kipvs_noop) = {
        let _in = ours.enter();
        let start = Instant::now();
        let report = ipset::sync_sets(&sets).unwrap();
        let first = start.elapsed();
        assert_eq!(report.added, entries);
        let start = Instant::now();
        assert!(!ipset::sync_sets(&sets).unwrap().changed);
        (first, start.elapsed())
    };
    let listed = ours.run_ok("ipset", &["list", "-t", "KUBE-CLUSTER-IP"]);
    assert!(
        listed.contains(&format!("Number of entries: {entries}")),
        "{listed}"
    );

    let peer = Netns::new();
    let (hashsize, maxelem) = sizing(entries);
    let mut restore = format!(
        "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize {hashsize} maxelem {maxelem}\n"
    );
    for e in sets.members(SetKind::ClusterIp) {
        restore.push_str(&format!("add KUBE-CLUSTER-IP {e}\n"));
    }
    let peer_sets = timed_stdin(&peer, "ipset", &["restore"], &restore);
    drop((ours, peer));

    let sets_ratio = ms(peer_sets) / ms(kipvs_sets);
    println!(
        "ipset: {entries} entries, one sync from empty: kipvs {:.1} ms (nfnetlink dump + diff + ADT batches), \
         ipset restore alone {:.1} ms; a no-change kipvs sync {:.1} ms",
        ms(kipvs_sets),
        ms(peer_sets),
        ms(kipvs_noop)
    );
    if vips == 0 {
        println!(
            "SUITE: host {:.0} ms ipset-sync-{entries} | {sets_ratio:.2}x vs ipset restore",
            ms(kipvs_sets)
        );
        return;
    }

    // ---- VIPs: VIPS addresses added to, then removed from, kube-ipvs0 ----
    let addresses: BTreeSet<IpAddr> = (0..vips).map(vip).collect();
    let ours = Netns::new();
    let (kipvs_add, kipvs_del) = {
        let _in = ours.enter();
        runtime().block_on(async {
            let link = VipLink::ensure("kube-ipvs0").await.unwrap();
            let start = Instant::now();
            let r = link.converge(&addresses).await.unwrap();
            let add = start.elapsed();
            assert_eq!(r.added, vips);
            let start = Instant::now();
            let r = link.converge(&BTreeSet::new()).await.unwrap();
            assert_eq!(r.removed, vips);
            (add, start.elapsed())
        })
    };
    let peer = Netns::new();
    peer.ip(&["link", "add", "kube-ipvs0", "type", "dummy"]);
    let batch = |verb: &str| -> String {
        addresses
            .iter()
            .map(|a| format!("addr {verb} {a}/32 dev kube-ipvs0\n"))
            .collect()
    };
    let peer_add = timed_stdin(&peer, "ip", &["-batch", "-"], &batch("add"));
    let count = peer
        .ip(&["-o", "-4", "addr", "show", "dev", "kube-ipvs0"])
        .lines()
        .count();
    assert_eq!(count, vips);
    let peer_del = timed_stdin(&peer, "ip", &["-batch", "-"], &batch("del"));
    drop((ours, peer));

    let vips_ours = ms(kipvs_add + kipvs_del);
    let vips_peer = ms(peer_add + peer_del);
    let vips_ratio = vips_peer / vips_ours;
    println!(
        "vips: {vips} on kube-ipvs0: kipvs add {:.1} ms + remove {:.1} ms (rtnetlink, pipelined); \
         ip -batch add {:.1} ms + remove {:.1} ms",
        ms(kipvs_add),
        ms(kipvs_del),
        ms(peer_add),
        ms(peer_del)
    );
    println!(
        "SUITE: host {:.0} ms ipset-sync-{entries} {vips_ours:.0} ms vips-add-remove-{vips} | \
         {sets_ratio:.2}x vs ipset restore, {vips_ratio:.2}x vs ip -batch",
        ms(kipvs_sets)
    );
}
