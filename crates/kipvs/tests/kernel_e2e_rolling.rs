//! End-to-end rolling updates through `kipvs run`, as clients live them: a terminating
//! pod keeps its open connection and gets no new one, and its destination goes once
//! drained; a removed UDP endpoint black-holes nothing; a kipvs restart under steady
//! traffic fails no request.

// Helpers and tests are test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod e2e;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use e2e::{addr, tcp, Cluster, Conn, Endpoint, Service, UdpConn, NODE};
use kipvs_testkit::wait_for;

/// The `ipvsadm -Ln` line of destination `ip:port` of a virtual service, if listed.
fn dest_line(ipvsadm: &str, service: &str, dest: &str) -> Option<String> {
    let mut in_service = false;
    for line in ipvsadm.lines() {
        if !line.starts_with("  ") {
            in_service = line.contains(service);
        } else if in_service && line.contains(dest) {
            return Some(line.to_owned());
        }
    }
    None
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn a_terminating_pod_keeps_its_open_connection_gets_no_new_ones_and_goes_once_drained() {
    let c = {
        let mut c = Cluster::with_sync_period("terminating", "2s", "");
        c.add_pods("web", 2);
        c.add_pod("caller", NODE);
        c
    };
    let (web0, web1, caller) = (c.pod(0), c.pod(1), c.pod(2));
    let mut svc = Service::cluster_ip("web", "10.96.0.50", 80, &[web0, web1]);
    c.apply(&[svc.clone()]);
    c.start();
    let vip = addr("10.96.0.50", 80);

    let mut long = Conn::open(&caller.ns, None, vip).unwrap();
    let owner = long.ask().unwrap().pod;
    let (leaving, staying) = if owner == web0.name {
        (web0, web1)
    } else {
        (web1, web0)
    };

    // The pod it talks to starts terminating: ready false, still serving.
    svc.endpoints = vec![Endpoint::terminating(leaving), Endpoint::ready(staying)];
    c.apply(&[svc.clone()]);
    let tcp_vs = "TCP  10.96.0.50:80";
    let dest = format!("{}:8080", leaving.ip);
    wait_for("weight 0", Duration::from_secs(60), || {
        dest_line(&c.ipvsadm(), tcp_vs, &dest)
            .is_some_and(|l| l.split_whitespace().nth(3) == Some("0"))
    });
    // Several verifies later (syncPeriod 2 s), the destination is still there and the
    // connection still talks to its pod; new connections all go to the other one.
    for _ in 0..5 {
        assert_eq!(long.ask().unwrap().pod, leaving.name);
        assert_eq!(tcp(&caller.ns, vip).unwrap().pod, staying.name);
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        dest_line(&c.ipvsadm(), tcp_vs, &dest).is_some(),
        "the destination went while a connection was open"
    );

    // The connection closes: once IPVS forgets it, the destination is deleted.
    long.reset();
    wait_for(
        "the drained destination's removal",
        Duration::from_secs(90),
        || dest_line(&c.ipvsadm(), tcp_vs, &dest).is_none(),
    );
    assert_eq!(tcp(&caller.ns, vip).unwrap().pod, staying.name);
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn with_the_opt_in_drain_timeout_a_busy_destination_goes_after_that_long() {
    let c = {
        let mut c = Cluster::with_sync_period("drainbound", "2s", "");
        c.add_pods("web", 2);
        c.add_pod("caller", NODE);
        c
    };
    let (web0, web1, caller) = (c.pod(0), c.pod(1), c.pod(2));
    let mut svc = Service::cluster_ip("web", "10.96.0.51", 80, &[web0, web1]);
    c.apply(&[svc.clone()]);
    c.start_with(&["--drain-timeout", "10s"]);
    let vip = addr("10.96.0.51", 80);

    let mut long = Conn::open(&caller.ns, None, vip).unwrap();
    let owner = long.ask().unwrap().pod;
    let leaving = if owner == web0.name { web0 } else { web1 };
    let staying = if owner == web0.name { web1 } else { web0 };
    svc.endpoints = vec![Endpoint::ready(staying)];
    c.apply(&[svc]);
    let tcp_vs = "TCP  10.96.0.51:80";
    let dest = format!("{}:8080", leaving.ip);
    wait_for("weight 0", Duration::from_secs(60), || {
        dest_line(&c.ipvsadm(), tcp_vs, &dest)
            .is_some_and(|l| l.split_whitespace().nth(3) == Some("0"))
    });
    let quiesced = std::time::Instant::now();
    // The connection stays open and busy, yet the destination goes once the bound
    // (10 s) has passed, not before.
    while dest_line(&c.ipvsadm(), tcp_vs, &dest).is_some() {
        assert!(
            quiesced.elapsed() < Duration::from_secs(60),
            "the busy destination outlived the drain timeout"
        );
        let _ = long.ask();
        std::thread::sleep(Duration::from_millis(500));
    }
    let drained = quiesced.elapsed();
    eprintln!("busy destination deleted {drained:?} after weight 0");
    assert!(
        drained >= Duration::from_secs(5),
        "deleted after {drained:?}, before the 10 s bound"
    );
    assert_eq!(tcp(&caller.ns, vip).unwrap().pod, staying.name);
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn the_next_datagram_after_a_udp_endpoint_goes_reaches_a_live_pod() {
    let mut c = Cluster::new("udp-gone", "");
    c.add_pods("dns", 2);
    c.add_pod("caller", NODE);
    let (dns0, dns1, caller) = (c.pod(0), c.pod(1), c.pod(2));
    let mut svc = Service::cluster_ip("dns", "10.96.0.53", 53, &[dns0, dns1]);
    c.apply(&[svc.clone()]);
    c.start();

    // One resolver socket, one source port: conntrack and IPVS hold one entry for it.
    let resolver = UdpConn::open(&caller.ns, addr("10.96.0.53", 53)).unwrap();
    let first = resolver.ask().unwrap().pod;
    assert_eq!(resolver.ask().unwrap().pod, first);
    let (gone, live) = if first == dns0.name {
        (dns0, dns1)
    } else {
        (dns1, dns0)
    };

    svc.endpoints = vec![Endpoint::ready(live)];
    c.apply(&[svc]);
    let dest = format!("{}:8080", gone.ip);
    wait_for(
        "the UDP destination's removal",
        Duration::from_secs(60),
        || dest_line(&c.ipvsadm(), "UDP  10.96.0.53:53", &dest).is_none(),
    );
    let next = resolver
        .ask()
        .unwrap_or_else(|e| panic!("the datagram after {} left was lost: {e}", gone.name));
    assert_eq!(next.pod, live.name);
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn a_kipvs_restart_under_steady_traffic_fails_no_request() {
    let c = {
        let mut c = Cluster::new("restart", "");
        c.add_pods("web", 3);
        c.add_pod("caller", NODE);
        c
    };
    let pods = [c.pod(0), c.pod(1), c.pod(2)];
    c.apply(&[Service::cluster_ip("web", "10.96.0.60", 80, &pods).node_port(30200, 30201)]);
    c.start();

    let done = AtomicBool::new(false);
    let (from_pod, from_outside) = std::thread::scope(|s| {
        let load = |ns: &'static str, dst| {
            let ns = if ns == "pod" { &c.pod(3).ns } else { &c.client };
            let done = &done;
            s.spawn(move || {
                let (mut ok, mut failed) = (0, Vec::new());
                while !done.load(Ordering::Relaxed) {
                    match tcp(ns, dst) {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        };
        let pod_load = load("pod", addr("10.96.0.60", 80));
        let outside_load = load("client", addr("192.168.1.10", 30200));
        std::thread::sleep(Duration::from_secs(2));
        c.stop();
        std::thread::sleep(Duration::from_secs(1));
        c.start();
        std::thread::sleep(Duration::from_secs(3));
        done.store(true, Ordering::Relaxed);
        (pod_load.join().unwrap(), outside_load.join().unwrap())
    });
    eprintln!(
        "restart under traffic: {} requests from a pod, {} from outside",
        from_pod.0, from_outside.0
    );
    for (who, (ok, failed)) in [("pod", from_pod), ("outside", from_outside)] {
        assert!(
            failed.is_empty(),
            "{who}: {} failed: {failed:?}",
            failed.len()
        );
        assert!(ok > 20, "{who}: only {ok} requests ran");
    }
}
