//! kube-proxy's command-line flags, with kube-proxy's meaning and precedence
//! (`cmd/kube-proxy/app/options.go`):
//!
//! - Without `--config`, the flags are the configuration: each sets its field of
//!   `KubeProxyConfiguration`, the rest keep kube-proxy's defaults.
//! - With `--config`, the file is the configuration and kube-proxy ignores every flag
//!   that maps onto one of its fields, `--kubeconfig` included, except
//!   `--hostname-override` and the logging flags (`--v`), which override the file.
//!   kipvs does the same, and says which flags it ignored (kube-proxy is silent).
//! - `--master` (overrides the kubeconfig's server), `--cleanup` and `--version` act with
//!   or without a file.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ipnet::IpNet;
use kipvs_ipvs::Scheduler;

use super::schema::{self, NodePortAddress};
use super::{duration, Config, ConfigError, Loaded};

/// kube-proxy's flags that matter in ipvs mode, as `kube-proxy` spells them. Boolean
/// flags take `--flag` or `--flag=true|false`, as Go's flag package reads them.
#[derive(Debug, Clone, Default, Args)]
pub struct KubeProxyFlags {
    /// Proxy mode: only `ipvs` (or empty). Ignored with --config.
    #[arg(long, value_name = "MODE", value_parser = proxy_mode)]
    pub proxy_mode: Option<String>,
    /// Default IPVS scheduler (kube-proxy's list). Ignored with --config.
    #[arg(long, value_name = "NAME", value_parser = schema::kube_proxy_scheduler)]
    pub ipvs_scheduler: Option<Scheduler>,
    /// ipvs.syncPeriod (e.g. 30s). Ignored with --config.
    #[arg(long, value_name = "DURATION", value_parser = go_duration)]
    pub ipvs_sync_period: Option<Duration>,
    /// ipvs.minSyncPeriod. Ignored with --config.
    #[arg(long, value_name = "DURATION", value_parser = go_duration)]
    pub ipvs_min_sync_period: Option<Duration>,
    /// ipvs.excludeCIDRs, comma-separated (repeatable). Ignored with --config.
    #[arg(long, value_name = "CIDRS", value_delimiter = ',', value_parser = cidr)]
    pub ipvs_exclude_cidrs: Vec<IpNet>,
    /// ipvs.strictARP. Ignored with --config.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub ipvs_strict_arp: Option<bool>,
    /// ipvs.tcpTimeout. Ignored with --config.
    #[arg(long, value_name = "DURATION", value_parser = go_duration)]
    pub ipvs_tcp_timeout: Option<Duration>,
    /// ipvs.tcpFinTimeout. Ignored with --config.
    #[arg(long, value_name = "DURATION", value_parser = go_duration)]
    pub ipvs_tcpfin_timeout: Option<Duration>,
    /// ipvs.udpTimeout. Ignored with --config.
    #[arg(long, value_name = "DURATION", value_parser = go_duration)]
    pub ipvs_udp_timeout: Option<Duration>,
    /// clusterCIDR: one CIDR or an IPv4,IPv6 pair. Ignored with --config.
    #[arg(long, value_name = "CIDRS", value_parser = cidr_pair)]
    pub cluster_cidr: Option<CidrList>,
    /// iptables.masqueradeAll. Ignored with --config.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub masquerade_all: Option<bool>,
    /// nodePortAddresses, comma-separated CIDRs or `primary` (repeatable). Ignored
    /// with --config.
    #[arg(long = "nodeport-addresses", value_name = "CIDRS", value_delimiter = ',', value_parser = node_port_address)]
    pub nodeport_addresses: Vec<NodePortAddress>,
    /// metricsBindAddress, IP[:port] (port 10249 by default). Ignored with --config.
    #[arg(long, value_name = "ADDRESS", value_parser = metrics_address)]
    pub metrics_bind_address: Option<SocketAddr>,
    /// healthzBindAddress, IP[:port] (port 10256 by default). Ignored with --config.
    #[arg(long, value_name = "ADDRESS", value_parser = healthz_address)]
    pub healthz_bind_address: Option<SocketAddr>,
    /// bindAddress: the node's primary IP (or an IPv4,IPv6 pair). Ignored with --config.
    #[arg(long, value_name = "IP", value_parser = ip_list)]
    pub bind_address: Option<IpList>,
    /// conntrack.maxPerCore (0 leaves nf_conntrack_max). Ignored with --config.
    #[arg(long, value_name = "N")]
    pub conntrack_max_per_core: Option<u32>,
    /// conntrack.min. Ignored with --config.
    #[arg(long, value_name = "N")]
    pub conntrack_min: Option<u32>,
    /// conntrack.tcpEstablishedTimeout. Ignored with --config.
    #[arg(long, value_name = "DURATION", value_parser = go_duration)]
    pub conntrack_tcp_timeout_established: Option<Duration>,
    /// conntrack.tcpCloseWaitTimeout. Ignored with --config.
    #[arg(long, value_name = "DURATION", value_parser = go_duration)]
    pub conntrack_tcp_timeout_close_wait: Option<Duration>,
    /// conntrack.tcpBeLiberal. Ignored with --config.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub conntrack_tcp_be_liberal: Option<bool>,
    /// conntrack.udpTimeout. Ignored with --config.
    #[arg(long, value_name = "DURATION", value_parser = go_duration)]
    pub conntrack_udp_timeout: Option<Duration>,
    /// conntrack.udpStreamTimeout. Ignored with --config.
    #[arg(long, value_name = "DURATION", value_parser = go_duration)]
    pub conntrack_udp_timeout_stream: Option<Duration>,
    /// featureGates, `Name=true,Other=false` (accepted; none changes kipvs). Ignored
    /// with --config.
    #[arg(long, value_name = "GATES", value_parser = feature_gates)]
    pub feature_gates: Option<FeatureGates>,
    /// Log verbosity (logging.verbosity); overrides the file.
    #[arg(short = 'v', long = "v", value_name = "LEVEL")]
    pub verbosity: Option<u32>,
    /// The API server's address, overriding the kubeconfig's server (with or without
    /// --config).
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,
}

