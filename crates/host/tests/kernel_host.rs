//! Kernel tests for the host layer: the VIP link, sysctls, ipsets, iptables, cleanup and
//! real traffic, each in its own network namespace, with the real tools (`ip`, `ipset`,
//! `iptables-save`, `ipvsadm`) as oracles. Run by `tests/run` (inside the test VM where
//! the host kernel lacks IPVS); a plain `cargo test` lists them as ignored.

#![allow(clippy::unwrap_used)] // test helpers, like the tests, panic on failure

use std::collections::BTreeSet;
use std::net::IpAddr;

use kipvs_host::cleanup;
use kipvs_host::ipset::{self, KubeSets};
use kipvs_host::iptables::{Backend, Iptables, LocalDetector, RuleConfig, RuleSpec};
use kipvs_host::link::VipLink;
use kipvs_host::sysctl::{self, Outcome, SysctlConfig, Sysctls};
use kipvs_ipvs::{Family, Protocol};
use kipvs_proxy::{Member, SetKind};
use kipvs_testkit::Netns;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

fn tcp(ip: IpAddr, port: u16) -> Member {
    Member::IpPort {
        ip,
        protocol: Protocol::Tcp,
        port,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Sets for one Service 10.96.0.10:80/TCP (and its IPv6 twin) whose only endpoint is
/// `endpoint:8080` on this node.
fn service_sets(family: Family, vip: &str, endpoint: &str) -> KubeSets {
    let mut sets = KubeSets::new(family);
    let (vip, ep) = (ip(vip), ip(endpoint));
    sets.insert(SetKind::ClusterIp, tcp(vip, 80)).unwrap();
    sets.insert(SetKind::IpvsIps, Member::Ip(vip)).unwrap();
    let hairpin = Member::IpPortIp {
        ip: ep,
        protocol: Protocol::Tcp,
        port: 8080,
        ip2: ep,
    };
    sets.insert(SetKind::LoopBack, hairpin).unwrap();
    sets.insert(SetKind::NodePortTcp, Member::Port(30080))
        .unwrap();
    sets
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn vip_link_is_created_once_and_its_vips_converge_by_diff() {
    let ns = Netns::new();
    let _in = ns.enter();
    // Foreign state: an address on another link, and a /24 on kube-ipvs0 itself.
    ns.sh("ip link add foreign0 type dummy && ip addr add 10.96.0.99/32 dev foreign0");
    runtime().block_on(async {
        let link = VipLink::ensure("kube-ipvs0").await.unwrap();
        let index = link.index();
        ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "kube-ipvs0"]);
        let shown = ns.ip(&["-d", "link", "show", "kube-ipvs0"]);
        assert!(shown.contains("dummy"), "{shown}");
        assert!(shown.contains("NOARP"), "{shown}");

        let desired = ips(&["10.96.0.1", "10.96.0.10", "fd00:96::1"]);
        let report = link.converge(&desired).await.unwrap();
        assert_eq!((report.added, report.removed), (3, 0));
        let addrs = ns.ip(&["-o", "addr", "show", "dev", "kube-ipvs0"]);
        assert!(addrs.contains("inet 10.96.0.1/32"), "{addrs}");
        assert!(addrs.contains("inet 10.96.0.10/32"), "{addrs}");
        assert!(addrs.contains("inet6 fd00:96::1/128"), "{addrs}");
        assert!(
            !addrs.contains("tentative"),
            "IPv6 VIPs are added without DAD: {addrs}"
        );
        let local = ns.ip(&["route", "show", "table", "local"]);
        assert!(local.contains("local 10.96.0.1 dev kube-ipvs0"), "{local}");

        // A second converge changes nothing; a second ensure finds the same link.
        assert_eq!(link.converge(&desired).await.unwrap().added, 0);
        drop(link);
        let again = VipLink::ensure("kube-ipvs0").await.unwrap();
        assert_eq!(again.index(), index, "the link was recreated");

        // Stale VIPs go, foreign addresses stay.
        let report = again.converge(&ips(&["10.96.0.10"])).await.unwrap();
        assert_eq!((report.added, report.removed), (0, 2));
        let addrs = ns.ip(&["-o", "addr", "show", "dev", "kube-ipvs0"]);
        assert!(!addrs.contains("10.96.0.1/32"), "{addrs}");
        assert!(!addrs.contains("fd00:96::1"), "{addrs}");
        assert!(
            addrs.contains("inet 192.0.2.1/24"),
            "foreign address removed: {addrs}"
        );
        let foreign = ns.ip(&["-o", "addr", "show", "dev", "foreign0"]);
        assert!(foreign.contains("10.96.0.99/32"), "{foreign}");
        // Removing what is already gone, adding what is already there: success.
        assert_eq!(again.remove(&[ip("10.96.0.1")]).await.unwrap(), 0);
        assert_eq!(again.add(&[ip("10.96.0.10")]).await.unwrap(), 0);
    });
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn sysctls_are_set_as_kube_proxy_sets_them_and_reapplying_changes_nothing() {
    let ns = Netns::new();
    let _in = ns.enter();
    let kernel = sysctl::KernelVersion::running().unwrap();
    let settings = sysctl::kube_proxy_settings(SysctlConfig { strict_arp: true }, kernel);
    let sysctls = Sysctls::default();
    let first = sysctls.apply(&settings).unwrap();
    assert!(
        first
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Changed { .. })),
        "{first:?}"
    );
    let read = ns.sh(
        "cat /proc/sys/net/ipv4/vs/conntrack /proc/sys/net/ipv4/vs/expire_nodest_conn \
         /proc/sys/net/ipv4/vs/expire_quiescent_template /proc/sys/net/ipv4/ip_forward \
         /proc/sys/net/ipv4/conf/all/arp_ignore /proc/sys/net/ipv4/conf/all/arp_announce",
    );
    assert_eq!(read, "1\n1\n1\n1\n1\n2\n");
    let second = sysctls.apply(&settings).unwrap();
    assert!(
        second.iter().all(|(_, o)| *o == Outcome::Unchanged),
        "{second:?}"
    );
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn ipsets_converge_by_diff_grow_past_their_size_and_leave_foreign_sets_alone() {
    let ns = Netns::new();
    let _in = ns.enter();
    ns.sh("ipset create FOREIGN hash:ip && ipset add FOREIGN 192.0.2.7");
    // A kube set made too small by someone else: kipvs must regrow it.
    ns.sh("ipset create KUBE-CLUSTER-IP hash:ip,port maxelem 4 && ipset add KUBE-CLUSTER-IP 10.96.9.9,tcp:9");

    let mut sets = KubeSets::new(Family::V4);
    for port in 1..=10 {
        sets.insert(SetKind::ClusterIp, tcp(ip("10.96.0.1"), port))
            .unwrap();
    }
    sets.insert(SetKind::NodePortTcp, Member::Port(30080))
        .unwrap();
    let report = ipset::sync_sets(&sets).unwrap();
    assert!(report.changed);
    assert_eq!(report.swapped, 1, "{report:?}");
    let list = ns.run_ok("ipset", &["list", "KUBE-CLUSTER-IP"]);
    assert!(list.contains("maxelem 65536"), "{list}");
    assert!(list.contains("Number of entries: 10"), "{list}");
    assert!(!list.contains("10.96.9.9"), "stale member kept: {list}");
    let names = ns.run_ok("ipset", &["list", "-n"]);
    assert_eq!(
        names.lines().count(),
        18,
        "17 kube sets and the foreign one: {names}"
    );
    assert!(!names.contains("KIPVS-TMP"), "{names}");

    // Nothing differs: no restore.
    assert!(!ipset::sync_sets(&sets).unwrap().changed);

    // Only the difference is written.
    let mut next = KubeSets::new(Family::V4);
    for port in 5..=12 {
        next.insert(SetKind::ClusterIp, tcp(ip("10.96.0.1"), port))
            .unwrap();
    }
    let report = ipset::sync_sets(&next).unwrap();
    assert_eq!(
        (report.added, report.deleted, report.created),
        (2, 5, 0),
        "{report:?}"
    );
    let list = ns.run_ok("ipset", &["list", "KUBE-CLUSTER-IP"]);
    assert!(
        list.contains("10.96.0.1,tcp:12") && !list.contains("10.96.0.1,tcp:4\n"),
        "{list}"
    );
    assert_eq!(
        ns.run_ok("ipset", &["list", "KUBE-NODE-PORT-TCP"])
            .matches("30080")
            .count(),
        0
    );
    let foreign = ns.run_ok("ipset", &["list", "FOREIGN"]);
    assert!(foreign.contains("192.0.2.7"), "{foreign}");

    // IPv6 sets live beside the IPv4 ones.
    let v6 = service_sets(Family::V6, "fd00:96::10", "fd00:244::2");
    ipset::sync_sets(&v6).unwrap();
    let list = ns.run_ok("ipset", &["list", "KUBE-6-LOOP-BACK"]);
    assert!(list.contains("family inet6"), "{list}");
    assert!(list.contains("fd00:244::2,tcp:8080,fd00:244::2"), "{list}");
}

fn rules(sets: &KubeSets, detector: LocalDetector) -> RuleSpec {
    RuleSpec::new(
        sets,
        RuleConfig {
            local_detector: detector,
            random_fully: Backend::Nft.random_fully(),
            ..RuleConfig::default()
        },
    )
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn iptables_rules_are_written_once_and_rewritten_only_when_they_change() {
    let ns = Netns::new();
    let _in = ns.enter();
    ns.sh("iptables -N FOREIGN && iptables -A FOREIGN -j ACCEPT && iptables -A INPUT -j FOREIGN");
    let sets = service_sets(Family::V4, "10.96.0.10", "10.244.1.2");
    ipset::sync_sets(&sets).unwrap();
    let ipt = Iptables::new(Backend::Nft, Family::V4);
    let spec = rules(&sets, LocalDetector::Cidr("10.244.0.0/16".parse().unwrap()));
    assert!(ipt.sync(&spec).unwrap(), "the first sync writes");
    assert!(
        !ipt.sync(&spec).unwrap(),
        "the second sync must run no iptables-restore"
    );

    let saved = ns.run_ok("iptables-save", &[]);
    for line in [
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
        "-A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ",
        "-A KUBE-POSTROUTING -m comment --comment \"Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose\" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE",
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
        "-A KUBE-NODE-PORT -p tcp -m comment --comment \"Kubernetes nodeport TCP port for masquerade purpose\" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT",
        "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT --reject-with icmp-port-unreachable",
        "-A FOREIGN -j ACCEPT",
        "-A INPUT -j FOREIGN",
    ] {
        assert!(saved.lines().any(|l| l == line), "missing {line:?} in\n{saved}");
    }

    // A change in the input rewrites; drift in the kernel is repaired.
    let changed = rules(&sets, LocalDetector::None);
    assert!(ipt.sync(&changed).unwrap());
    assert!(!ipt.sync(&changed).unwrap());
    ns.sh("iptables -t nat -F KUBE-MARK-MASQ && iptables -D FORWARD -m comment --comment 'kubernetes forwarding rules' -j KUBE-FORWARD");
    assert!(ipt.sync(&changed).unwrap(), "drift is repaired");
    assert!(!ipt.sync(&changed).unwrap());
    let saved = ns.run_ok("iptables-save", &[]);
    assert!(saved.contains("-A INPUT -j FOREIGN"), "{saved}");

    // IPv6 goes through ip6tables, matching the KUBE-6- sets.
    let v6 = service_sets(Family::V6, "fd00:96::10", "fd00:244::2");
    ipset::sync_sets(&v6).unwrap();
    let ip6t = Iptables::new(Backend::Nft, Family::V6);
    let spec6 = rules(&v6, LocalDetector::Cidr("fd00:244::/64".parse().unwrap()));
    assert!(ip6t.sync(&spec6).unwrap());
    assert!(
        !ip6t.sync(&spec6).unwrap(),
        "the second IPv6 sync must run no ip6tables-restore"
    );
    let saved6 = ns.run_ok("ip6tables-save", &[]);
    assert!(
        saved6.contains("--match-set KUBE-6-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ"),
        "{saved6}"
    );
    assert!(
        saved6.contains("-A KUBE-SERVICES -s ::1/128 -j RETURN"),
        "{saved6}"
    );
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn cleanup_removes_exactly_what_kipvs_created() {
    let ns = Netns::new();
    let _in = ns.enter();
    ns.sh("ipset create FOREIGN hash:ip
         iptables -N FOREIGN && iptables -A INPUT -j FOREIGN
         ip link add foreign0 type dummy && ip addr add 10.96.0.99/32 dev foreign0");
    let sets = service_sets(Family::V4, "10.96.0.10", "10.244.1.2");
    let v6 = service_sets(Family::V6, "fd00:96::10", "fd00:244::2");
    runtime().block_on(async {
        let link = VipLink::ensure("kube-ipvs0").await.unwrap();
        link.converge(&ips(&["10.96.0.10", "fd00:96::10"]))
            .await
            .unwrap();
        ipset::sync_sets(&sets).unwrap();
        ipset::sync_sets(&v6).unwrap();
        Iptables::new(Backend::Nft, Family::V4)
            .sync(&rules(&sets, LocalDetector::None))
            .unwrap();
        Iptables::new(Backend::Nft, Family::V6)
            .sync(&rules(&v6, LocalDetector::None))
            .unwrap();
        drop(link);

        let report = cleanup::cleanup("kube-ipvs0", Backend::Nft).await.unwrap();
        assert_eq!(report.sets, 34, "{report:?}");
        assert!(report.link);
        assert_eq!(report.iptables, vec![Family::V4, Family::V6]);

        assert_eq!(ns.run_ok("ipset", &["list", "-n"]), "FOREIGN\n");
        let saved = ns.run_ok("iptables-save", &[]);
        assert!(!saved.contains("KUBE-"), "{saved}");
        assert!(saved.contains("-A INPUT -j FOREIGN"), "{saved}");
        assert!(!ns.run_ok("ip6tables-save", &[]).contains("KUBE-"));
        assert!(!ns.ip(&["link"]).contains("kube-ipvs0"));
        assert!(ns
            .ip(&["-o", "addr", "show", "dev", "foreign0"])
            .contains("10.96.0.99/32"));

        let again = cleanup::cleanup("kube-ipvs0", Backend::Nft).await.unwrap();
        assert_eq!(
            again,
            cleanup::CleanupReport::default(),
            "a second cleanup finds nothing"
        );
    });
}

/// A node namespace with a pod (10.244.1.2, fd00:244::2) and an off-cluster client
/// (10.250.0.2, fd00:250::2) behind veth pairs; the node forwards between them.
struct Topology {
    node: Netns,
    pod: Netns,
    client: Netns,
}

impl Topology {
    fn new() -> Topology {
        let t = Topology {
            node: Netns::new(),
            pod: Netns::new(),
            client: Netns::new(),
        };
        for (peer, ifname, net4, net6) in [
            (&t.pod, "kt-pod", "10.244.1", "fd00:244:"),
            (&t.client, "kt-cli", "10.250.0", "fd00:250:"),
        ] {
            t.node.sh(&format!(
                "ip link add {ifname} type veth peer name eth0 netns {peer}
                 ip addr add {net4}.1/24 dev {ifname}
                 ip -6 addr add {net6}:1/64 dev {ifname} nodad
                 ip link set {ifname} up",
                peer = peer.name()
            ));
            peer.sh(&format!(
                "ip addr add {net4}.2/24 dev eth0
                 ip -6 addr add {net6}:2/64 dev eth0 nodad
                 ip link set eth0 up
                 ip route add default via {net4}.1
                 ip -6 route add default via {net6}:1"
            ));
        }
        t.node.sh("sysctl -qw net.ipv6.conf.all.forwarding=1");
        // The pod answers with the address it sees the connection coming from.
        t.pod
            .sh("for l in TCP4-LISTEN:8080 TCP6-LISTEN:8080,ipv6only=1; do
               setsid timeout 120 socat $l,fork,reuseaddr SYSTEM:'echo $SOCAT_PEERADDR' \
                 </dev/null >/dev/null 2>&1 &
             done");
        wait_listening(&t.pod, 8080, true);
        t
    }

    /// An IPVS service `vip:port` whose only real server is the pod's port 8080.
    fn ipvs_service(&self, vip: &str, port: u16, real: &str) {
        let (v, r) = if vip.contains(':') {
            (format!("[{vip}]:{port}"), format!("[{real}]:8080"))
        } else {
            (format!("{vip}:{port}"), format!("{real}:8080"))
        };
        self.node.run_ok("ipvsadm", &["-A", "-t", &v, "-s", "rr"]);
        self.node
            .run_ok("ipvsadm", &["-a", "-t", &v, "-r", &r, "-m"]);
    }
}

/// Waits until something in `ns` listens on TCP `port` (IPv4 and, with `both`, IPv6).
fn wait_listening(ns: &Netns, port: u16, both: bool) {
    let want = if both { 2 } else { 1 };
    ns.sh(&format!(
        "for i in $(seq 100); do
           [ $(ss -Hltn \"sport = :{port}\" | wc -l) -ge {want} ] && exit 0
           sleep 0.1
         done; echo 'nothing listens on {port}' >&2; exit 1"
    ));
}

/// Connects from `ns` to `addr` (`10.96.0.10:80`, `[fd00::1]:80`), retrying while the
/// listener starts; returns what the server said, or what socat said when it failed.
fn connect(ns: &Netns, family: Family, addr: &str) -> String {
    let proto = if family == Family::V4 { "TCP4" } else { "TCP6" };
    let out = ns.run(
        "sh",
        &[
            "-c",
            &format!(
                "for i in 1 2 3 4 5 6 7 8 9 10; do
                   if out=$(socat -T 5 -u {proto}:{addr},connect-timeout=3 STDOUT 2>&1); then
                     echo \"$out\"; exit 0
                   fi
                   case \"$out\" in *refused*) echo \"$out\"; exit 1;; esac
                   sleep 0.5
                 done; echo \"$out\"; exit 1"
            ),
        ],
    );
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // socat prints IPv6 peers in full, bracketed: canonicalise addresses.
    match said
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        Ok(addr) => addr.to_string(),
        Err(_) => said,
    }
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn traffic_to_vips_on_the_down_link_reaches_a_local_ipvs_service_over_ipv4_and_ipv6() {
    let t = Topology::new();
    let _in = t.node.enter();
    let settings = sysctl::kube_proxy_settings(
        SysctlConfig::default(),
        sysctl::KernelVersion::running().unwrap(),
    );
    Sysctls::default().apply(&settings).unwrap();
    runtime().block_on(async {
        let link = VipLink::ensure("kube-ipvs0").await.unwrap();
        link.converge(&ips(&["10.96.0.10", "fd00:96::10"]))
            .await
            .unwrap();
        assert!(
            !link.is_up().await.unwrap(),
            "kube-ipvs0 stays down, as kube-proxy leaves it"
        );
    });
    let local6 = t.node.ip(&["-6", "route", "show", "table", "local"]);
    assert!(
        local6.contains("local fd00:96::10 dev kube-ipvs0"),
        "{local6}"
    );
    t.ipvs_service("10.96.0.10", 80, "10.244.1.2");
    t.ipvs_service("fd00:96::10", 80, "fd00:244::2");

    // Without masquerade rules the pod sees the client itself.
    assert_eq!(
        connect(&t.client, Family::V4, "10.96.0.10:80"),
        "10.250.0.2"
    );
    assert_eq!(
        connect(&t.client, Family::V6, "[fd00:96::10]:80"),
        "fd00:250::2"
    );

    // A port on the VIP that is not a Service reaches the node's own listener...
    t.node.sh(
        "setsid timeout 120 socat TCP4-LISTEN:2222,fork,reuseaddr SYSTEM:'echo node' \
           </dev/null >/dev/null 2>&1 &",
    );
    wait_listening(&t.node, 2222, false);
    assert_eq!(connect(&t.client, Family::V4, "10.96.0.10:2222"), "node");

    // ...until the rules are in: KUBE-IPVS-FILTER rejects it, the Service still works,
    // and traffic from outside the cluster CIDR is masqueraded.
    let sets = service_sets(Family::V4, "10.96.0.10", "10.244.1.2");
    ipset::sync_sets(&sets).unwrap();
    let spec = rules(&sets, LocalDetector::Cidr("10.244.0.0/16".parse().unwrap()));
    assert!(Iptables::new(Backend::Nft, Family::V4).sync(&spec).unwrap());
    let refused = connect(&t.client, Family::V4, "10.96.0.10:2222");
    assert!(refused.contains("refused"), "not rejected: {refused}");
    assert_eq!(
        connect(&t.client, Family::V4, "10.96.0.10:80"),
        "10.244.1.1"
    );

    let v6 = service_sets(Family::V6, "fd00:96::10", "fd00:244::2");
    ipset::sync_sets(&v6).unwrap();
    let spec6 = rules(&v6, LocalDetector::Cidr("fd00:244::/64".parse().unwrap()));
    assert!(Iptables::new(Backend::Nft, Family::V6)
        .sync(&spec6)
        .unwrap());
    assert_eq!(
        connect(&t.client, Family::V6, "[fd00:96::10]:80"),
        "fd00:244::1"
    );

    // With a FORWARD policy of DROP, KUBE-FORWARD still lets the Service's replies
    // through (they are conntrack-established).
    t.node
        .sh("iptables -P FORWARD DROP && ip6tables -P FORWARD DROP");
    assert_eq!(
        connect(&t.client, Family::V4, "10.96.0.10:80"),
        "10.244.1.1"
    );
    assert_eq!(
        connect(&t.client, Family::V6, "[fd00:96::10]:80"),
        "fd00:244::1"
    );
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn load_balancer_source_ranges_admit_listed_clients_and_drop_the_others() {
    let t = Topology::new();
    let _in = t.node.enter();
    let settings = sysctl::kube_proxy_settings(
        SysctlConfig::default(),
        sysctl::KernelVersion::running().unwrap(),
    );
    Sysctls::default().apply(&settings).unwrap();
    let lb = ip("203.0.113.10");
    runtime().block_on(async {
        let link = VipLink::ensure("kube-ipvs0").await.unwrap();
        link.converge(&[lb].into()).await.unwrap();
    });
    t.ipvs_service("203.0.113.10", 80, "10.244.1.2");
    let sync = |allowed: &str| {
        let mut sets = KubeSets::new(Family::V4);
        let port = tcp(lb, 80);
        sets.insert(SetKind::LoadBalancer, port).unwrap();
        sets.insert(SetKind::LoadBalancerFw, port).unwrap();
        sets.insert(SetKind::IpvsIps, Member::Ip(lb)).unwrap();
        let range = Member::IpPortNet {
            ip: lb,
            protocol: Protocol::Tcp,
            port: 80,
            net: allowed.parse::<ipnet::IpNet>().unwrap().trunc(),
        };
        sets.insert(SetKind::LoadBalancerSourceCidr, range).unwrap();
        ipset::sync_sets(&sets).unwrap();
        let spec = rules(&sets, LocalDetector::Cidr("10.244.0.0/16".parse().unwrap()));
        Iptables::new(Backend::Nft, Family::V4).sync(&spec).unwrap();
    };
    // The client's range is listed: admitted (and masqueraded: LoadBalancer traffic).
    sync("10.250.0.0/24");
    assert_eq!(
        connect(&t.client, Family::V4, "203.0.113.10:80"),
        "10.244.1.1"
    );
    // Only another range is listed: the client's packets are dropped.
    sync("192.0.2.0/24");
    let out = t.client.run(
        "socat",
        &[
            "-T",
            "3",
            "-u",
            "TCP4:203.0.113.10:80,connect-timeout=3",
            "STDOUT",
        ],
    );
    assert!(
        !out.status.success(),
        "a client outside the source ranges got through"
    );
    let counters = t.node.run_ok("iptables-save", &["-c", "-t", "filter"]);
    let drop_rule = counters
        .lines()
        .find(|l| l.ends_with("-A KUBE-SOURCE-RANGES-FIREWALL -j DROP"))
        .unwrap();
    assert!(
        !drop_rule.starts_with("[0:"),
        "nothing was dropped: {drop_rule}"
    );
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn a_pod_reaches_itself_through_its_service_thanks_to_the_loop_back_masquerade() {
    let t = Topology::new();
    let _in = t.node.enter();
    let settings = sysctl::kube_proxy_settings(
        SysctlConfig::default(),
        sysctl::KernelVersion::running().unwrap(),
    );
    Sysctls::default().apply(&settings).unwrap();
    runtime().block_on(async {
        let link = VipLink::ensure("kube-ipvs0").await.unwrap();
        link.converge(&ips(&["10.96.0.10", "fd00:96::10"]))
            .await
            .unwrap();
    });
    t.ipvs_service("10.96.0.10", 80, "10.244.1.2");
    t.ipvs_service("fd00:96::10", 80, "fd00:244::2");
    for (family, vip, pod, detect) in [
        (Family::V4, "10.96.0.10", "10.244.1.2", "10.244.0.0/16"),
        (Family::V6, "fd00:96::10", "fd00:244::2", "fd00:244::/64"),
    ] {
        let sets = service_sets(family, vip, pod);
        ipset::sync_sets(&sets).unwrap();
        let spec = rules(&sets, LocalDetector::Cidr(detect.parse().unwrap()));
        Iptables::new(Backend::Nft, family).sync(&spec).unwrap();
    }

    // The pod connects to its own Service; IPVS sends the connection back to it, and the
    // KUBE-LOOP-BACK masquerade makes it come from the node, so the answer returns.
    assert_eq!(connect(&t.pod, Family::V4, "10.96.0.10:80"), "10.244.1.1");
    assert_eq!(
        connect(&t.pod, Family::V6, "[fd00:96::10]:80"),
        "fd00:244::1"
    );
    let counters = t.node.run_ok("iptables-save", &["-c", "-t", "nat"]);
    let hairpin = counters
        .lines()
        .find(|l| l.contains("KUBE-LOOP-BACK dst,dst,src -j MASQUERADE"))
        .unwrap();
    assert!(
        !hairpin.starts_with("[0:"),
        "the hairpin rule matched nothing: {hairpin}"
    );
}

/// The kernel's ipset codes reach the user named, with what to do: a set filled past its
/// maxelem (4352 for a hash set, which read "Unknown error 4352" before) and a port
/// outside a bitmap set's range (4352 too, meaning something else for bitmaps).
#[test]
#[ignore = "kernel: run by tests/run"]
fn a_full_set_and_a_port_out_of_range_are_named_with_what_to_do() {
    use kipvs_host::ipset::netlink::IpsetSocket;
    use kipvs_host::ipset::SetOp;
    let ns = Netns::new();
    let _in = ns.enter();
    ns.run_ok(
        "ipset",
        &["create", "KUBE-TEST-FULL", "hash:ip", "maxelem", "4"],
    );
    let mut socket = IpsetSocket::open().unwrap();
    let members = (1..=5)
        .map(|i| Member::Ip(ip(&format!("10.0.0.{i}"))))
        .collect();
    let err = socket
        .apply(&[SetOp::Add("KUBE-TEST-FULL".into(), members)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("KUBE-TEST-FULL")
            && err.contains("the set is full")
            && err.contains("(IPSET_ERR_HASH_FULL, error 4352)")
            && err.contains("kipvs cleanup"),
        "{err}"
    );
    assert!(!err.contains("Unknown error"), "{err}");
    // The oracle agrees the set is at its maxelem.
    let listed = ns.run_ok("ipset", &["list", "KUBE-TEST-FULL"]);
    assert!(listed.contains("Number of entries: 4"), "{listed}");

    ns.run_ok(
        "ipset",
        &[
            "create",
            "KUBE-TEST-PORTS",
            "bitmap:port",
            "range",
            "30000-30010",
        ],
    );
    let err = socket
        .apply(&[SetOp::Add(
            "KUBE-TEST-PORTS".into(),
            vec![Member::Port(31000)],
        )])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("outside the set's range") && err.contains("IPSET_ERR_BITMAP_RANGE"),
        "{err}"
    );
}
