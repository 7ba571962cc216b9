//! kube-proxy's `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`), field for
//! field, as the YAML in the kube-proxy ConfigMap spells it.
//!
//! Every field is optional, as in Go, where an absent or `null` field keeps its zero value
//! and defaulting happens afterwards ([`super::Config::from_schema`]). Unknown fields are
//! refused here (strict decoding); the loader then drops them with a warning, as
//! kube-proxy's lenient second pass does. Values are validated while they are read, so a bad one is reported with its
//! line and column.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use kipvs_ipvs::Scheduler;
use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::duration;

/// The whole configuration document.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeProxyConfiguration {
    /// Must be `kubeproxy.config.k8s.io/v1alpha1` when present.
    #[serde(default, deserialize_with = "api_version")]
    pub api_version: Option<String>,
    /// Must be `KubeProxyConfiguration` when present.
    #[serde(default, deserialize_with = "kind")]
    pub kind: Option<String>,
    /// Feature gates (none change kipvs' behaviour yet).
    #[serde(default)]
    pub feature_gates: Option<BTreeMap<String, bool>>,
    /// How to reach the API server.
    #[serde(default)]
    pub client_connection: Option<ClientConnection>,
    /// Log format and verbosity.
    #[serde(default)]
    pub logging: Option<Logging>,
    /// This node's name when it is not the hostname.
    #[serde(default)]
    pub hostname_override: Option<String>,
    /// The node's primary IP, overriding the Node object's; a comma-separated
    /// dual-stack pair gives one per family.
    #[serde(default, deserialize_with = "ip_list")]
    pub bind_address: Option<Vec<IpAddr>>,
    /// `ip:port` of the health server; a bare IP gets port 10256.
    #[serde(default, deserialize_with = "healthz_address")]
    pub healthz_bind_address: Option<SocketAddr>,
    /// `ip:port` of the metrics server; a bare IP gets port 10249.
    #[serde(default, deserialize_with = "metrics_address")]
    pub metrics_bind_address: Option<SocketAddr>,
    /// Exit when a server port cannot be bound.
    #[serde(default)]
    pub bind_address_hard_fail: Option<bool>,
    /// pprof handlers (not offered by kipvs).
    #[serde(default)]
    pub enable_profiling: Option<bool>,
    /// Hidden metrics version (not used by kipvs).
    #[serde(default)]
    pub show_hidden_metrics_for_version: Option<String>,
    /// Proxy mode: `ipvs` or empty.
    #[serde(default, deserialize_with = "mode")]
    pub mode: Option<String>,
    /// iptables settings; kipvs uses the masquerade ones.
    #[serde(default)]
    pub iptables: Option<Iptables>,
    /// IPVS settings.
    #[serde(default)]
    pub ipvs: Option<Ipvs>,
    /// nftables-mode settings (not used by kipvs).
    #[serde(default)]
    pub nftables: Option<Nftables>,
    /// Windows settings (not used by kipvs).
    #[serde(default)]
    pub winkernel: Option<Winkernel>,
    /// How traffic from pods on this node is recognised.
    #[serde(default)]
    pub detect_local_mode: Option<DetectLocalMode>,
    /// Settings of the bridge and interface-prefix local detection modes.
    #[serde(default)]
    pub detect_local: Option<DetectLocal>,
    /// Pod network(s), comma-separated for dual-stack.
    #[serde(default, rename = "clusterCIDR", deserialize_with = "cidr_list")]
    pub cluster_cidr: Option<Vec<IpNet>>,
    /// Where NodePorts are served: CIDRs and the keywords `primary`, `localhost`, `all`.
    #[serde(default)]
    pub node_port_addresses: Option<Vec<NodePortAddress>>,
    /// OOM score adjustment, -1000..=1000 (not applied by kipvs; set it in the pod spec).
    #[serde(default, deserialize_with = "oom_score_adj")]
    pub oom_score_adj: Option<i32>,
    /// Conntrack sysctls.
    #[serde(default)]
    pub conntrack: Option<Conntrack>,
    /// How often informers resync.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub config_sync_period: Option<Duration>,
    /// Unused since the userspace proxy went away; accepted for compatibility.
    #[serde(default)]
    pub port_range: Option<String>,
    /// Windows only.
    #[serde(default)]
    pub windows_run_as_service: Option<bool>,
}

