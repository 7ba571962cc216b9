//! Kernel tests that prove the test harness itself: the kernel under test has IPVS and
//! the other features kipvs uses, each test's network namespace is its own, and the real
//! tools run inside it. Run by `tests/run` (inside the test VM where the host kernel
//! lacks IPVS); a plain `cargo test` lists them as ignored.

use kipvs_testkit::Netns;
use neli::consts::socket::NlFamily;
use neli::router::synchronous::NlRouter;
use neli::utils::Groups;

#[test]
#[ignore = "kernel: run by tests/run"]
fn ipvs_generic_netlink_family_resolves_in_a_test_netns() {
    let ns = Netns::new();
    let _inside = ns.enter();
    let (router, _) =
        NlRouter::connect(NlFamily::Generic, None, Groups::empty()).expect("genetlink socket");
    let id = router
        .resolve_genl_family("IPVS")
        .expect("the IPVS family resolves");
    assert!(
        id >= 0x10,
        "generic netlink ids start at GENL_MIN_ID, got {id}"
    );
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn ipvsadm_service_is_visible_in_its_netns_and_not_in_another() {
    let ns = Netns::new();
    let other = Netns::new();
    ns.run_ok("ipvsadm", &["-A", "-t", "10.96.0.1:80", "-s", "rr"]);
    let here = ns.run_ok("ipvsadm", &["-Sn"]);
    assert_eq!(here, "-A -t 10.96.0.1:80 -s rr\n");
    let there = other.run_ok("ipvsadm", &["-Sn"]);
    assert_eq!(there, "", "another namespace must not see the service");
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn schedulers_are_auto_loaded_on_demand() {
    // ip_vs_mh is not loaded by anything else in the suite: creating a service with it
    // proves the kernel can load modules inside the VM.
    let ns = Netns::new();
    ns.run_ok(
        "ipvsadm",
        &["-A", "-u", "10.96.0.10:53", "-s", "mh", "-b", "mh-port"],
    );
    assert_eq!(
        ns.run_ok("ipvsadm", &["-Sn"]),
        "-A -u 10.96.0.10:53 -s mh -b mh-port\n"
    );
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn unicast_destinations_need_no_route_but_multicast_ones_are_refused() {
    // ipvs-kernel.md said a bare namespace rejects every destination; the kernel only
    // refuses addresses that are not unicast (inet_addr_type() of an unrouted address is
    // RTN_UNICAST). This test pins the behaviour kipvs relies on.
    let ns = Netns::new();
    ns.run_ok("ipvsadm", &["-A", "-t", "10.96.0.1:443", "-s", "rr"]);
    ns.run_ok(
        "ipvsadm",
        &["-a", "-t", "10.96.0.1:443", "-r", "10.244.1.5:6443", "-m"],
    );
    let multicast = ns.run(
        "ipvsadm",
        &["-a", "-t", "10.96.0.1:443", "-r", "224.0.0.5:6443", "-m"],
    );
    assert!(
        !multicast.status.success(),
        "a multicast destination was accepted"
    );
    assert_eq!(
        ns.run_ok("ipvsadm", &["-Sn"]),
        "-A -t 10.96.0.1:443 -s rr\n-a -t 10.96.0.1:443 -r 10.244.1.5:6443 -m -w 1\n"
    );
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn dummy_links_hold_addresses_in_a_test_netns() {
    let ns = Netns::new();
    ns.ip(&["link", "add", "kube-ipvs0", "type", "dummy"]);
    ns.ip(&["addr", "add", "10.96.0.1/32", "dev", "kube-ipvs0"]);
    let addrs = ns.ip(&["-o", "addr", "show", "dev", "kube-ipvs0"]);
    assert!(addrs.contains("inet 10.96.0.1/32"), "{addrs}");
    let local = ns.ip(&["route", "show", "table", "local"]);
    assert!(local.contains("local 10.96.0.1 dev kube-ipvs0"), "{local}");
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn veth_pairs_carry_traffic_between_namespaces() {
    let node = Netns::new();
    let pod = Netns::new();
    node.ip(&[
        "link",
        "add",
        "kt-veth",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod.name(),
    ]);
    node.sh("ip addr add 192.0.2.1/24 dev kt-veth && ip link set kt-veth up");
    pod.sh("ip addr add 192.0.2.2/24 dev eth0 && ip link set eth0 up");
    pod.run_ok("ping", &["-c", "1", "-W", "5", "192.0.2.1"]);
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn ipsets_are_created_and_listed_in_a_test_netns() {
    let ns = Netns::new();
    let other = Netns::new();
    ns.run_ok("ipset", &["create", "KUBE-CLUSTER-IP", "hash:ip,port"]);
    ns.run_ok("ipset", &["add", "KUBE-CLUSTER-IP", "10.96.0.1,tcp:443"]);
    let list = ns.run_ok("ipset", &["list", "KUBE-CLUSTER-IP"]);
    assert!(list.contains("10.96.0.1,tcp:443"), "{list}");
    assert_eq!(other.run_ok("ipset", &["list", "-n"]), "");
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn iptables_nft_backend_works_in_a_test_netns() {
    let ns = Netns::new();
    let version = ns.run_ok("iptables", &["--version"]);
    assert!(
        version.contains("nf_tables"),
        "expected the nft backend: {version}"
    );
    ns.run_ok("iptables", &["-t", "nat", "-N", "KUBE-SERVICES"]);
    ns.run_ok(
        "iptables",
        &["-t", "nat", "-A", "PREROUTING", "-j", "KUBE-SERVICES"],
    );
    let saved = ns.run_ok("iptables-save", &["-t", "nat"]);
    assert!(saved.contains("-A PREROUTING -j KUBE-SERVICES"), "{saved}");
}
