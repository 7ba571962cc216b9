use super::*;

/// What `kubeadm config print init-defaults --component-configs KubeProxyConfiguration`
/// writes, switched to ipvs mode: every field present, most of them null or zero.
const KUBEADM_STYLE: &str = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ipvs
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"#;

fn parse(text: &str) -> Result<Loaded, ConfigError> {
    Config::parse(text, "test.yaml")
}

fn invalid(text: &str) -> (usize, usize, String, String) {
    match parse(text) {
        Err(ConfigError::Invalid {
            origin,
            line,
            column,
            field,
            message,
        }) => {
            assert_eq!(origin, "test.yaml");
            (line, column, field, message)
        }
        other => panic!("expected an invalid-config error, got {other:?}"),
    }
}

#[test]
fn an_empty_file_gives_kube_proxy_defaults() {
    let config = parse("").unwrap().config;
    assert_eq!(config, Config::default());
    assert_eq!(config.ipvs.scheduler, Scheduler::RoundRobin);
    assert_eq!(config.ipvs.sync_period, Duration::from_secs(30));
    assert_eq!(config.ipvs.min_sync_period, Duration::ZERO);
    assert_eq!(config.masquerade_bit, 14);
    assert_eq!(
        config.healthz_bind_address,
        "0.0.0.0:10256".parse().unwrap()
    );
    assert_eq!(
        config.metrics_bind_address,
        "127.0.0.1:10249".parse().unwrap()
    );
    assert_eq!(config.kubeconfig, None);
    assert!(config.node_port_addresses.is_empty());
}

#[test]
fn kubeadm_style_config_with_nulls_and_zeros_loads_with_defaults() {
    let loaded = parse(KUBEADM_STYLE).unwrap();
    let config = loaded.config;
    assert_eq!(
        config.kubeconfig,
        Some(PathBuf::from("/var/lib/kube-proxy/kubeconfig.conf"))
    );
    assert_eq!(config.ipvs.scheduler, Scheduler::RoundRobin);
    assert_eq!(config.ipvs.sync_period, Duration::from_secs(30));
    assert_eq!(config.masquerade_bit, 14);
    assert!(config.bind_address.is_empty(), "0.0.0.0 means unset");
    assert_eq!(
        config.cluster_cidrs,
        vec![
            "10.244.0.0/16".parse::<IpNet>().unwrap(),
            "fd00:10:244::/56".parse().unwrap()
        ]
    );
    assert_eq!(
        config.local_detection,
        LocalDetection::ClusterCidrs(config.cluster_cidrs.clone())
    );
    // Only what is actually set counts as "set but unused"; zeros and nulls do not.
    assert!(
        loaded.unused_fields.is_empty(),
        "{:?}",
        loaded.unused_fields
    );
}

#[test]
fn the_annotated_example_config_loads() {
    let text = include_str!("../../../../config/kube-proxy.yaml");
    let loaded = parse(text).unwrap();
    assert!(
        loaded.unused_fields.is_empty(),
        "{:?}",
        loaded.unused_fields
    );
    let config = loaded.config;
    assert!(config.ipvs.strict_arp);
    assert_eq!(
        config.metrics_bind_address,
        "0.0.0.0:10249".parse().unwrap()
    );
    assert_eq!(
        config.cluster_cidrs,
        vec!["10.244.0.0/16".parse::<IpNet>().unwrap()]
    );
}

#[test]
fn ipvs_settings_are_read() {
    let config = parse(
        "ipvs:\n  scheduler: sh\n  syncPeriod: 1m\n  minSyncPeriod: 1s\n  excludeCIDRs: [10.0.0.0/8]\n  tcpTimeout: 900s\n  udpTimeout: 30s\n",
    )
    .unwrap()
    .config;
    assert_eq!(config.ipvs.scheduler, Scheduler::SourceHashing);
    assert_eq!(config.ipvs.sync_period, Duration::from_secs(60));
    assert_eq!(config.ipvs.min_sync_period, Duration::from_secs(1));
    assert_eq!(
        config.ipvs.exclude_cidrs,
        vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
    );
    assert_eq!(config.ipvs.tcp_timeout, Duration::from_secs(900));
    assert_eq!(config.ipvs.udp_timeout, Duration::from_secs(30));
}

#[test]
fn ipvs_timeouts_are_set_only_when_one_is_given_and_zero_fields_stay() {
    assert_eq!(Config::default().ipvs.timeouts(), None);
    let config = parse("ipvs:\n  tcpTimeout: 900s\n  udpTimeout: 1500ms\n")
        .unwrap()
        .config;
    assert_eq!(
        config.ipvs.timeouts(),
        Some(kipvs_ipvs::Timeouts {
            tcp: 900,
            tcp_fin: 0,
            udp: 1
        })
    );
}