/// A comma-separated list of CIDRs given as one flag value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrList(pub Vec<IpNet>);

/// A comma-separated list of IPs given as one flag value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpList(pub Vec<IpAddr>);

/// `--feature-gates`: gate names and their values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureGates(pub BTreeMap<String, bool>);

fn proxy_mode(s: &str) -> Result<String, String> {
    match s {
        "" | "ipvs" => Ok(s.to_owned()),
        other => Err(format!(
            "{other:?} is not supported: kipvs is an IPVS proxy, use ipvs"
        )),
    }
}

fn go_duration(s: &str) -> Result<Duration, String> {
    duration::parse_go_duration(s).map_err(|e| e.to_string())
}

fn cidr(s: &str) -> Result<IpNet, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a CIDR (e.g. 10.0.0.0/8)"))
}

fn cidr_pair(s: &str) -> Result<CidrList, String> {
    let cidrs = s.split(',').map(cidr).collect::<Result<Vec<_>, _>>()?;
    match cidrs.as_slice() {
        [_] => Ok(CidrList(cidrs)),
        [a, b] if a.addr().is_ipv4() != b.addr().is_ipv4() => Ok(CidrList(cidrs)),
        _ => Err("expected one CIDR, or an IPv4 and an IPv6 CIDR separated by a comma".into()),
    }
}

fn node_port_address(s: &str) -> Result<NodePortAddress, String> {
    s.trim().parse()
}

fn metrics_address(s: &str) -> Result<SocketAddr, String> {
    schema::parse_bind_address(s, schema::METRICS_PORT)
}

fn healthz_address(s: &str) -> Result<SocketAddr, String> {
    schema::parse_bind_address(s, schema::HEALTHZ_PORT)
}

fn ip_list(s: &str) -> Result<IpList, String> {
    schema::parse_ip_list(s).map(IpList)
}

fn feature_gates(s: &str) -> Result<FeatureGates, String> {
    let mut gates = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?}: expected Name=true or Name=false"))?;
        let value = value
            .trim()
            .parse::<bool>()
            .map_err(|_| format!("{pair:?}: expected Name=true or Name=false"))?;
        gates.insert(name.trim().to_owned(), value);
    }
    Ok(FeatureGates(gates))
}

