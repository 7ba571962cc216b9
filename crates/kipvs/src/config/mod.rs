//! kipvs' configuration: kube-proxy's `KubeProxyConfiguration` file, read unchanged, with
//! kube-proxy's defaults, resolved into the settings kipvs runs with.
//!
//! A bad file (a wrong type, an invalid value) refuses to start kipvs with a message
//! naming the file, line, column and field; a field kube-proxy does not know is dropped
//! with a warning naming the same, as kube-proxy drops it. Fields kube-proxy knows but kipvs does not use are accepted and reported once
//! ([`Loaded::unused_fields`]), so a kube-proxy ConfigMap works as it is.

pub mod duration;
pub mod flags;
pub mod schema;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
pub use kipvs_host::conntrack::ConntrackConfig;
use kipvs_ipvs::Scheduler;

pub use schema::{DetectLocalMode, NodePortAddress};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A field is unknown, of the wrong type or has a bad value.
    #[error("{origin}:{line}:{column}: {field}: {message}")]
    Invalid {
        /// The file (or `<inline>`).
        origin: String,
        /// 1-based line, 0 when unknown.
        line: usize,
        /// 1-based column, 0 when unknown.
        column: usize,
        /// Dotted path of the field (`ipvs.scheduler`), or `.` for the document.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A command-line flag is invalid or contradicts another.
    #[error("{0}")]
    Flag(String),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// How kipvs recognises traffic from this node's pods (which is not masqueraded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalDetection {
    /// Source address within these CIDRs; none configured means "masquerade nothing
    /// on this basis", as kube-proxy does with an empty clusterCIDR.
    ClusterCidrs(Vec<IpNet>),
    /// Source within the Node's `spec.podCIDRs`.
    NodeCidr,
    /// Arriving through this bridge.
    BridgeInterface(String),
    /// Arriving through an interface whose name starts with this prefix.
    InterfaceNamePrefix(String),
}

/// IPVS settings after defaulting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsSettings {
    /// Verify-and-repair period.
    pub sync_period: Duration,
    /// Coalescing window for changes.
    pub min_sync_period: Duration,
    /// Default scheduler.
    pub scheduler: Scheduler,
    /// Ranges whose virtual services kipvs never touches.
    pub exclude_cidrs: Vec<IpNet>,
    /// arp_ignore/arp_announce.
    pub strict_arp: bool,
    /// IPVS TCP timeout (zero: leave the kernel's).
    pub tcp_timeout: Duration,
    /// IPVS TCP FIN timeout (zero: leave the kernel's).
    pub tcp_fin_timeout: Duration,
    /// IPVS UDP timeout (zero: leave the kernel's).
    pub udp_timeout: Duration,
}

impl IpvsSettings {
    /// The connection timeouts to set in the kernel, in whole seconds as kube-proxy
    /// passes them; `None` when all three are zero (the kernel's stay). A zero field
    /// leaves that timeout unchanged, which is what IPVS does with a zero.
    pub fn timeouts(&self) -> Option<kipvs_ipvs::Timeouts> {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let timeouts = kipvs_ipvs::Timeouts {
            tcp: secs(self.tcp_timeout),
            tcp_fin: secs(self.tcp_fin_timeout),
            udp: secs(self.udp_timeout),
        };
        (timeouts != kipvs_ipvs::Timeouts::default()).then_some(timeouts)
    }
}

/// The settings kipvs runs with: kube-proxy's configuration after defaulting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// kubeconfig path; `None` means in-cluster configuration.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name, when not the hostname.
    pub hostname_override: Option<String>,
    /// The node's primary IPs (one per family), when they override the Node object's.
    pub bind_address: Vec<IpAddr>,
    /// Health server address.
    pub healthz_bind_address: SocketAddr,
    /// Metrics server address.
    pub metrics_bind_address: SocketAddr,
    /// Exit when a server cannot bind its port.
    pub bind_address_hard_fail: bool,
    /// Local traffic detection.
    pub local_detection: LocalDetection,
    /// Pod network(s).
    pub cluster_cidrs: Vec<IpNet>,
    /// Where NodePorts are served; empty means every local address.
    pub node_port_addresses: Vec<NodePortAddress>,
    /// Masquerade all Service traffic.
    pub masquerade_all: bool,
    /// Bit of the packet mark that flags traffic for masquerade.
    pub masquerade_bit: u8,
    /// IPVS settings.
    pub ipvs: IpvsSettings,
    /// Log format.
    pub log_format: LogFormat,
    /// klog-style verbosity.
    pub verbosity: u32,
    /// Feature gates as given.
    pub feature_gates: BTreeMap<String, bool>,
    /// The `conntrack` section, applied at start as kube-proxy applies it.
    pub conntrack: ConntrackConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config::from_schema(schema::KubeProxyConfiguration::default())
    }
}