#[test]
fn unknown_fields_are_dropped_with_a_warning_naming_file_line_and_field() {
    // Fields older kubeadm releases wrote and kube-proxy has since removed.
    let text = "mode: ipvs\nudpIdleTimeout: 250ms\nconntrack:\n  max: null\n  maxPerCore: 32768\nipvs:\n  scheduler: lc\n  schedular: rr\n";
    let loaded = parse(text).unwrap();
    assert_eq!(loaded.config.ipvs.scheduler, Scheduler::LeastConnection);
    let warnings: Vec<String> = loaded
        .unknown_fields
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        warnings,
        [
            "test.yaml:2:1: udpIdleTimeout: unknown field, ignored (as kube-proxy ignores it)",
            "test.yaml:4:3: conntrack.max: unknown field, ignored (as kube-proxy ignores it)",
            "test.yaml:8:3: ipvs.schedular: unknown field, ignored (as kube-proxy ignores it)",
        ]
    );
    assert!(parse(KUBEADM_STYLE).unwrap().unknown_fields.is_empty());
}

#[test]
fn beside_unknown_fields_a_wrong_type_or_bad_value_still_refuses() {
    let (line, _, field, _) = invalid("udpIdleTimeout: 250ms\nipvs:\n  syncPeriod: 30\n");
    assert_eq!((line, field.as_str()), (3, "ipvs.syncPeriod"));
    let (line, _, field, _) = invalid("conntrack: {max: 5}\nipvs:\n  scheduler: roundrobin\n");
    assert_eq!((line, field.as_str()), (3, "ipvs.scheduler"));
}

#[test]
fn the_scheduler_is_checked_as_kube_proxy_checks_it() {
    for name in [
        "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "",
    ] {
        let text = format!("ipvs: {{scheduler: \"{name}\"}}\n");
        assert!(parse(&text).is_ok(), "{name}");
    }
    let (_, _, field, message) = invalid("ipvs:\n  scheduler: roundrobin\n");
    assert_eq!(field, "ipvs.scheduler");
    assert!(message.contains("must be one of rr, wrr"), "{message}");
    // Kernel schedulers kube-proxy refuses in its file: refused too, with the way to
    // get them per Service.
    for name in ["mh", "fo", "ovf"] {
        let (_, _, _, message) = invalid(&format!("ipvs: {{scheduler: {name}}}\n"));
        assert!(message.contains("ipvs.kipvs.io/scheduler"), "{message}");
    }
}

#[test]
fn bind_addresses_without_a_port_get_kube_proxys_default_ports() {
    let config = parse("healthzBindAddress: 0.0.0.0\nmetricsBindAddress: \"::\"\n")
        .unwrap()
        .config;
    assert_eq!(
        config.healthz_bind_address,
        "0.0.0.0:10256".parse().unwrap()
    );
    assert_eq!(config.metrics_bind_address, "[::]:10249".parse().unwrap());
    let config = parse("healthzBindAddress: 10.0.0.1:8080\nmetricsBindAddress: \"[::1]:9000\"\n")
        .unwrap()
        .config;
    assert_eq!(
        config.healthz_bind_address,
        "10.0.0.1:8080".parse().unwrap()
    );
    assert_eq!(config.metrics_bind_address, "[::1]:9000".parse().unwrap());
}

#[test]
fn bind_address_may_be_a_dual_stack_pair() {
    let config = parse("bindAddress: 192.168.1.10,fd00::10\n")
        .unwrap()
        .config;
    assert_eq!(
        config.bind_address,
        vec![
            "192.168.1.10".parse::<IpAddr>().unwrap(),
            "fd00::10".parse().unwrap()
        ]
    );
    assert_eq!(
        config.healthz_bind_address,
        "0.0.0.0:10256".parse().unwrap()
    );
    for bad in ["10.0.0.1,10.0.0.2", "10.0.0.1,fd00::1,fd00::2", "10.0.0.1,"] {
        let (_, _, field, _) = invalid(&format!("bindAddress: \"{bad}\"\n"));
        assert_eq!(field, "bindAddress", "{bad}");
    }
}

