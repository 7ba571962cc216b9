//! End-to-end scheduling through `kipvs run`: per-Service schedulers as clients feel
//! them (rr spreads, sh sticks, lc avoids busy pods), a live scheduler change that keeps
//! open connections, ClientIP session affinity, and externalTrafficPolicy Local.

// Helpers and tests are test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod e2e;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use e2e::{addr, spread, tcp, udp, Cluster, Conn, Service, CLIENT_IP, NODE, OTHER_NODE};
use kipvs_testkit::wait_for;

const SCHEDULER: &str = "ipvs.kipvs.io/scheduler";

#[test]
#[ignore = "kernel: run by tests/run"]
fn rr_spreads_a_thousand_connections_evenly_over_three_pods() {
    let mut c = Cluster::new("rr", "");
    let web = c.add_pods("web", 3);
    let caller = c.add_pod("caller", NODE);
    let pods: Vec<_> = web.iter().map(|&i| c.pod(i)).collect();
    c.apply(&[Service::cluster_ip("web", "10.96.0.40", 80, &pods)]);
    c.start();

    let by_pod = spread(&c.pod(caller).ns, addr("10.96.0.40", 80), 1000);
    eprintln!("rr: 1000 connections spread as {by_pod:?}");
    assert_eq!(by_pod.len(), 3, "{by_pod:?}");
    for (pod, n) in &by_pod {
        assert!(
            (300..=367).contains(n),
            "{pod} got {n} of 1000 connections, outside 333 +-10%: {by_pod:?}"
        );
    }
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn sh_sticks_lc_avoids_busy_pods_and_a_scheduler_change_keeps_open_connections() {
    let mut c = Cluster::new("sched", "");
    let web = c.add_pods("web", 3);
    let caller = c.add_pod("caller", NODE);
    let pods: Vec<_> = web.iter().map(|&i| c.pod(i)).collect();
    let mut sh = Service::cluster_ip("sh", "10.96.0.41", 80, &pods);
    sh.annotations = vec![(SCHEDULER, "sh")];
    let mut lc = Service::cluster_ip("lc", "10.96.0.42", 80, &pods);
    lc.annotations = vec![(SCHEDULER, "lc")];
    let live = Service::cluster_ip("live", "10.96.0.43", 80, &pods);
    c.apply(&[sh.clone(), lc.clone(), live.clone()]);
    c.start();
    let from = &c.pod(caller).ns;

    // sh: one client, many connections (each from a new port), one pod.
    let by_pod = spread(from, addr("10.96.0.41", 80), 30);
    assert_eq!(
        by_pod.len(),
        1,
        "sh moved the client between pods: {by_pod:?}"
    );

    // lc: with connections held open to two pods, the next one goes to the third.
    let lc_vip = addr("10.96.0.42", 80);
    let mut held = Vec::new();
    let mut busy = BTreeSet::new();
    for _ in 0..2 {
        let mut conn = Conn::open(from, None, lc_vip).unwrap();
        busy.insert(conn.ask().unwrap().pod);
        held.push(conn);
    }
    assert_eq!(busy.len(), 2, "lc sent two open connections to one pod");
    let next = tcp(from, lc_vip).unwrap().pod;
    assert!(
        !busy.contains(&next),
        "lc chose busy {next}, held: {busy:?}"
    );

    // The annotation changes on a live Service: the kernel's scheduler follows, and a
    // connection opened before keeps talking to the same pod.
    let live_vip = addr("10.96.0.43", 80);
    let mut open = Conn::open(from, None, live_vip).unwrap();
    let first = open.ask().unwrap().pod;
    let mut switched = live.clone();
    switched.annotations = vec![(SCHEDULER, "wlc")];
    c.apply(&[sh, lc, switched]);
    wait_for("the wlc scheduler", Duration::from_secs(60), || {
        c.ipvsadm().contains("TCP  10.96.0.43:80 wlc")
    });
    assert_eq!(open.ask().unwrap().pod, first, "the open connection moved");
    assert!(held.iter_mut().all(|h| h.ask().is_ok()));
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn client_ip_affinity_sticks_and_local_policy_reaches_only_local_pods_with_the_real_source() {
    let mut c = Cluster::new("affinity", "");
    let web = c.add_pods("web", 3);
    let remote = c.add_pod("remote", OTHER_NODE);
    let caller = c.add_pod("caller", NODE);
    let pods: Vec<_> = web.iter().map(|&i| c.pod(i)).collect();
    let mut sticky = Service::cluster_ip("sticky", "10.96.0.44", 80, &pods);
    sticky.affinity_seconds = Some(600);
    let mut local = Service::cluster_ip("local", "10.96.0.45", 80, &[c.pod(web[0]), c.pod(remote)])
        .node_port(30100, 30101);
    local.external_local = true;
    c.apply(&[sticky, local]);
    c.start();

    // ClientIP affinity: every connection and datagram of one client lands on one pod.
    let vip = addr("10.96.0.44", 80);
    let from = &c.pod(caller).ns;
    let mut seen = BTreeSet::new();
    for _ in 0..15 {
        seen.insert(tcp(from, vip).unwrap().pod);
        seen.insert(udp(from, vip).unwrap().pod);
    }
    assert_eq!(seen.len(), 1, "affinity broken: {seen:?}");

    // externalTrafficPolicy Local: from outside, only the pod on this node answers, and
    // it sees the client's own address (no masquerade).
    let tcp_np = addr("192.168.1.10", 30100);
    let udp_np = addr("192.168.1.10", 30101);
    for _ in 0..10 {
        for reply in [
            tcp(&c.client, tcp_np).unwrap(),
            udp(&c.client, udp_np).unwrap(),
        ] {
            assert_eq!(reply.pod, "web-0", "a non-local endpoint answered");
            assert_eq!(
                reply.source,
                IpAddr::V4(CLIENT_IP),
                "the source was rewritten"
            );
        }
    }
    // Under Cluster policy (the ClusterIP, from a pod) the remote endpoint serves too.
    let both: BTreeSet<_> = (0..6)
        .map(|_| tcp(from, addr("10.96.0.45", 80)).unwrap().pod)
        .collect();
    assert!(both.contains("remote"), "{both:?}");
}