/// A configuration file, read and resolved.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The settings.
    pub config: Config,
    /// Fields set in the file that kipvs accepts but does not use (dotted paths), to be
    /// logged once at start.
    pub unused_fields: Vec<String>,
    /// Fields kube-proxy does not know, ignored with a warning as kube-proxy ignores
    /// them (see [`UnknownField`]).
    pub unknown_fields: Vec<UnknownField>,
}

impl Loaded {
    /// kube-proxy's defaults, as when no file is given.
    pub fn defaults() -> Loaded {
        Loaded {
            config: Config::default(),
            unused_fields: Vec::new(),
            unknown_fields: Vec::new(),
        }
    }

    /// Logs, once, what the file says that kipvs ignores: unknown fields as warnings,
    /// known fields kipvs does not act on as information. Call it after logging is set up.
    pub fn log(&self) {
        for unknown in &self.unknown_fields {
            tracing::warn!("{unknown}");
        }
        for field in &self.unused_fields {
            tracing::info!(field = %field, "configuration field is accepted but not used by kipvs");
        }
    }
}

/// A field kube-proxy's configuration does not have (`conntrack.max`, `udpIdleTimeout`
/// and others left in ConfigMaps written for older releases). kube-proxy decodes its file
/// strictly first and, when only unknown fields stand in the way, again leniently,
/// dropping them with a warning; kipvs does the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    /// The file (or `<inline>`).
    pub origin: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// Dotted path of the field (`conntrack.max`).
    pub field: String,
}

impl std::fmt::Display for UnknownField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: unknown field, ignored (as kube-proxy ignores it)",
            self.origin, self.line, self.column, self.field
        )
    }
}

/// Fields kube-proxy knows that kipvs accepts without acting on them.
const UNUSED_FIELDS: &[&str] = &[
    "featureGates",
    "clientConnection.acceptContentTypes",
    "clientConnection.contentType",
    "clientConnection.qps",
    "clientConnection.burst",
    "logging.flushFrequency",
    "logging.vmodule",
    "logging.options",
    "enableProfiling",
    "showHiddenMetricsForVersion",
    "iptables.localhostNodePorts",
    "iptables.snatNodeInternalIP",
    "iptables.syncPeriod",
    "iptables.minSyncPeriod",
    "nftables",
    "winkernel",
    "oomScoreAdj",
    "configSyncPeriod",
    "portRange",
    "windowsRunAsService",
];

impl Config {
    /// Reads and resolves a configuration file.
    ///
    /// Fails when the file cannot be read, is not YAML, has an unknown field, a value of
    /// the wrong type or an invalid value (the error names file, line, column and field).
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and resolves configuration text; `origin` names it in errors.
    ///
    /// Fails as [`Config::load`] does.
    pub fn parse(text: &str, origin: &str) -> Result<Loaded, ConfigError> {
        let (raw, unknown_fields) = decode(text, origin)?;
        let config = Config::from_schema(raw);
        config.validate(text, origin)?;
        let unused_fields = set_fields(text)
            .into_iter()
            .filter(|path| {
                UNUSED_FIELDS
                    .iter()
                    .any(|unused| path == unused || path.starts_with(&format!("{unused}.")))
            })
            .collect();
        Ok(Loaded {
            config,
            unused_fields,
            unknown_fields,
        })
    }