/// `clientConnection`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientConnection {
    /// Path of a kubeconfig; empty means in-cluster configuration.
    #[serde(default)]
    pub kubeconfig: Option<String>,
    /// Accept header (not used: kipvs speaks JSON).
    #[serde(default)]
    pub accept_content_types: Option<String>,
    /// Content type (not used: kipvs speaks JSON).
    #[serde(default)]
    pub content_type: Option<String>,
    /// Client queries per second.
    #[serde(default)]
    pub qps: Option<f32>,
    /// Client burst.
    #[serde(default)]
    pub burst: Option<i32>,
}

/// `logging` (component-base's LoggingConfiguration).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Logging {
    /// `text` (default) or `json`.
    #[serde(default, deserialize_with = "log_format")]
    pub format: Option<String>,
    /// Flush frequency (kipvs writes logs unbuffered).
    #[serde(default)]
    pub flush_frequency: Option<serde_yaml::Value>,
    /// klog verbosity: 0 info, 2 more, 4 debug, 6+ trace.
    #[serde(default)]
    pub verbosity: Option<u32>,
    /// Per-module verbosity (not used).
    #[serde(default)]
    pub vmodule: Option<serde_yaml::Value>,
    /// Format options (not used).
    #[serde(default)]
    pub options: Option<serde_yaml::Value>,
}

/// `iptables`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Iptables {
    /// Bit of the packet mark flagging traffic for masquerade, 0..=31 (default 14).
    #[serde(default, deserialize_with = "masquerade_bit")]
    pub masquerade_bit: Option<u8>,
    /// Masquerade all traffic to Service IPs.
    #[serde(default)]
    pub masquerade_all: Option<bool>,
    /// iptables mode only.
    #[serde(default)]
    pub localhost_node_ports: Option<bool>,
    /// iptables mode only.
    #[serde(default, rename = "snatNodeInternalIP")]
    pub snat_node_internal_ip: Option<bool>,
    /// iptables mode only.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub sync_period: Option<Duration>,
    /// iptables mode only.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub min_sync_period: Option<Duration>,
}

/// `ipvs`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ipvs {
    /// Full verify-and-repair period (default 30s).
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub sync_period: Option<Duration>,
    /// Changes closer together than this are coalesced (default 0s).
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub min_sync_period: Option<Duration>,
    /// Default scheduler (default `rr`).
    #[serde(default, deserialize_with = "scheduler")]
    pub scheduler: Option<Scheduler>,
    /// Virtual services in these ranges are never touched.
    #[serde(default, rename = "excludeCIDRs", deserialize_with = "optional_cidrs")]
    pub exclude_cidrs: Option<Vec<IpNet>>,
    /// Set arp_ignore=1 and arp_announce=2.
    #[serde(default, rename = "strictARP")]
    pub strict_arp: Option<bool>,
    /// IPVS TCP timeout; 0 leaves the kernel's.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub tcp_timeout: Option<Duration>,
    /// IPVS TCP FIN timeout; 0 leaves the kernel's.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub tcp_fin_timeout: Option<Duration>,
    /// IPVS UDP timeout; 0 leaves the kernel's.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub udp_timeout: Option<Duration>,
}

/// `nftables` (nftables mode; accepted, not used).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Nftables {
    /// nftables mode only.
    #[serde(default)]
    pub masquerade_bit: Option<i32>,
    /// nftables mode only.
    #[serde(default)]
    pub masquerade_all: Option<bool>,
    /// nftables mode only.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub sync_period: Option<Duration>,
    /// nftables mode only.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub min_sync_period: Option<Duration>,
}

/// `winkernel` (Windows; accepted, not used).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Winkernel {
    /// Windows only.
    #[serde(default)]
    pub network_name: Option<String>,
    /// Windows only.
    #[serde(default)]
    pub source_vip: Option<String>,
    /// Windows only.
    #[serde(default, rename = "enableDSR")]
    pub enable_dsr: Option<bool>,
    /// Windows only.
    #[serde(default)]
    pub root_hns_endpoint_name: Option<String>,
    /// Windows only.
    #[serde(default)]
    pub forward_health_check_vip: Option<bool>,
}

/// `detectLocalMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DetectLocalMode {
    /// Local when the source is in `clusterCIDR` (the default).
    #[default]
    ClusterCidr,
    /// Local when the source is in this Node's `spec.podCIDRs`.
    NodeCidr,
    /// Local when the packet comes in through `detectLocal.bridgeInterface`.
    BridgeInterface,
    /// Local when the packet comes in through an interface named with
    /// `detectLocal.interfaceNamePrefix`.
    InterfaceNamePrefix,
}

