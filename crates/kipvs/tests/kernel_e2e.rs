//! End-to-end traffic through `kipvs run`: clients in the node, in pods and outside the
//! node reach pods through ClusterIPs, NodePorts, external IPs and LoadBalancer IPs,
//! over TCP and UDP, and each test asserts what the clients got back.

// Helpers and tests are test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod e2e;

use std::collections::BTreeSet;
use std::net::IpAddr;

use e2e::{
    addr, answered, names, tcp, tcp_from, udp, Cluster, Service, CLIENT_IP, CLIENT_IP_2, NODE_IP,
};

#[test]
#[ignore = "kernel: run by tests/run"]
fn cluster_ip_reaches_every_pod_from_the_node_and_from_a_pod_and_a_pod_reaches_itself() {
    let mut c = Cluster::new("clusterip", "");
    let web = c.add_pods("web", 2);
    let caller = c.add_pod("caller", e2e::NODE);
    let lonely = c.add_pod("lonely", e2e::NODE);
    let services = [
        Service::cluster_ip("web", "10.96.0.20", 80, &[c.pod(web[0]), c.pod(web[1])]),
        Service::cluster_ip("lonely", "10.96.0.21", 80, &[c.pod(lonely)]),
    ];
    c.apply(&services);
    c.start();
    let vip = addr("10.96.0.20", 80);

    // From the node: both pods answer, over TCP and UDP.
    assert_eq!(answered(&c.node, vip, 4), names(&["web-0", "web-1"]));

    // From a pod: both answer, and they see the pod's own address (no masquerade
    // inside the cluster CIDR).
    let from_pod = &c.pod(caller).ns;
    assert_eq!(answered(from_pod, vip, 4), names(&["web-0", "web-1"]));
    let seen = tcp(from_pod, vip).unwrap().source;
    assert_eq!(seen, IpAddr::V4(c.pod(caller).ip));

    // Hairpin: the only endpoint of `lonely` calls its own Service. It is answered by
    // itself, from the node's address (KUBE-LOOP-BACK masquerade): without it the reply
    // would go from the pod to the pod and the connection would never complete.
    let own = addr("10.96.0.21", 80);
    let lonely_ns = &c.pod(lonely).ns;
    for reply in [tcp(lonely_ns, own).unwrap(), udp(lonely_ns, own).unwrap()] {
        assert_eq!(reply.pod, "lonely");
        assert_eq!(reply.source, IpAddr::V4(NODE_IP), "hairpin not masqueraded");
    }
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn node_ports_external_ips_and_load_balancer_source_ranges_from_outside_the_node() {
    let mut c = Cluster::new("external", "");
    let web = c.add_pods("web", 2);
    let pods = [c.pod(web[0]), c.pod(web[1])];
    let node_port = Service::cluster_ip("np", "10.96.0.30", 80, &pods).node_port(30080, 30081);
    let mut external = Service::cluster_ip("ext", "10.96.0.31", 80, &pods);
    external.external_ips = vec!["203.0.113.10".parse().unwrap()];
    let mut lb = Service::cluster_ip("lb", "10.96.0.32", 80, &pods).node_port(30090, 30091);
    lb.kind = "LoadBalancer";
    lb.load_balancer_ips = vec!["203.0.113.20".parse().unwrap()];
    lb.source_ranges = vec!["192.168.1.100/32"];
    c.apply(&[node_port, external, lb]);
    c.start();

    // NodePort, TCP and UDP, on the node's address: both pods answer, and see the node
    // (Cluster policy masquerades).
    let web_pods = names(&["web-0", "web-1"]);
    let np_tcp = addr("192.168.1.10", 30080);
    let np_udp = addr("192.168.1.10", 30081);
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        let t = tcp(&c.client, np_tcp).unwrap();
        let u = udp(&c.client, np_udp).unwrap();
        assert_eq!(t.source, IpAddr::V4(NODE_IP));
        assert_eq!(u.source, IpAddr::V4(NODE_IP));
        seen.insert(t.pod);
        seen.insert(u.pod);
    }
    assert_eq!(seen, web_pods);

    // External IP: routed to the node, answered by the pods.
    assert_eq!(answered(&c.client, addr("203.0.113.10", 80), 2), web_pods);

    // LoadBalancer IP: the allowed source is answered, the other one gets nothing.
    let lb_vip = addr("203.0.113.20", 80);
    let allowed = tcp_from(&c.client, Some(IpAddr::V4(CLIENT_IP)), lb_vip).unwrap();
    assert!(web_pods.contains(&allowed.pod), "{allowed:?}");
    let refused = tcp_from(&c.client, Some(IpAddr::V4(CLIENT_IP_2)), lb_vip);
    assert!(
        refused.is_err(),
        "{CLIENT_IP_2} is outside loadBalancerSourceRanges but got {refused:?}"
    );
    // The refusal is the firewall's, not a broken path: the allowed source still works.
    tcp_from(&c.client, Some(IpAddr::V4(CLIENT_IP)), lb_vip).unwrap();
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn a_pod_reaches_a_local_policy_load_balancer_whose_endpoints_are_all_on_other_nodes() {
    let mut c = Cluster::new("localfallback", "");
    let remote = [
        c.add_pod("remote-0", e2e::OTHER_NODE),
        c.add_pod("remote-1", e2e::OTHER_NODE),
    ];
    let caller = c.add_pod("caller", e2e::NODE);
    let here = c.add_pod("here", e2e::NODE);
    let remote_pods = [c.pod(remote[0]), c.pod(remote[1])];
    let mut ingress =
        Service::cluster_ip("ingress", "10.96.0.50", 80, &remote_pods).node_port(30110, 30111);
    ingress.kind = "LoadBalancer";
    ingress.external_local = true;
    ingress.load_balancer_ips = vec!["203.0.113.50".parse().unwrap()];
    ingress.external_ips = vec!["203.0.113.51".parse().unwrap()];
    c.apply(&[ingress.clone()]);
    c.start();

    // A pod on this node reaches the Local-policy LoadBalancer IP, ExternalIP and
    // NodePort although no endpoint runs here (kubernetes#97081): the virtual services
    // fall back to every endpoint, over TCP and UDP.
    let from = &c.pod(caller).ns;
    let caller_ip = IpAddr::V4(c.pod(caller).ip);
    let remotes = names(&["remote-0", "remote-1"]);
    for vip in [
        addr("203.0.113.50", 80),
        addr("203.0.113.51", 80),
        addr("192.168.1.10", 30110),
    ] {
        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            let reply = tcp(from, vip).unwrap();
            assert_eq!(
                reply.source, caller_ip,
                "{vip}: the pod's source was rewritten"
            );
            seen.insert(reply.pod);
        }
        assert_eq!(seen, remotes, "{vip}");
    }
    assert!(remotes.contains(&udp(from, addr("203.0.113.50", 80)).unwrap().pod));
    assert!(remotes.contains(&udp(from, addr("192.168.1.10", 30111)).unwrap().pod));
    // The -LOCAL records stay as kube-proxy keeps them: external traffic is still not
    // masqueraded (on a real cluster the remote pod's reply would not come back this
    // way; here the "remote" pods hang off this node, so it does).
    let outside = tcp(&c.client, addr("192.168.1.10", 30110)).unwrap();
    assert!(remotes.contains(&outside.pod), "{outside:?}");
    assert_eq!(outside.source, IpAddr::V4(CLIENT_IP));
    let gauge =
        "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\",ip_family=\"IPv4\"} 1";
    assert!(c.metrics().contains(gauge), "{}", c.metrics());

    // Once an endpoint runs on this node, Local policy means it alone.
    ingress.endpoints.push(e2e::Endpoint::ready(c.pod(here)));
    c.apply(&[ingress]);
    c.wait_synced();
    assert_eq!(
        answered(from, addr("203.0.113.50", 80), 4),
        names(&["here"])
    );
    for _ in 0..4 {
        assert_eq!(tcp(from, addr("192.168.1.10", 30110)).unwrap().pod, "here");
    }
}