    /// Applies kube-proxy's defaults to what the file says.
    fn from_schema(raw: schema::KubeProxyConfiguration) -> Config {
        let ipvs = raw.ipvs.unwrap_or_default();
        let iptables = raw.iptables.unwrap_or_default();
        let logging = raw.logging.unwrap_or_default();
        let detect_local = raw.detect_local.unwrap_or_default();
        let cluster_cidrs = raw.cluster_cidr.unwrap_or_default();
        let non_zero = |d: Option<Duration>| d.filter(|d| !d.is_zero());
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let local_detection = match raw.detect_local_mode.unwrap_or_default() {
            DetectLocalMode::ClusterCidr => LocalDetection::ClusterCidrs(
                detect_local
                    .cluster_cidrs
                    .filter(|c| !c.is_empty())
                    .unwrap_or_else(|| cluster_cidrs.clone()),
            ),
            DetectLocalMode::NodeCidr => LocalDetection::NodeCidr,
            DetectLocalMode::BridgeInterface => {
                LocalDetection::BridgeInterface(detect_local.bridge_interface.unwrap_or_default())
            }
            DetectLocalMode::InterfaceNamePrefix => LocalDetection::InterfaceNamePrefix(
                detect_local.interface_name_prefix.unwrap_or_default(),
            ),
        };
        let bind_address = raw.bind_address.unwrap_or_default();
        let ipv6_bind = bind_address.first().is_some_and(IpAddr::is_ipv6);
        let default_addr =
            |v4: IpAddr, v6: IpAddr, port| SocketAddr::new(if ipv6_bind { v6 } else { v4 }, port);
        Config {
            kubeconfig: raw
                .client_connection
                .and_then(|c| non_empty(c.kubeconfig))
                .map(PathBuf::from),
            hostname_override: non_empty(raw.hostname_override),
            bind_address: bind_address
                .into_iter()
                .filter(|a| !a.is_unspecified())
                .collect(),
            healthz_bind_address: raw.healthz_bind_address.unwrap_or_else(|| {
                default_addr(
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                    schema::HEALTHZ_PORT,
                )
            }),
            metrics_bind_address: raw.metrics_bind_address.unwrap_or_else(|| {
                default_addr(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                    schema::METRICS_PORT,
                )
            }),
            bind_address_hard_fail: raw.bind_address_hard_fail.unwrap_or(false),
            local_detection,
            cluster_cidrs,
            node_port_addresses: raw.node_port_addresses.unwrap_or_default(),
            masquerade_all: iptables.masquerade_all.unwrap_or(false),
            masquerade_bit: iptables.masquerade_bit.unwrap_or(14),
            ipvs: IpvsSettings {
                sync_period: non_zero(ipvs.sync_period).unwrap_or(Duration::from_secs(30)),
                min_sync_period: ipvs.min_sync_period.unwrap_or(Duration::ZERO),
                scheduler: ipvs.scheduler.unwrap_or(Scheduler::RoundRobin),
                exclude_cidrs: ipvs.exclude_cidrs.unwrap_or_default(),
                strict_arp: ipvs.strict_arp.unwrap_or(false),
                tcp_timeout: ipvs.tcp_timeout.unwrap_or(Duration::ZERO),
                tcp_fin_timeout: ipvs.tcp_fin_timeout.unwrap_or(Duration::ZERO),
                udp_timeout: ipvs.udp_timeout.unwrap_or(Duration::ZERO),
            },
            log_format: match logging.format.as_deref() {
                Some("json") => LogFormat::Json,
                _ => LogFormat::Text,
            },
            verbosity: logging.verbosity.unwrap_or(0),
            feature_gates: raw.feature_gates.unwrap_or_default(),
            conntrack: {
                let given = raw.conntrack.unwrap_or_default();
                let defaults = ConntrackConfig::default();
                ConntrackConfig {
                    max_per_core: given.max_per_core.unwrap_or(defaults.max_per_core),
                    min: given.min.unwrap_or(defaults.min),
                    tcp_established_timeout: given
                        .tcp_established_timeout
                        .unwrap_or(defaults.tcp_established_timeout),
                    tcp_close_wait_timeout: given
                        .tcp_close_wait_timeout
                        .unwrap_or(defaults.tcp_close_wait_timeout),
                    tcp_be_liberal: given.tcp_be_liberal.unwrap_or(defaults.tcp_be_liberal),
                    udp_timeout: given.udp_timeout.unwrap_or(defaults.udp_timeout),
                    udp_stream_timeout: given
                        .udp_stream_timeout
                        .unwrap_or(defaults.udp_stream_timeout),
                }
            },
        }
    }

