//! Rendering kube-proxy's ipvs-mode chains and rules from a [`RuleSpec`] (pure).
//!
//! Rules are written exactly as `iptables-save` prints them back (`--or-mark` appears as
//! `--set-xmark M/M`, base matches like `! -s` come first, `REJECT` names its
//! `--reject-with`), so comparing them with the kernel's rules is a string comparison.

use std::fmt;

use kipvs_ipvs::{Family, Protocol};
use kipvs_proxy::ipset::protocol_name;
use kipvs_proxy::{SetKind, SetName};

use super::spec::RuleSpec;
use crate::nfnetlink::ipproto;

/// An iptables table kipvs writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `nat`.
    Nat,
    /// `filter`.
    Filter,
}

impl Table {
    /// Both tables, in the order they are written.
    pub const ALL: [Table; 2] = [Table::Nat, Table::Filter];

    /// The table's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The chains kipvs owns, per table (kube-proxy's ipvs-mode chains).
pub const OWN_CHAINS: [(Table, &str); 11] = [
    (Table::Nat, "KUBE-SERVICES"),
    (Table::Nat, "KUBE-POSTROUTING"),
    (Table::Nat, "KUBE-NODE-PORT"),
    (Table::Nat, "KUBE-LOAD-BALANCER"),
    (Table::Nat, "KUBE-MARK-MASQ"),
    (Table::Filter, "KUBE-FORWARD"),
    (Table::Filter, "KUBE-NODE-PORT"),
    (Table::Filter, "KUBE-PROXY-FIREWALL"),
    (Table::Filter, "KUBE-SOURCE-RANGES-FIREWALL"),
    (Table::Filter, "KUBE-IPVS-FILTER"),
    (Table::Filter, "KUBE-IPVS-OUT-FILTER"),
];

/// The jumps from built-in chains into kipvs' chains: `(table, from, comment, to)`.
pub const JUMPS: [(Table, &str, &str, &str); 9] = [
    (
        Table::Nat,
        "OUTPUT",
        "kubernetes service portals",
        "KUBE-SERVICES",
    ),
    (
        Table::Nat,
        "PREROUTING",
        "kubernetes service portals",
        "KUBE-SERVICES",
    ),
    (
        Table::Nat,
        "POSTROUTING",
        "kubernetes postrouting rules",
        "KUBE-POSTROUTING",
    ),
    (
        Table::Filter,
        "FORWARD",
        "kubernetes forwarding rules",
        "KUBE-FORWARD",
    ),
    (
        Table::Filter,
        "INPUT",
        "kubernetes health check rules",
        "KUBE-NODE-PORT",
    ),
    (
        Table::Filter,
        "INPUT",
        "kube-proxy firewall rules",
        "KUBE-PROXY-FIREWALL",
    ),
    (
        Table::Filter,
        "FORWARD",
        "kube-proxy firewall rules",
        "KUBE-PROXY-FIREWALL",
    ),
    (
        Table::Filter,
        "INPUT",
        "kubernetes ipvs access filter",
        "KUBE-IPVS-FILTER",
    ),
    (
        Table::Filter,
        "OUTPUT",
        "kubernetes ipvs access filter",
        "KUBE-IPVS-OUT-FILTER",
    ),
];

/// One of kipvs' chains with its rules (each without the `-A CHAIN ` prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Its table.
    pub table: Table,
    /// Its name.
    pub name: &'static str,
    /// Its rules, in order.
    pub rules: Vec<String>,
}

/// A jump rule in a built-in chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jump {
    /// Its table.
    pub table: Table,
    /// The built-in chain it sits in.
    pub from: &'static str,
    /// The rule (without `-A CHAIN `).
    pub rule: String,
}

/// Everything kipvs installs in one family's iptables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// kipvs' chains, all of them (empty ones too).
    pub chains: Vec<Chain>,
    /// The jumps into them.
    pub jumps: Vec<Jump>,
}

fn comment(text: &str) -> String {
    format!("-m comment --comment \"{text}\"")
}

