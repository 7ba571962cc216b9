//! End-to-end traffic through `kipvs run` beyond the IPv4 Calico-style node: the same
//! Services over IPv6, pods on a Linux bridge with br_netfilter (as bridge CNIs attach
//! them), and a cluster that kipvs learns from an API server instead of a state file.

// Helpers and tests are test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod e2e;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use e2e::{
    addr, answered, names, state_yaml, tcp, udp, Cluster, Service, BRIDGE_IP, CLIENT_IP6, NODE,
    NODE_IP6,
};
use kipvs_apiserver_fake::ApiServer;
use kipvs_kube::state_file;

#[test]
#[ignore = "kernel: run by tests/run"]
fn ipv6_cluster_ip_and_node_port_reach_every_pod() {
    let mut c = Cluster::new("ipv6", "");
    c.add_pods("web", 2);
    let caller = c.add_pod("caller", NODE);
    let svc = Service::cluster_ip("web6", "fd00:96::20", 80, &[c.pod(0), c.pod(1)])
        .node_port(30080, 30081);
    c.apply(&[svc]);
    c.start();
    let web = names(&["web-0", "web-1"]);

    let vip = addr("fd00:96::20", 80);
    assert_eq!(answered(&c.node, vip, 4), web);
    let from_pod = &c.pod(caller).ns;
    assert_eq!(answered(from_pod, vip, 4), web);
    assert_eq!(
        tcp(from_pod, vip).unwrap().source,
        IpAddr::V6(c.pod(caller).ip6)
    );

    // NodePort on the node's IPv6 address, from outside: both pods answer, masqueraded.
    // (The masquerade address is the kernel's source choice for the pod's link, which
    // has only a link-local address: any global address of the node, here a kube-ipvs0
    // VIP, as it would be with kube-proxy. The pod never sees the client.)
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        let t = tcp(&c.client, SocketAddr::new(NODE_IP6.into(), 30080)).unwrap();
        let u = udp(&c.client, SocketAddr::new(NODE_IP6.into(), 30081)).unwrap();
        assert_ne!(t.source, IpAddr::V6(CLIENT_IP6), "NodePort not masqueraded");
        assert_ne!(u.source, IpAddr::V6(CLIENT_IP6), "NodePort not masqueraded");
        seen.insert(t.pod);
        seen.insert(u.pod);
    }
    assert_eq!(seen, web);
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn bridged_pods_reach_a_cluster_ip_and_themselves_through_it() {
    let mut c = Cluster::new("bridge", "");
    let web0 = c.add_bridged_pod("web-0");
    let web1 = c.add_bridged_pod("web-1");
    let caller = c.add_bridged_pod("caller");
    let lonely = c.add_bridged_pod("lonely");
    c.apply(&[
        Service::cluster_ip("web", "10.96.0.80", 80, &[c.pod(web0), c.pod(web1)]),
        Service::cluster_ip("lonely", "10.96.0.81", 80, &[c.pod(lonely)]),
    ]);
    c.start();

    let from_pod = &c.pod(caller).ns;
    let vip = addr("10.96.0.80", 80);
    assert_eq!(answered(from_pod, vip, 4), names(&["web-0", "web-1"]));
    assert_eq!(
        tcp(from_pod, vip).unwrap().source,
        IpAddr::V4(c.pod(caller).ip)
    );

    // Hairpin across the bridge: answered by itself, from the bridge's address.
    let own = addr("10.96.0.81", 80);
    let lonely_ns = &c.pod(lonely).ns;
    for reply in [tcp(lonely_ns, own).unwrap(), udp(lonely_ns, own).unwrap()] {
        assert_eq!(reply.pod, "lonely");
        assert_eq!(
            reply.source,
            IpAddr::V4(BRIDGE_IP),
            "hairpin not masqueraded"
        );
    }
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn a_cluster_ip_learnt_from_the_api_server_follows_its_endpoint_slices() {
    let mut c = Cluster::new("apiserver", "");
    c.add_pods("web", 2);
    let caller = c.add_pod("caller", NODE);
    let one = Service::cluster_ip("web", "10.96.0.90", 80, &[c.pod(0)]);
    let two = Service::cluster_ip("web", "10.96.0.90", 80, &[c.pod(0), c.pod(1)]);

    // The API server listens inside the node: enter it before the runtime exists.
    let _inside = c.node.enter();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(ApiServer::start()).unwrap();
    // The state file says the same as the API server, for `plan --diff` to compare with.
    let publish = |services: &[Service]| {
        c.apply(services);
        let state = state_file::parse(&state_yaml(services), "e2e").unwrap();
        server.apply_all(&state.nodes);
        server.apply_all(&state.services);
        server.apply_all(&state.endpoint_slices);
    };
    publish(&[one]);
    let kubeconfig = c.dir().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    c.start_watching(&kubeconfig);

    let vip = addr("10.96.0.90", 80);
    let from_pod = &c.pod(caller).ns;
    assert_eq!(answered(from_pod, vip, 3), names(&["web-0"]));

    // The EndpointSlice gains a pod through the API server: both answer.
    publish(&[two]);
    c.wait_synced();
    assert_eq!(answered(from_pod, vip, 4), names(&["web-0", "web-1"]));
    c.stop();
}