impl<'de> Deserialize<'de> for DetectLocalMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "" | "ClusterCIDR" => Ok(DetectLocalMode::ClusterCidr),
            "NodeCIDR" => Ok(DetectLocalMode::NodeCidr),
            "BridgeInterface" => Ok(DetectLocalMode::BridgeInterface),
            "InterfaceNamePrefix" => Ok(DetectLocalMode::InterfaceNamePrefix),
            other => Err(de::Error::custom(format!(
                "unknown detectLocalMode {other:?}: expected ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix"
            ))),
        }
    }
}

/// `detectLocal`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DetectLocal {
    /// Bridge whose traffic is local.
    #[serde(default)]
    pub bridge_interface: Option<String>,
    /// Prefix of interfaces whose traffic is local.
    #[serde(default)]
    pub interface_name_prefix: Option<String>,
    /// Newer kube-proxy: explicit local CIDRs.
    #[serde(default, rename = "clusterCIDRs", deserialize_with = "optional_cidrs")]
    pub cluster_cidrs: Option<Vec<IpNet>>,
}

/// `conntrack`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Conntrack {
    /// Conntrack entries per CPU (0 leaves nf_conntrack_max as it is).
    #[serde(default, deserialize_with = "non_negative")]
    pub max_per_core: Option<u32>,
    /// Minimum conntrack table size.
    #[serde(default, deserialize_with = "non_negative")]
    pub min: Option<u32>,
    /// Established TCP timeout.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub tcp_established_timeout: Option<Duration>,
    /// CLOSE_WAIT timeout.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub tcp_close_wait_timeout: Option<Duration>,
    /// Liberal TCP window tracking.
    #[serde(default)]
    pub tcp_be_liberal: Option<bool>,
    /// Unreplied UDP timeout.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub udp_timeout: Option<Duration>,
    /// Assured UDP timeout.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub udp_stream_timeout: Option<Duration>,
}

/// One entry of `nodePortAddresses`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePortAddress {
    /// Node addresses within this range.
    Cidr(IpNet),
    /// The Node object's primary addresses.
    Primary,
    /// Loopback (127.0.0.0/8 and ::1).
    Localhost,
    /// Every address (0.0.0.0/0 and ::/0).
    All,
}

impl FromStr for NodePortAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "primary" => Ok(NodePortAddress::Primary),
            "localhost" => Ok(NodePortAddress::Localhost),
            "all" => Ok(NodePortAddress::All),
            cidr => cidr.parse().map(NodePortAddress::Cidr).map_err(|_| {
                format!("{cidr:?} is neither a CIDR nor one of primary, localhost, all")
            }),
        }
    }
}

impl<'de> Deserialize<'de> for NodePortAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

fn parse_with<'de, D, T, E, F>(d: D, parse: F) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(&str) -> Result<T, E>,
    E: fmt::Display,
{
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => parse(&s).map(Some).map_err(de::Error::custom),
    }
}

fn api_version<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    parse_with(d, |s| match s {
        "kubeproxy.config.k8s.io/v1alpha1" => Ok(s.to_owned()),
        other => Err(format!(
            "unsupported apiVersion {other:?}: expected kubeproxy.config.k8s.io/v1alpha1"
        )),
    })
}

fn kind<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    parse_with(d, |s| match s {
        "KubeProxyConfiguration" => Ok(s.to_owned()),
        other => Err(format!(
            "unsupported kind {other:?}: expected KubeProxyConfiguration"
        )),
    })
}

fn mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    parse_with(d, |s| {
        match s {
        "ipvs" => Ok(s.to_owned()),
        other => Err(format!(
            "mode {other:?} is not supported: kipvs is an IPVS proxy, set mode to \"ipvs\" (or leave it empty)"
        )),
    }
    })
}

fn log_format<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    parse_with(d, |s| match s {
        "text" | "json" => Ok(s.to_owned()),
        other => Err(format!(
            "unknown log format {other:?}: expected text or json"
        )),
    })
}

/// The schedulers kube-proxy's validation accepts for `ipvs.scheduler` (empty means rr).
pub const KUBE_PROXY_SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq",
];