/// The jump rules for `JUMPS`.
pub fn jumps() -> Vec<Jump> {
    JUMPS
        .iter()
        .map(|&(table, from, text, to)| Jump {
            table,
            from,
            rule: format!("{} -j {to}", comment(text)),
        })
        .collect()
}

/// Renders kube-proxy's ipvs-mode ruleset for `spec`.
pub fn render(spec: &RuleSpec) -> Ruleset {
    let family = spec.family;
    let name = |set: SetKind| SetName::new(set, family);
    let set_match = |set: SetKind, dirs: &str| format!("-m set --match-set {} {dirs}", name(set));
    let commented =
        |set: SetKind, dirs: &str| format!("{} {}", comment(set.comment()), set_match(set, dirs));
    let mark = spec.config.masquerade_bit.mark();

    let mut services = Vec::new();
    let mut postrouting = Vec::new();
    let mut nat_node_port = Vec::new();
    let mut load_balancer = Vec::new();
    let mut firewall = Vec::new();
    let mut source_ranges = Vec::new();

    // Connections from localhost never go through IPVS rules here.
    let loopback = match family {
        Family::V4 => "127.0.0.0/8",
        Family::V6 => "::1/128",
    };
    services.push(format!("-s {loopback} -j RETURN"));

    // Sets matched straight into a chain or target (kube-proxy's ipsetWithIptablesChain).
    if spec.has(SetKind::LoopBack) {
        postrouting.push(format!(
            "{} -j MASQUERADE",
            commented(SetKind::LoopBack, "dst,dst,src")
        ));
    }
    if spec.has(SetKind::LoadBalancer) {
        services.push(format!(
            "{} -j KUBE-LOAD-BALANCER",
            commented(SetKind::LoadBalancer, "dst,dst")
        ));
    }
    if spec.has(SetKind::LoadBalancerLocal) {
        load_balancer.push(format!(
            "{} -j RETURN",
            commented(SetKind::LoadBalancerLocal, "dst,dst")
        ));
    }
    let node_ports = [
        (SetKind::NodePortLocalTcp, Protocol::Tcp, "dst", "RETURN"),
        (SetKind::NodePortTcp, Protocol::Tcp, "dst", "KUBE-MARK-MASQ"),
        (SetKind::NodePortLocalUdp, Protocol::Udp, "dst", "RETURN"),
        (SetKind::NodePortUdp, Protocol::Udp, "dst", "KUBE-MARK-MASQ"),
        (
            SetKind::NodePortLocalSctp,
            Protocol::Sctp,
            "dst,dst",
            "RETURN",
        ),
        (
            SetKind::NodePortSctp,
            Protocol::Sctp,
            "dst,dst",
            "KUBE-MARK-MASQ",
        ),
    ];
    for (set, protocol, dirs, target) in node_ports {
        if spec.has(set) {
            nat_node_port.push(format!(
                "-p {} {} -j {target}",
                protocol_name(protocol),
                commented(set, dirs)
            ));
        }
    }
    if spec.has(SetKind::LoadBalancerFw) {
        firewall.push(format!(
            "{} -j KUBE-SOURCE-RANGES-FIREWALL",
            commented(SetKind::LoadBalancerFw, "dst,dst")
        ));
    }
    for set in [
        SetKind::LoadBalancerSourceCidr,
        SetKind::LoadBalancerSourceIp,
    ] {
        if spec.has(set) {
            source_ranges.push(format!("{} -j RETURN", commented(set, "dst,dst,src")));
        }
    }

    // ClusterIP masquerade: everything, or what is not local, or node-originated
    // traffic with a VIP source.
    if spec.has(SetKind::ClusterIp) {
        let m = commented(SetKind::ClusterIp, "dst,dst");
        let m_src = commented(SetKind::ClusterIp, "src,dst");
        services.push(if spec.config.masquerade_all {
            format!("{m} -j KUBE-MARK-MASQ")
        } else if let Some(not_local) = spec.config.local_detector.if_not_local() {
            format!("{not_local} {m} -j KUBE-MARK-MASQ")
        } else {
            format!("{m_src} -j KUBE-MARK-MASQ")
        });
    }
    // External IPs: masquerade, and accept off-node and local-destination traffic.
    let external_accepts = |m: &str, out: &mut Vec<String>| {
        out.push(format!(
            "{m} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT"
        ));
        out.push(format!("{m} -m addrtype --dst-type LOCAL -j ACCEPT"));
    };
    if spec.has(SetKind::ExternalIp) {
        let m = commented(SetKind::ExternalIp, "dst,dst");
        services.push(format!("{m} -j KUBE-MARK-MASQ"));
        external_accepts(&m, &mut services);
    }
    if spec.has(SetKind::ExternalIpLocal) {
        let m = commented(SetKind::ExternalIpLocal, "dst,dst");
        external_accepts(&m, &mut services);
    }
    services.push("-m addrtype --dst-type LOCAL -j KUBE-NODE-PORT".to_owned());
    load_balancer.push("-j KUBE-MARK-MASQ".to_owned());
    source_ranges.push("-j DROP".to_owned());

    let host = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v4) => format!("{v4}/32"),
        std::net::IpAddr::V6(v6) => format!("{v6}/128"),
    };
    // As iptables-save prints it (libxt_ipvs: --vproto before --vaddr, and the address
    // without its full-length mask), or every verify would find it changed and rewrite
    // the table.
    let out_filter = spec
        .no_node_access
        .iter()
        .filter(|n| Family::of(&n.addr) == family)
        .map(|n| {
            format!(
                "-s {} -m ipvs --vproto {} --vaddr {} --vport {} -j DROP",
                host(n.addr),
                ipproto(n.protocol),
                n.addr,
                n.port
            )
        })
        .collect();

    // Accept IPVS traffic, in case later rules would drop it.
    for set in [SetKind::ClusterIp, SetKind::LoadBalancer] {
        if spec.has(set) {
            services.push(format!("{} -j ACCEPT", set_match(set, "dst,dst")));
        }
    }

    let forward = vec![
        format!(
            "{} -m mark --mark {mark}/{mark} -j ACCEPT",
            comment("kubernetes forwarding rules")
        ),
        format!(
            "{} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            comment("kubernetes forwarding conntrack rule")
        ),
    ];
    let filter_node_port = vec![format!(
        "{} -j ACCEPT",
        commented(SetKind::HealthCheckNodePort, "dst")
    )];
    let reject_with = match family {
        Family::V4 => "icmp-port-unreachable",
        Family::V6 => "icmp6-port-unreachable",
    };
    let ipvs_filter = vec![
        format!("{} -j RETURN", set_match(SetKind::LoadBalancer, "dst,dst")),
        format!("{} -j RETURN", set_match(SetKind::ClusterIp, "dst,dst")),
        format!("{} -j RETURN", set_match(SetKind::ExternalIp, "dst,dst")),
        format!(
            "{} -j RETURN",
            set_match(SetKind::ExternalIpLocal, "dst,dst")
        ),
        format!(
            "{} -j RETURN",
            set_match(SetKind::HealthCheckNodePort, "dst")
        ),
        format!(
            "-m conntrack --ctstate NEW {} -j REJECT --reject-with {reject_with}",
            set_match(SetKind::IpvsIps, "dst")
        ),
    ];

    postrouting.push(format!("-m mark ! --mark {mark}/{mark} -j RETURN"));
    postrouting.push(format!("-j MARK --set-xmark {mark}/0x0"));
    postrouting.push(format!(
        "{} -j MASQUERADE{}",
        comment("kubernetes service traffic requiring SNAT"),
        if spec.config.random_fully {
            " --random-fully"
        } else {
            ""
        }
    ));
    let mark_masq = vec![format!("-j MARK --set-xmark {mark}/{mark}")];

    let chains = vec![
        (Table::Nat, "KUBE-SERVICES", services),
        (Table::Nat, "KUBE-POSTROUTING", postrouting),
        (Table::Nat, "KUBE-NODE-PORT", nat_node_port),
        (Table::Nat, "KUBE-LOAD-BALANCER", load_balancer),
        (Table::Nat, "KUBE-MARK-MASQ", mark_masq),
        (Table::Filter, "KUBE-FORWARD", forward),
        (Table::Filter, "KUBE-NODE-PORT", filter_node_port),
        (Table::Filter, "KUBE-PROXY-FIREWALL", firewall),
        (Table::Filter, "KUBE-SOURCE-RANGES-FIREWALL", source_ranges),
        (Table::Filter, "KUBE-IPVS-FILTER", ipvs_filter),
        (Table::Filter, "KUBE-IPVS-OUT-FILTER", out_filter),
    ];
    Ruleset {
        chains: chains
            .into_iter()
            .map(|(table, name, rules)| Chain { table, name, rules })
            .collect(),
        jumps: jumps(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipset::KubeSets;
    use crate::iptables::{LocalDetector, RuleConfig};
    use kipvs_proxy::translate::NoNodeAccess;
    use kipvs_proxy::Member;

    fn chain<'a>(set: &'a Ruleset, table: Table, name: &str) -> &'a [String] {
        &set.chains
            .iter()
            .find(|c| c.table == table && c.name == name)
            .unwrap()
            .rules
    }

    fn spec_with(sets: &[SetKind], config: RuleConfig) -> RuleSpec {
        let mut s = RuleSpec::new(&KubeSets::new(Family::V4), config);
        s.nonempty = sets.iter().copied().collect();
        s
    }

    #[test]
    fn every_chain_is_rendered_in_owned_order() {
        let set = render(&spec_with(&[], RuleConfig::default()));
        let names: Vec<_> = set.chains.iter().map(|c| (c.table, c.name)).collect();
        assert_eq!(names, OWN_CHAINS.to_vec());
        assert_eq!(set.jumps.len(), 9);
    }

    #[test]
    fn masquerade_rules_use_the_configured_bit_as_iptables_save_prints_it() {
        let config = RuleConfig {
            masquerade_bit: crate::iptables::MasqueradeBit::new(13).unwrap(),
            random_fully: true,
            ..RuleConfig::default()
        };
        let set = render(&spec_with(&[], config));
        assert_eq!(
            chain(&set, Table::Nat, "KUBE-MARK-MASQ"),
            ["-j MARK --set-xmark 0x2000/0x2000"]
        );
        assert_eq!(
            chain(&set, Table::Nat, "KUBE-POSTROUTING"),
            [
                "-m mark ! --mark 0x2000/0x2000 -j RETURN",
                "-j MARK --set-xmark 0x2000/0x0",
                "-m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
            ]
        );
    }

    #[test]
    fn cluster_ip_masquerade_follows_masquerade_all_then_local_detection() {
        let all = RuleConfig {
            masquerade_all: true,
            ..RuleConfig::default()
        };
        let rules = render(&spec_with(&[SetKind::ClusterIp], all));
        assert!(chain(&rules, Table::Nat, "KUBE-SERVICES")[1]
            .ends_with("--match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ"));
        let cidr = RuleConfig {
            local_detector: LocalDetector::Cidr("10.244.0.0/16".parse().unwrap()),
            ..RuleConfig::default()
        };
        let rules = render(&spec_with(&[SetKind::ClusterIp], cidr));
        assert!(chain(&rules, Table::Nat, "KUBE-SERVICES")[1]
            .starts_with("! -s 10.244.0.0/16 -m comment"));
        let none = render(&spec_with(&[SetKind::ClusterIp], RuleConfig::default()));
        assert!(chain(&none, Table::Nat, "KUBE-SERVICES")[1].contains("KUBE-CLUSTER-IP src,dst"));
    }

    #[test]
    fn hairpin_masquerade_comes_first_in_postrouting_when_loop_back_has_members() {
        let rules = render(&spec_with(&[SetKind::LoopBack], RuleConfig::default()));
        assert_eq!(
            chain(&rules, Table::Nat, "KUBE-POSTROUTING")[0],
            "-m comment --comment \"Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose\" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE"
        );
    }

    #[test]
    fn empty_sets_get_no_rules_but_the_ipvs_filter_always_matches_all_of_them() {
        let rules = render(&spec_with(&[], RuleConfig::default()));
        assert_eq!(
            chain(&rules, Table::Nat, "KUBE-SERVICES"),
            [
                "-s 127.0.0.0/8 -j RETURN",
                "-m addrtype --dst-type LOCAL -j KUBE-NODE-PORT"
            ]
        );
        assert!(chain(&rules, Table::Nat, "KUBE-NODE-PORT").is_empty());
        assert_eq!(chain(&rules, Table::Filter, "KUBE-IPVS-FILTER").len(), 6);
        assert_eq!(
            chain(&rules, Table::Filter, "KUBE-SOURCE-RANGES-FIREWALL"),
            ["-j DROP"]
        );
    }

    #[test]
    fn ipv6_rules_name_the_kube_6_sets() {
        let mut sets = KubeSets::new(Family::V6);
        let vip = "fd00::1".parse().unwrap();
        let member = Member::IpPort {
            ip: vip,
            protocol: Protocol::Tcp,
            port: 80,
        };
        sets.insert(SetKind::ClusterIp, member).unwrap();
        let rules = render(&RuleSpec::new(&sets, RuleConfig::default()));
        let services = chain(&rules, Table::Nat, "KUBE-SERVICES");
        assert_eq!(services[0], "-s ::1/128 -j RETURN");
        assert!(services[1].contains("KUBE-6-CLUSTER-IP src,dst"));
        assert!(chain(&rules, Table::Filter, "KUBE-IPVS-FILTER")[5]
            .ends_with("KUBE-6-IPVS-IPS dst -j REJECT --reject-with icmp6-port-unreachable"));
    }

    #[test]
    fn node_ports_match_their_protocol_local_sets_first() {
        let rules = render(&spec_with(
            &[
                SetKind::NodePortTcp,
                SetKind::NodePortLocalTcp,
                SetKind::NodePortUdp,
            ],
            RuleConfig::default(),
        ));
        let np = chain(&rules, Table::Nat, "KUBE-NODE-PORT");
        assert_eq!(np.len(), 3);
        assert!(
            np[0].starts_with("-p tcp ")
                && np[0].ends_with("KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN")
        );
        assert!(np[1].ends_with("KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ"));
        assert!(np[2].starts_with("-p udp "));
    }

    #[test]
    fn lb_ports_closed_to_the_node_drop_by_ipvs_match_in_their_family_only() {
        let mut spec = spec_with(&[], RuleConfig::default());
        spec.no_node_access = [
            NoNodeAccess {
                addr: "203.0.113.10".parse().unwrap(),
                protocol: Protocol::Sctp,
                port: 80,
            },
            NoNodeAccess {
                addr: "fd00::10".parse().unwrap(),
                protocol: Protocol::Tcp,
                port: 80,
            },
        ]
        .into();
        let rules = render(&spec);
        assert_eq!(
            chain(&rules, Table::Filter, "KUBE-IPVS-OUT-FILTER"),
            // iptables-save's form, seen from iptables v1.8.9 (nf_tables) in the test VM:
            // `-s 203.0.113.21/32 -m ipvs --vproto 6 --vaddr 203.0.113.21 --vport 80 -j DROP`
            // and `-s fd00::1/128 -m ipvs --vproto 17 --vaddr fd00::1 --vport 80 -j DROP`.
            ["-s 203.0.113.10/32 -m ipvs --vproto 132 --vaddr 203.0.113.10 --vport 80 -j DROP"]
        );
        let mut v6 = RuleSpec::new(&KubeSets::new(Family::V6), RuleConfig::default());
        v6.no_node_access = spec.no_node_access.clone();
        assert_eq!(
            chain(&render(&v6), Table::Filter, "KUBE-IPVS-OUT-FILTER"),
            ["-s fd00::10/128 -m ipvs --vproto 6 --vaddr fd00::10 --vport 80 -j DROP"]
        );
    }
}