    /// The node's primary addresses, which the `primary` keyword of nodePortAddresses
    /// stands for, as kube-proxy 1.37 determines them (`detectNodeIPs` and
    /// `expandNodePortAddressKeywords` in cmd/kube-proxy/app/server.go): the first of the
    /// Node object's addresses of each family (`node_addresses`: its InternalIPs, then its
    /// ExternalIPs), a bindAddress replacing the one of its family, and a family left
    /// without one (loopback in kube-proxy) left out. At most one address per family,
    /// IPv4 first.
    pub fn primary_addresses(&self, node_addresses: &[IpAddr]) -> Vec<IpAddr> {
        let pick = |v4: bool| {
            let of_family = |a: &&IpAddr| a.is_ipv4() == v4;
            self.bind_address
                .iter()
                .find(of_family)
                .or_else(|| node_addresses.iter().find(of_family))
                .filter(|a| !a.is_loopback() && !a.is_unspecified())
                .copied()
        };
        [pick(true), pick(false)].into_iter().flatten().collect()
    }

    /// The core's configuration. `primary` are the node's primary addresses
    /// ([`Config::primary_addresses`]), which the `primary` keyword of nodePortAddresses
    /// stands for.
    pub fn core(&self, primary: &[IpAddr]) -> kipvs_proxy::Config {
        let host = |addr: &IpAddr| IpNet::from(*addr);
        let node_port_addresses = self
            .node_port_addresses
            .iter()
            .flat_map(|entry| -> Vec<IpNet> {
                match entry {
                    NodePortAddress::Cidr(net) => vec![*net],
                    NodePortAddress::All => vec![
                        IpNet::V4(ipnet::Ipv4Net::default()),
                        IpNet::V6(ipnet::Ipv6Net::default()),
                    ],
                    NodePortAddress::Localhost => vec![
                        IpNet::from(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                        IpNet::from(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
                    ],
                    NodePortAddress::Primary => primary.iter().map(host).collect(),
                }
            })
            .collect();
        kipvs_proxy::Config {
            scheduler: self.ipvs.scheduler.clone(),
            exclude_cidrs: self.ipvs.exclude_cidrs.clone(),
            node_port_addresses,
            masquerade_all: self.masquerade_all,
            masquerade_bit: self.masquerade_bit,
            cluster_cidrs: self.cluster_cidrs.clone(),
            ..kipvs_proxy::Config::default()
        }
    }

    /// Checks rules that span fields, as kube-proxy's validation does.
    fn validate(&self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| {
            let (line, column) = locate(text, field);
            ConfigError::Invalid {
                origin: origin.to_owned(),
                line,
                column,
                field: field.to_owned(),
                message,
            }
        };
        if self.ipvs.min_sync_period > self.ipvs.sync_period {
            return Err(invalid(
                "ipvs.minSyncPeriod",
                format!(
                    "must not exceed ipvs.syncPeriod ({})",
                    duration::format_go_duration(self.ipvs.sync_period)
                ),
            ));
        }
        if self.cluster_cidrs.len() > 2
            || (self.cluster_cidrs.len() == 2
                && self.cluster_cidrs[0].addr().is_ipv4() == self.cluster_cidrs[1].addr().is_ipv4())
        {
            return Err(invalid(
                "clusterCIDR",
                "expected one CIDR, or an IPv4 and an IPv6 CIDR separated by a comma".to_owned(),
            ));
        }
        match &self.local_detection {
            LocalDetection::BridgeInterface(name) if name.is_empty() => Err(invalid(
                "detectLocal.bridgeInterface",
                "must be set when detectLocalMode is BridgeInterface".to_owned(),
            )),
            LocalDetection::InterfaceNamePrefix(prefix) if prefix.is_empty() => Err(invalid(
                "detectLocal.interfaceNamePrefix",
                "must be set when detectLocalMode is InterfaceNamePrefix".to_owned(),
            )),
            _ => Ok(()),
        }
    }
}

/// Reads the document as kube-proxy does: strictly, then, when only fields it does not
/// know stand in the way, without them (each is returned, to be warned about). Wrong
/// types and invalid values are refused either way.
fn decode(
    text: &str,
    origin: &str,
) -> Result<(schema::KubeProxyConfiguration, Vec<UnknownField>), ConfigError> {
    type DecodeError = serde_path_to_error::Error<serde_yaml::Error>;
    let refuse = |err: DecodeError| {
        let field = err.path().to_string();
        let inner = err.into_inner();
        // serde_yaml places errors raised while reading a value at the start of the
        // enclosing mapping; the field's own line is more useful.
        let (line, column) = match locate(text, &field) {
            (0, _) => inner
                .location()
                .map_or((0, 0), |loc| (loc.line(), loc.column())),
            found => found,
        };
        ConfigError::Invalid {
            origin: origin.to_owned(),
            line,
            column,
            field,
            message: strip_location(&inner.to_string()),
        }
    };
    // The path of the unknown field an error is about, if that is what it is about.
    let unknown = |err: &DecodeError| -> Option<String> {
        let message = err.inner().to_string();
        // serde_yaml puts the path of a nested field before the message.
        let (_, rest) = message.split_once("unknown field `")?;
        let name = rest.split('`').next()?;
        let path = err.path().to_string();
        Some(if path == "." {
            name.to_owned()
        } else if path == name || path.ends_with(&format!(".{name}")) {
            path
        } else {
            format!("{path}.{name}")
        })
    };
    if text.trim().is_empty() {
        return Ok((schema::KubeProxyConfiguration::default(), Vec::new()));
    }
    let strict = serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text));
    match strict {
        Ok(raw) => return Ok((raw, Vec::new())),
        Err(err) if unknown(&err).is_none() => return Err(refuse(err)),
        Err(_) => {}
    }
    let mut value: serde_yaml::Value =
        serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
            .map_err(refuse)?;
    let mut dropped = Vec::new();
    loop {
        match serde_path_to_error::deserialize(value.clone()) {
            Ok(raw) => {
                dropped.sort_by_key(|f: &UnknownField| (f.line, f.column));
                return Ok((raw, dropped));
            }
            Err(err) => {
                let Some(path) = unknown(&err) else {
                    return Err(refuse(err));
                };
                if !remove_path(&mut value, &path) {
                    return Err(refuse(err));
                }
                let (line, column) = locate(text, &path);
                dropped.push(UnknownField {
                    origin: origin.to_owned(),
                    line,
                    column,
                    field: path,
                });
            }
        }
    }
}