/// Everything the command line says about the configuration.
#[derive(Debug, Clone, Default)]
pub struct CommandLine {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--hostname-override`.
    pub hostname_override: Option<String>,
    /// The other kube-proxy flags.
    pub flags: KubeProxyFlags,
}

impl KubeProxyFlags {
    /// The flags given that map onto a configuration field, with that field: those
    /// kube-proxy ignores when a file is given.
    fn given_fields(&self, kubeconfig: bool) -> Vec<(&'static str, &'static str)> {
        let mut given = Vec::new();
        let mut note = |set: bool, flag, field| {
            if set {
                given.push((flag, field));
            }
        };
        note(self.proxy_mode.is_some(), "--proxy-mode", "mode");
        note(kubeconfig, "--kubeconfig", "clientConnection.kubeconfig");
        note(
            self.ipvs_scheduler.is_some(),
            "--ipvs-scheduler",
            "ipvs.scheduler",
        );
        note(
            self.ipvs_sync_period.is_some(),
            "--ipvs-sync-period",
            "ipvs.syncPeriod",
        );
        note(
            self.ipvs_min_sync_period.is_some(),
            "--ipvs-min-sync-period",
            "ipvs.minSyncPeriod",
        );
        note(
            !self.ipvs_exclude_cidrs.is_empty(),
            "--ipvs-exclude-cidrs",
            "ipvs.excludeCIDRs",
        );
        note(
            self.ipvs_strict_arp.is_some(),
            "--ipvs-strict-arp",
            "ipvs.strictARP",
        );
        note(
            self.ipvs_tcp_timeout.is_some(),
            "--ipvs-tcp-timeout",
            "ipvs.tcpTimeout",
        );
        note(
            self.ipvs_tcpfin_timeout.is_some(),
            "--ipvs-tcpfin-timeout",
            "ipvs.tcpFinTimeout",
        );
        note(
            self.ipvs_udp_timeout.is_some(),
            "--ipvs-udp-timeout",
            "ipvs.udpTimeout",
        );
        note(self.cluster_cidr.is_some(), "--cluster-cidr", "clusterCIDR");
        note(
            self.masquerade_all.is_some(),
            "--masquerade-all",
            "iptables.masqueradeAll",
        );
        note(
            !self.nodeport_addresses.is_empty(),
            "--nodeport-addresses",
            "nodePortAddresses",
        );
        note(
            self.metrics_bind_address.is_some(),
            "--metrics-bind-address",
            "metricsBindAddress",
        );
        note(
            self.healthz_bind_address.is_some(),
            "--healthz-bind-address",
            "healthzBindAddress",
        );
        note(self.bind_address.is_some(), "--bind-address", "bindAddress");
        note(
            self.conntrack_max_per_core.is_some(),
            "--conntrack-max-per-core",
            "conntrack.maxPerCore",
        );
        note(
            self.conntrack_min.is_some(),
            "--conntrack-min",
            "conntrack.min",
        );
        note(
            self.conntrack_tcp_timeout_established.is_some(),
            "--conntrack-tcp-timeout-established",
            "conntrack.tcpEstablishedTimeout",
        );
        note(
            self.conntrack_tcp_timeout_close_wait.is_some(),
            "--conntrack-tcp-timeout-close-wait",
            "conntrack.tcpCloseWaitTimeout",
        );
        note(
            self.conntrack_tcp_be_liberal.is_some(),
            "--conntrack-tcp-be-liberal",
            "conntrack.tcpBeLiberal",
        );
        note(
            self.conntrack_udp_timeout.is_some(),
            "--conntrack-udp-timeout",
            "conntrack.udpTimeout",
        );
        note(
            self.conntrack_udp_timeout_stream.is_some(),
            "--conntrack-udp-timeout-stream",
            "conntrack.udpStreamTimeout",
        );
        note(
            self.feature_gates.is_some(),
            "--feature-gates",
            "featureGates",
        );
        given
    }

    /// The configuration these flags describe on their own (no file): kube-proxy's
    /// defaults with each given flag's field set.
    fn to_schema(&self, kubeconfig: Option<&PathBuf>) -> schema::KubeProxyConfiguration {
        let mut raw = schema::KubeProxyConfiguration {
            mode: self.proxy_mode.clone().filter(|m| !m.is_empty()),
            feature_gates: self.feature_gates.clone().map(|g| g.0),
            bind_address: self.bind_address.clone().map(|b| b.0),
            healthz_bind_address: self.healthz_bind_address,
            metrics_bind_address: self.metrics_bind_address,
            cluster_cidr: self.cluster_cidr.clone().map(|c| c.0),
            node_port_addresses: (!self.nodeport_addresses.is_empty())
                .then(|| self.nodeport_addresses.clone()),
            ..schema::KubeProxyConfiguration::default()
        };
        raw.client_connection = kubeconfig.map(|path| schema::ClientConnection {
            kubeconfig: Some(path.display().to_string()),
            ..schema::ClientConnection::default()
        });
        raw.ipvs = Some(schema::Ipvs {
            sync_period: self.ipvs_sync_period,
            min_sync_period: self.ipvs_min_sync_period,
            scheduler: self.ipvs_scheduler.clone(),
            exclude_cidrs: (!self.ipvs_exclude_cidrs.is_empty())
                .then(|| self.ipvs_exclude_cidrs.clone()),
            strict_arp: self.ipvs_strict_arp,
            tcp_timeout: self.ipvs_tcp_timeout,
            tcp_fin_timeout: self.ipvs_tcpfin_timeout,
            udp_timeout: self.ipvs_udp_timeout,
        });
        raw.iptables = Some(schema::Iptables {
            masquerade_all: self.masquerade_all,
            ..schema::Iptables::default()
        });
        raw.conntrack = Some(schema::Conntrack {
            max_per_core: self.conntrack_max_per_core,
            min: self.conntrack_min,
            tcp_established_timeout: self.conntrack_tcp_timeout_established,
            tcp_close_wait_timeout: self.conntrack_tcp_timeout_close_wait,
            tcp_be_liberal: self.conntrack_tcp_be_liberal,
            udp_timeout: self.conntrack_udp_timeout,
            udp_stream_timeout: self.conntrack_udp_timeout_stream,
        });
        raw
    }
}

/// The configuration the command line resolves to, as kube-proxy resolves it, with a
/// warning for each flag ignored because a file was given.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The settings, with what the file says that kipvs ignores.
    pub loaded: Loaded,
    /// One line per flag ignored in favour of the file.
    pub ignored_flags: Vec<String>,
    /// `--master`.
    pub master: Option<String>,
}

impl Resolved {
    /// Logs the ignored flags and what the file says that kipvs ignores; call it once
    /// logging is set up.
    pub fn log(&self) {
        for line in &self.ignored_flags {
            tracing::warn!("{line}");
        }
        self.loaded.log();
    }
}

impl CommandLine {
    /// Resolves the configuration: the file when given (flags that kube-proxy ignores
    /// then are listed in [`Resolved::ignored_flags`]), else the flags over kube-proxy's
    /// defaults; `--hostname-override` and `--v` override either.
    ///
    /// Fails on a bad file (file:line:column: field), an empty `--hostname-override`,
    /// or flags that contradict each other (`--ipvs-min-sync-period` above
    /// `--ipvs-sync-period`).
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        let mut ignored_flags = Vec::new();
        let mut loaded = match &self.config {
            Some(path) => {
                let loaded = Config::load(path)?;
                for (flag, field) in self.flags.given_fields(self.kubeconfig.is_some()) {
                    ignored_flags.push(format!(
                        "{flag} is ignored because --config is given (kube-proxy ignores it \
                         too): set {field} in {}",
                        path.display()
                    ));
                }
                loaded
            }
            None => {
                let raw = self.flags.to_schema(self.kubeconfig.as_ref());
                let config = Config::from_schema(raw);
                config
                    .validate("", "command line")
                    .map_err(|err| flag_error(&err))?;
                Loaded {
                    config,
                    ..Loaded::defaults()
                }
            }
        };
        if let Some(name) = &self.hostname_override {
            let name = name.trim();
            if name.is_empty() {
                return Err(ConfigError::Flag(
                    "--hostname-override: an empty name is invalid".to_owned(),
                ));
            }
            loaded.config.hostname_override = Some(name.to_lowercase());
        }
        if let Some(verbosity) = self.flags.verbosity {
            loaded.config.verbosity = verbosity;
        }
        Ok(Resolved {
            loaded,
            ignored_flags,
            master: self.flags.master.clone().filter(|m| !m.is_empty()),
        })
    }
}

/// A cross-field rule broken by flags, named by the flag.
fn flag_error(err: &ConfigError) -> ConfigError {
    let ConfigError::Invalid { field, message, .. } = err else {
        return ConfigError::Flag(err.to_string());
    };
    let flag = match field.as_str() {
        "ipvs.minSyncPeriod" => "--ipvs-min-sync-period",
        "clusterCIDR" => "--cluster-cidr",
        other => other,
    };
    ConfigError::Flag(format!("{flag}: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Argv {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        #[arg(long)]
        hostname_override: Option<String>,
        #[command(flatten)]
        flags: KubeProxyFlags,
    }

    fn command_line(args: &[&str]) -> CommandLine {
        let argv = Argv::try_parse_from(std::iter::once("kipvs").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        CommandLine {
            config: argv.config,
            kubeconfig: argv.kubeconfig,
            hostname_override: argv.hostname_override,
            flags: argv.flags,
        }
    }

    fn refused(args: &[&str]) -> String {
        Argv::try_parse_from(std::iter::once("kipvs").chain(args.iter().copied()))
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn without_a_file_the_flags_are_the_configuration() {
        let resolved = command_line(&[
            "--proxy-mode=ipvs",
            "--ipvs-scheduler=lc",
            "--ipvs-sync-period=1m",
            "--ipvs-min-sync-period",
            "2s",
            "--ipvs-exclude-cidrs=10.0.0.0/8,192.168.0.0/16",
            "--ipvs-strict-arp",
            "--ipvs-tcp-timeout=900s",
            "--ipvs-tcpfin-timeout=30s",
            "--ipvs-udp-timeout=10s",
            "--cluster-cidr=10.244.0.0/16,fd00::/48",
            "--masquerade-all=true",
            "--nodeport-addresses=primary,192.168.0.0/16",
            "--metrics-bind-address=0.0.0.0",
            "--healthz-bind-address=127.0.0.1:9000",
            "--bind-address=192.168.1.10",
            "--conntrack-max-per-core=0",
            "--conntrack-min=1000",
            "--conntrack-tcp-timeout-established=2h",
            "--conntrack-tcp-timeout-close-wait=30m",
            "--conntrack-tcp-be-liberal",
            "--conntrack-udp-timeout=45s",
            "--conntrack-udp-timeout-stream=3m",
            "--feature-gates=TopologyAwareHints=true,Other=false",
            "--kubeconfig=/etc/kube/proxy.conf",
            "--hostname-override= Node-A ",
            "--v=4",
            "--master=https://10.0.0.1:6443",
        ])
        .resolve()
        .unwrap();
        assert!(resolved.ignored_flags.is_empty());
        assert_eq!(resolved.master.as_deref(), Some("https://10.0.0.1:6443"));
        let c = resolved.loaded.config;
        assert_eq!(c.ipvs.scheduler, Scheduler::LeastConnection);
        assert_eq!(c.ipvs.sync_period, Duration::from_secs(60));
        assert_eq!(c.ipvs.min_sync_period, Duration::from_secs(2));
        assert_eq!(c.ipvs.exclude_cidrs.len(), 2);
        assert!(c.ipvs.strict_arp);
        assert_eq!(c.ipvs.tcp_timeout, Duration::from_secs(900));
        assert_eq!(c.ipvs.tcp_fin_timeout, Duration::from_secs(30));
        assert_eq!(c.ipvs.udp_timeout, Duration::from_secs(10));
        assert_eq!(c.cluster_cidrs.len(), 2);
        assert!(c.masquerade_all);
        assert_eq!(
            c.node_port_addresses,
            vec![
                NodePortAddress::Primary,
                NodePortAddress::Cidr("192.168.0.0/16".parse().unwrap())
            ]
        );
        assert_eq!(c.metrics_bind_address, "0.0.0.0:10249".parse().unwrap());
        assert_eq!(c.healthz_bind_address, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(
            c.bind_address,
            vec!["192.168.1.10".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(c.conntrack.max_per_core, 0);
        assert_eq!(c.conntrack.min, 1000);
        assert_eq!(
            c.conntrack.tcp_established_timeout,
            Duration::from_secs(7200)
        );
        assert_eq!(
            c.conntrack.tcp_close_wait_timeout,
            Duration::from_secs(1800)
        );
        assert!(c.conntrack.tcp_be_liberal);
        assert_eq!(c.conntrack.udp_timeout, Duration::from_secs(45));
        assert_eq!(c.conntrack.udp_stream_timeout, Duration::from_secs(180));
        assert_eq!(c.feature_gates.get("TopologyAwareHints"), Some(&true));
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/etc/kube/proxy.conf")));
        assert_eq!(c.hostname_override.as_deref(), Some("node-a"));
        assert_eq!(c.verbosity, 4);
    }

    #[test]
    fn no_flags_and_no_file_give_kube_proxys_defaults() {
        let resolved = command_line(&[]).resolve().unwrap();
        assert_eq!(resolved.loaded.config, Config::default());
    }

    #[test]
    fn with_a_file_only_hostname_override_verbosity_and_master_apply() {
        let dir = std::env::temp_dir().join(format!("kipvs-flags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.yaml");
        std::fs::write(
            &file,
            "mode: ipvs\nhostnameOverride: from-file\nipvs: {scheduler: wrr}\nlogging: {verbosity: 1}\n",
        )
        .unwrap();
        let file_arg = format!("--config={}", file.display());
        let resolved = command_line(&[
            &file_arg,
            "--ipvs-scheduler=lc",
            "--masquerade-all",
            "--kubeconfig=/elsewhere",
            "--hostname-override=node-b",
            "-v=5",
            "--master=http://127.0.0.1:8080",
        ])
        .resolve()
        .unwrap();
        let c = &resolved.loaded.config;
        assert_eq!(
            c.ipvs.scheduler,
            Scheduler::WeightedRoundRobin,
            "the file's"
        );
        assert!(!c.masquerade_all);
        assert_eq!(c.kubeconfig, None, "--kubeconfig is ignored with --config");
        assert_eq!(c.hostname_override.as_deref(), Some("node-b"));
        assert_eq!(c.verbosity, 5);
        assert_eq!(resolved.master.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(
            resolved.ignored_flags,
            [
                format!(
                    "--kubeconfig is ignored because --config is given (kube-proxy ignores it \
                     too): set clientConnection.kubeconfig in {}",
                    file.display()
                ),
                format!(
                    "--ipvs-scheduler is ignored because --config is given (kube-proxy ignores \
                     it too): set ipvs.scheduler in {}",
                    file.display()
                ),
                format!(
                    "--masquerade-all is ignored because --config is given (kube-proxy ignores \
                     it too): set iptables.masqueradeAll in {}",
                    file.display()
                ),
            ]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_flag_values_are_refused_naming_the_flag() {
        for (args, flag) in [
            (vec!["--proxy-mode=iptables"], "--proxy-mode"),
            (vec!["--ipvs-scheduler=roundrobin"], "--ipvs-scheduler"),
            (vec!["--ipvs-sync-period=30"], "--ipvs-sync-period"),
            (
                vec!["--cluster-cidr=10.0.0.0/8,10.1.0.0/16"],
                "--cluster-cidr",
            ),
            (
                vec!["--metrics-bind-address=localhost"],
                "--metrics-bind-address",
            ),
            (vec!["--feature-gates=A"], "--feature-gates"),
            (vec!["--masquerade-all=maybe"], "--masquerade-all"),
            (vec!["--conntrack-min=-1"], "--conntrack-min"),
        ] {
            let message = refused(&args);
            assert!(message.contains(flag), "{args:?}: {message}");
        }
        let err = command_line(&["--ipvs-sync-period=10s", "--ipvs-min-sync-period=1m"])
            .resolve()
            .unwrap_err();
        assert!(
            err.to_string().starts_with("--ipvs-min-sync-period: "),
            "{err}"
        );
        let err = command_line(&["--hostname-override=  "])
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains("--hostname-override"), "{err}");
    }
}