#[test]
fn a_wrong_type_is_refused_with_its_field() {
    let (line, column, field, message) = invalid("ipvs:\n  syncPeriod: 30\n");
    assert_eq!((line, column), (2, 3));
    assert_eq!(field, "ipvs.syncPeriod");
    assert!(message.contains("duration"), "{message}");
    let (line, _, field, _) = invalid("iptables:\n  masqueradeAll: yes please\n");
    assert_eq!((line, field.as_str()), (2, "iptables.masqueradeAll"));
}

#[test]
fn a_mode_other_than_ipvs_is_refused() {
    let (line, column, field, message) = invalid("kind: KubeProxyConfiguration\nmode: iptables\n");
    assert_eq!((line, column, field.as_str()), (2, 1, "mode"));
    assert!(message.contains("not supported"), "{message}");
    assert!(parse("mode: \"\"\n").is_ok(), "an empty mode means ipvs");
}

#[test]
fn bad_values_are_refused_where_they_are_written() {
    let cases = [
        ("ipvs:\n  scheduler: Round-Robin\n", "ipvs.scheduler", 2),
        ("clusterCIDR: 10.244.0.0/33\n", "clusterCIDR", 1),
        (
            "iptables:\n  masqueradeBit: 40\n",
            "iptables.masqueradeBit",
            2,
        ),
        (
            "nodePortAddresses: [primary, nowhere]\n",
            "nodePortAddresses[1]",
            1,
        ),
        ("metricsBindAddress: localhost\n", "metricsBindAddress", 1),
        ("detectLocalMode: Magic\n", "detectLocalMode", 1),
        (
            "apiVersion: kubeproxy.config.k8s.io/v1beta9\n",
            "apiVersion",
            1,
        ),
        (
            "ipvs:\n  excludeCIDRs: [10.0.0.0/8, bogus]\n",
            "ipvs.excludeCIDRs",
            2,
        ),
        ("oomScoreAdj: -5000\n", "oomScoreAdj", 1),
    ];
    for (text, want_field, want_line) in cases {
        let (line, _, field, message) = invalid(text);
        assert_eq!(field, want_field, "{text:?}: {message}");
        assert_eq!(line, want_line, "{text:?}: {message}");
    }
}

#[test]
fn cross_field_rules_name_the_line_of_the_field() {
    let (line, _, field, message) = invalid("ipvs:\n  syncPeriod: 10s\n  minSyncPeriod: 1m\n");
    assert_eq!((line, field.as_str()), (3, "ipvs.minSyncPeriod"));
    assert!(message.contains("10s"), "{message}");
    let (_, _, field, _) = invalid("detectLocalMode: BridgeInterface\n");
    assert_eq!(field, "detectLocal.bridgeInterface");
    let (_, _, field, _) = invalid("clusterCIDR: 10.0.0.0/8,10.1.0.0/16\n");
    assert_eq!(field, "clusterCIDR");
}

#[test]
fn node_port_addresses_accept_keywords_and_cidrs() {
    let config = parse("nodePortAddresses: [primary, 192.168.0.0/16, localhost, all]\n")
        .unwrap()
        .config;
    assert_eq!(
        config.node_port_addresses,
        vec![
            NodePortAddress::Primary,
            NodePortAddress::Cidr("192.168.0.0/16".parse().unwrap()),
            NodePortAddress::Localhost,
            NodePortAddress::All,
        ]
    );
}

#[test]
fn set_but_unused_fields_are_reported() {
    let loaded = parse(
        "conntrack:\n  maxPerCore: 32768\nenableProfiling: true\noomScoreAdj: -999\nipvs:\n  strictARP: true\n",
    )
    .unwrap();
    assert_eq!(loaded.unused_fields, vec!["enableProfiling", "oomScoreAdj"]);
}

#[test]
fn the_conntrack_section_gets_kube_proxys_defaults_and_explicit_zeros_stay() {
    let defaults = parse(KUBEADM_STYLE).unwrap().config.conntrack;
    assert_eq!(defaults, ConntrackConfig::default());
    assert_eq!(defaults.max_per_core, 32768);
    assert_eq!(defaults.min, 131_072);
    assert_eq!(
        defaults.tcp_established_timeout,
        Duration::from_secs(86_400)
    );
    assert_eq!(defaults.tcp_close_wait_timeout, Duration::from_secs(3600));
    let set = parse(
        "conntrack:\n  maxPerCore: 0\n  min: 10\n  tcpEstablishedTimeout: 0s\n  tcpCloseWaitTimeout: 30m\n  tcpBeLiberal: true\n  udpTimeout: 45s\n  udpStreamTimeout: 3m\n",
    )
    .unwrap()
    .config
    .conntrack;
    assert_eq!(
        set,
        ConntrackConfig {
            max_per_core: 0,
            min: 10,
            tcp_established_timeout: Duration::ZERO,
            tcp_close_wait_timeout: Duration::from_secs(1800),
            tcp_be_liberal: true,
            udp_timeout: Duration::from_secs(45),
            udp_stream_timeout: Duration::from_secs(180),
        }
    );
    let (line, _, field, _) = invalid("conntrack:\n  maxPerCore: -1\n");
    assert_eq!((line, field.as_str()), (2, "conntrack.maxPerCore"));
}

