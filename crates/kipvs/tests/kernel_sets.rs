//! The daemon's ipset executor at scale, against the real kernel: `kipvs run`'s kernel
//! (`NodeKernel`, the code every sync goes through) grows KUBE-LOOP-BACK and
//! KUBE-CLUSTER-IP past kube-proxy's 65,536-member ceiling to 150,000 members each by
//! swapping in larger sets, then shrinks them back, while the iptables rules keep
//! referencing them and a member present throughout never stops matching. `ipset` and
//! `iptables-save` are the oracles.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};

use kipvs::config::Config;
use kipvs::sync::kernel::{Kernel, OpKind, Report};
use kipvs::sync::node::NodeKernel;
use kipvs_ipvs::{Family, Protocol};
use kipvs_proxy::{FamilyRules, IptablesInputs, Member, Plan, SetKind, SetName};
use kipvs_testkit::Netns;

const MEMBERS: usize = 150_000;
/// Members kept when the sets shrink back.
const KEPT: usize = 10;

fn v4(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::try_from(i).unwrap()))
}

/// The `i`-th member of each set: a hairpin entry of a local endpoint in 10.244.0.0/14,
/// and a ClusterIP port in 10.96.0.0/12 (ten ports per address).
fn members(i: usize) -> [(SetName, Member); 2] {
    let endpoint = v4(0x0af4_0000 + i);
    let vip = v4(0x0a60_0000 + i / 10);
    let port = 80 + u16::try_from(i % 10).unwrap();
    [
        (
            SetName::new(SetKind::LoopBack, Family::V4),
            Member::IpPortIp {
                ip: endpoint,
                protocol: Protocol::Tcp,
                port: 8080,
                ip2: endpoint,
            },
        ),
        (
            SetName::new(SetKind::ClusterIp, Family::V4),
            Member::IpPort {
                ip: vip,
                protocol: Protocol::Tcp,
                port,
            },
        ),
    ]
}

fn entries(range: std::ops::Range<usize>) -> Vec<(SetName, Member)> {
    range.flat_map(members).collect()
}

/// The iptables inputs of a node whose two sets are not empty: kube-proxy's rules then
/// match KUBE-LOOP-BACK (hairpin masquerade) and KUBE-CLUSTER-IP.
fn rules() -> IptablesInputs {
    IptablesInputs {
        masquerade_all: false,
        masquerade_mark: 1 << 14,
        cluster_cidrs: vec!["10.244.0.0/14".parse().unwrap()],
        families: vec![FamilyRules {
            family: Family::V4,
            nonempty_sets: vec![
                SetName::new(SetKind::ClusterIp, Family::V4),
                SetName::new(SetKind::LoopBack, Family::V4),
            ],
            no_node_access: Vec::new(),
            node_pod_cidr: None,
        }],
    }
}

fn ok(report: &Report, kind: OpKind) -> u64 {
    report.counts.get(&(kind, "ok")).copied().unwrap_or(0)
}

/// `ipset list -t SET`: its maxelem, number of entries and references.
fn header(ns: &Netns, set: &str) -> (u64, u64, u64) {
    let text = ns.run_ok("ipset", &["list", "-t", set]);
    let field = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|rest| {
                let digits: String = rest
                    .trim_start()
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse().unwrap()
            })
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    };
    let maxelem = text
        .split_whitespace()
        .skip_while(|w| *w != "maxelem")
        .nth(1)
        .unwrap_or_else(|| panic!("no maxelem in {text}"))
        .parse()
        .unwrap();
    (maxelem, field("Number of entries:"), field("References:"))
}