/// Removes the mapping entry at the dotted `path` from `value`; false when there is none.
fn remove_path(value: &mut serde_yaml::Value, path: &str) -> bool {
    let mut current = value;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let Some(map) = current.as_mapping_mut() else {
            return false;
        };
        if parts.peek().is_none() {
            return map.remove(part).is_some();
        }
        let Some(next) = map.get_mut(part) else {
            return false;
        };
        current = next;
    }
    false
}

/// serde_yaml appends " at line L column C" to messages; the error names them already.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Dotted paths of every field that has a value other than null, false, zero, empty or
/// `0s`: what the user actually set.
fn set_fields(text: &str) -> Vec<String> {
    fn walk(prefix: &str, value: &serde_yaml::Value, out: &mut Vec<String>) {
        use serde_yaml::Value;
        match value {
            Value::Mapping(map) => {
                for (key, value) in map {
                    let Some(key) = key.as_str() else { continue };
                    let path = if prefix.is_empty() {
                        key.to_owned()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&path, value, out);
                }
            }
            Value::Null | Value::Bool(false) => {}
            Value::Number(n) if n.as_f64() == Some(0.0) => {}
            Value::String(s) if s.is_empty() || s == "0s" || s == "0" => {}
            Value::Sequence(items) if items.is_empty() => {}
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut out = Vec::new();
    if let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(text) {
        walk("", &value, &mut out);
    }
    out
}

/// The 1-based line and column where the dotted `field` (`ipvs.scheduler`, or
/// `nodePortAddresses[1]`, located at its key) is written in block-style YAML; `(0, 0)`
/// when it is not found. serde cannot place errors found after reading a value.
fn locate(text: &str, field: &str) -> (usize, usize) {
    let wanted: Vec<&str> = field
        .split('.')
        .map(|part| part.split('[').next().unwrap_or(part))
        .collect();
    let mut stack: Vec<(usize, &str)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key.trim().trim_matches('"')));
        if stack.len() == wanted.len() && stack.iter().map(|(_, k)| *k).eq(wanted.iter().copied()) {
            return (index + 1, indent + 1);
        }
    }
    (0, 0)
}

#[cfg(test)]
mod tests;