#[test]
fn an_ipv6_bind_address_moves_the_default_servers_to_ipv6() {
    let config = parse("bindAddress: fd00::10\n").unwrap().config;
    assert_eq!(config.healthz_bind_address, "[::]:10256".parse().unwrap());
    assert_eq!(config.metrics_bind_address, "[::1]:10249".parse().unwrap());
}

#[test]
fn a_missing_file_names_the_path() {
    let err = Config::load(Path::new("/nonexistent/kube-proxy.yaml")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/kube-proxy.yaml"),
        "{err}"
    );
}

#[test]
fn the_core_config_carries_the_ipvs_and_masquerade_settings() {
    let config = parse(
        "clusterCIDR: 10.244.0.0/16\nipvs: {scheduler: lc, excludeCIDRs: [10.0.0.0/8]}\niptables: {masqueradeAll: true, masqueradeBit: 10}\n",
    )
    .unwrap()
    .config;
    let core = config.core(&[]);
    assert_eq!(core.scheduler, Scheduler::LeastConnection);
    assert_eq!(
        core.exclude_cidrs,
        vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
    );
    assert!(core.masquerade_all);
    assert_eq!(core.masquerade_mark(), 1 << 10);
    assert_eq!(
        core.cluster_cidrs,
        vec!["10.244.0.0/16".parse::<IpNet>().unwrap()]
    );
    assert!(
        core.node_port_addresses.is_empty(),
        "no nodePortAddresses: every address"
    );
}

#[test]
fn node_port_address_keywords_expand_for_the_core() {
    let config = parse("nodePortAddresses: [primary, localhost, 192.168.0.0/16]\n")
        .unwrap()
        .config;
    let core = config.core(&["192.168.1.10".parse().unwrap()]);
    let nets: Vec<String> = core
        .node_port_addresses
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        nets,
        [
            "192.168.1.10/32",
            "127.0.0.1/32",
            "::1/128",
            "192.168.0.0/16"
        ]
    );
    let all = parse("nodePortAddresses: [all]\n")
        .unwrap()
        .config
        .core(&[]);
    assert!(all.is_node_port_address(&"203.0.113.9".parse().unwrap()));
    assert!(all.is_node_port_address(&"2001:db8::9".parse().unwrap()));
}

#[test]
fn primary_addresses_are_the_nodes_first_per_family_as_kube_proxy_picks_them() {
    let ips = |list: &[&str]| -> Vec<IpAddr> { list.iter().map(|a| a.parse().unwrap()).collect() };
    let plain = parse("nodePortAddresses: [primary]\n").unwrap().config;
    // The Node's InternalIPs, then ExternalIPs: the first of each family.
    assert_eq!(
        plain.primary_addresses(&ips(&[
            "fd00::10",
            "192.168.1.10",
            "192.168.1.11",
            "fd00::11"
        ])),
        ips(&["192.168.1.10", "fd00::10"])
    );
    // No Node (yet), or a loopback one: no primary address, and none is invented.
    assert!(plain.primary_addresses(&[]).is_empty());
    assert!(plain
        .primary_addresses(&ips(&["127.0.0.1", "::1"]))
        .is_empty());
    // bindAddress replaces the Node's address of its family only.
    let bound = parse("bindAddress: 172.16.0.10\nnodePortAddresses: [primary]\n")
        .unwrap()
        .config;
    assert_eq!(
        bound.primary_addresses(&ips(&["192.168.1.10", "fd00::10"])),
        ips(&["172.16.0.10", "fd00::10"])
    );
    // The core gets exactly those, as host routes.
    let core = plain.core(&plain.primary_addresses(&ips(&["192.168.1.10", "fd00::10"])));
    assert!(core.is_node_port_address(&"192.168.1.10".parse().unwrap()));
    assert!(!core.is_node_port_address(&"172.16.0.10".parse().unwrap()));
    assert!(core.is_node_port_address(&"fd00::10".parse().unwrap()));
    assert!(!core.is_node_port_address(&"fd00:172:16::10".parse().unwrap()));
}