/// `ipvs.scheduler`, checked as kube-proxy checks it: one of [`KUBE_PROXY_SCHEDULERS`].
/// The kernel's other schedulers (mh, fo, ovf) are refused here, as kube-proxy refuses
/// them, so a ConfigMap both proxies read never stops kube-proxy; kipvs offers them per
/// Service through annotations.
pub fn kube_proxy_scheduler(s: &str) -> Result<Scheduler, String> {
    if KUBE_PROXY_SCHEDULERS.contains(&s) {
        return Scheduler::from_str(s).map_err(|e| e.to_string());
    }
    let hint = if Scheduler::from_str(s).is_ok_and(|sched| Scheduler::KNOWN.contains(&sched)) {
        format!(
            "; kube-proxy refuses {s} here too: set it per Service with the \
             ipvs.kipvs.io/scheduler annotation"
        )
    } else {
        String::new()
    };
    Err(format!(
        "unknown scheduler {s:?}: must be one of {} (empty means rr){hint}",
        KUBE_PROXY_SCHEDULERS.join(", ")
    ))
}

fn scheduler<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Scheduler>, D::Error> {
    parse_with(d, kube_proxy_scheduler)
}

/// A comma-separated list of one IP, or two of different families (kube-proxy's
/// `bindAddress`).
pub fn parse_ip_list(s: &str) -> Result<Vec<IpAddr>, String> {
    let ips = s
        .split(',')
        .map(|part| {
            let part = part.trim();
            part.parse::<IpAddr>()
                .map_err(|_| format!("{part:?} is not an IP address"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    match ips.as_slice() {
        [_] => Ok(ips),
        [a, b] if a.is_ipv4() != b.is_ipv4() => Ok(ips),
        _ => Err(format!(
            "{s:?}: expected one IP address, or an IPv4 and an IPv6 address separated by a comma"
        )),
    }
}

fn ip_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<IpAddr>>, D::Error> {
    parse_with(d, parse_ip_list)
}

/// `ip:port`, or a bare IP to which `default_port` is added (kube-proxy's
/// `AppendPortIfNeeded`): `0.0.0.0` is `0.0.0.0:10249`, `::` is `[::]:10249`.
pub fn parse_bind_address(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    s.parse::<SocketAddr>().map_err(|_| {
        format!("{s:?} is not an IP address with an optional port (e.g. 0.0.0.0:{default_port})")
    })
}

fn healthz_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    parse_with(d, |s| parse_bind_address(s, HEALTHZ_PORT))
}

fn metrics_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    parse_with(d, |s| parse_bind_address(s, METRICS_PORT))
}

/// kube-proxy's health port.
pub const HEALTHZ_PORT: u16 = 10256;
/// kube-proxy's metrics port.
pub const METRICS_PORT: u16 = 10249;

fn cidr_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<IpNet>>, D::Error> {
    parse_with(d, |s| {
        s.split(',')
            .map(|part| {
                let part = part.trim();
                part.parse::<IpNet>()
                    .map_err(|_| format!("{part:?} is not a CIDR (e.g. 10.244.0.0/16)"))
            })
            .collect::<Result<Vec<_>, _>>()
    })
}

fn optional_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<IpNet>>, D::Error> {
    let Some(items) = Option::<Vec<String>>::deserialize(d)? else {
        return Ok(None);
    };
    items
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .map_err(|_| de::Error::custom(format!("{s:?} is not a CIDR (e.g. 10.0.0.0/8)")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn masquerade_bit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    match Option::<i64>::deserialize(d)? {
        None => Ok(None),
        Some(bit) => u8::try_from(bit)
            .ok()
            .filter(|b| *b <= 31)
            .map(Some)
            .ok_or_else(|| {
                de::Error::custom(format!("masqueradeBit {bit} is out of range 0..=31"))
            }),
    }
}

fn non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match Option::<i64>::deserialize(d)? {
        None => Ok(None),
        Some(v) => u32::try_from(v)
            .map(Some)
            .map_err(|_| de::Error::custom(format!("{v} must be within 0..={}", u32::MAX))),
    }
}

fn oom_score_adj<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    match Option::<i64>::deserialize(d)? {
        None => Ok(None),
        Some(v) => i32::try_from(v)
            .ok()
            .filter(|v| (-1000..=1000).contains(v))
            .map(Some)
            .ok_or_else(|| {
                de::Error::custom(format!("oomScoreAdj {v} is out of range -1000..=1000"))
            }),
    }
}