/// Probes, until stopped, that both sets still hold their first member (`ipset test`,
/// one process per probe, as a packet would find it); returns (probes, misses).
fn probe(ns: &Netns, stop: &AtomicBool) -> (usize, Vec<String>) {
    let [(loop_back, hairpin), (cluster_ip, port)] = members(0);
    let (loop_back, cluster_ip) = (loop_back.to_string(), cluster_ip.to_string());
    let (hairpin, port) = (hairpin.to_string(), port.to_string());
    let mut probes = 0;
    let mut misses = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        for (set, member) in [(&loop_back, &hairpin), (&cluster_ip, &port)] {
            let out = ns.run("ipset", &["test", set, member]);
            probes += 1;
            if !out.status.success() {
                misses.push(format!(
                    "{set} {member}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }
    (probes, misses)
}

/// Applies `plan` while [`probe`] runs; fails on any miss.
fn apply_probed(ns: &Netns, kernel: &mut NodeKernel, plan: &Plan) -> Report {
    let stop = AtomicBool::new(false);
    let (report, (probes, misses)) = std::thread::scope(|s| {
        let prober = s.spawn(|| probe(ns, &stop));
        let report = kernel.apply(plan);
        stop.store(true, Ordering::Relaxed);
        (report, prober.join().unwrap())
    });
    assert!(probes > 0, "no probe ran during the plan");
    assert!(
        misses.is_empty(),
        "a member present throughout stopped matching ({} of {probes} probes): {misses:?}",
        misses.len()
    );
    report
}

fn assert_rules_reference_the_sets(ns: &Netns) {
    let nat = ns.run_ok("iptables-save", &["-t", "nat"]);
    for set in ["KUBE-LOOP-BACK", "KUBE-CLUSTER-IP"] {
        assert!(
            nat.contains(&format!("--match-set {set} ")),
            "no rule matches {set}:\n{nat}"
        );
    }
    let names = ns.run_ok("ipset", &["list", "-n"]);
    assert!(
        !names.contains("KIPVS-TMP"),
        "a temporary set is left: {names}"
    );
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn sets_grow_past_65536_members_by_swap_and_shrink_back_under_their_rules() {
    let ns = Netns::new();
    let _in = ns.enter();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let mut kernel = runtime
        .block_on(NodeKernel::setup(
            &Config::default(),
            "kube-ipvs0",
            Family::V4,
        ))
        .unwrap();
    let set_count = ns.run_ok("ipset", &["list", "-n"]).lines().count();
    assert_eq!(
        set_count, 34,
        "every set of both families is created at start"
    );
    assert_eq!(header(&ns, "KUBE-LOOP-BACK").0, 65536);

    // A first sync: 1,000 members each, and the rules that match the sets.
    let first = Plan {
        set_adds: entries(0..1_000),
        iptables: Some(rules()),
        ..Plan::default()
    };
    let report = runtime.block_on(async { tokio::task::block_in_place(|| kernel.apply(&first)) });
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(ok(&report, OpKind::SetResize), 0);
    assert_rules_reference_the_sets(&ns);

    // 149,000 more each: past kube-proxy's 65,536, so both sets are rebuilt larger
    // and swapped in while the rules match them.
    let grow = Plan {
        set_adds: entries(1_000..MEMBERS),
        ..Plan::default()
    };
    let report = runtime
        .block_on(async { tokio::task::block_in_place(|| apply_probed(&ns, &mut kernel, &grow)) });
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(ok(&report, OpKind::SetResize), 2, "{report:?}");
    for set in ["KUBE-LOOP-BACK", "KUBE-CLUSTER-IP"] {
        let (maxelem, entries, references) = header(&ns, set);
        assert_eq!((maxelem, entries), (524_288, 150_000), "{set}");
        assert!(references > 0, "{set} is no longer referenced by any rule");
    }
    assert_rules_reference_the_sets(&ns);
    // The daemon reads back what it wrote.
    let observed = runtime
        .block_on(async { tokio::task::block_in_place(|| kernel.observe()) })
        .unwrap();
    for (set, _) in members(0) {
        assert_eq!(observed.ipsets[&set].len(), MEMBERS, "{set}");
    }

    // Back to 10 members each: the members go, then both sets are rebuilt at
    // kube-proxy's size and swapped in, still under their rules.
    let shrink = Plan {
        set_deletes: entries(KEPT..MEMBERS),
        iptables: Some(rules()),
        ..Plan::default()
    };
    let report = runtime.block_on(async {
        tokio::task::block_in_place(|| apply_probed(&ns, &mut kernel, &shrink))
    });
    assert!(report.is_success(), "{:?}", report.failures);
    assert_eq!(ok(&report, OpKind::SetResize), 2, "{report:?}");
    for set in ["KUBE-LOOP-BACK", "KUBE-CLUSTER-IP"] {
        let (maxelem, entries, references) = header(&ns, set);
        assert_eq!((maxelem, entries), (65_536, 10), "{set}");
        assert!(references > 0, "{set} is no longer referenced by any rule");
    }
    assert_rules_reference_the_sets(&ns);
    let listed = ns.run_ok("ipset", &["list", "KUBE-LOOP-BACK"]);
    let [(_, hairpin), _] = members(KEPT - 1);
    assert!(listed.contains(&hairpin.to_string()), "{listed}");
}
