//! A scenario of the corpus (`tests/peer/scenarios/NAME/`):
//! - `cluster.yaml`: the cluster's Services, EndpointSlices and Nodes, as `kubectl`
//!   applies them (multi-document, or a `kind: List`). A `status` (a Node's addresses, a
//!   LoadBalancer's ingress) is written through the status subresource after the object
//!   is created, as the kubelet and cloud controllers do. Namespaces are created as
//!   needed.
//! - `config.yaml`: the KubeProxyConfiguration both proxies run with (`mode: ipvs`;
//!   `hostnameOverride` names the node; `clientConnection.kubeconfig` is filled in per
//!   proxy by the driver).
//! - `node.sh` (optional): shell run in the node's fresh network namespace before the
//!   proxy starts, for what the node needs beyond [`NODE_SETUP`] (more interfaces, a
//!   bridge).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// What every node namespace gets before the scenario's own `node.sh`: `lo` up and
/// `eth0` carrying the node's addresses [`NODE_IP`] and [`NODE_IP6`].
pub const NODE_SETUP: &str = "ip link set lo up
ip link add eth0 type dummy
ip addr add 192.168.1.10/24 dev eth0
ip -6 addr add fd00:192:168:1::10/64 dev eth0 nodad
ip link set eth0 up
";

/// The node's IPv4 address, on eth0 (scenarios' Nodes list it as InternalIP).
pub const NODE_IP: &str = "192.168.1.10";
/// The node's IPv6 address, on eth0.
pub const NODE_IP6: &str = "fd00:192:168:1::10";

/// One scenario, read from its directory.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The directory's name.
    pub name: String,
    /// The directory.
    pub dir: PathBuf,
    /// The objects of `cluster.yaml`, in order, as JSON.
    pub objects: Vec<Value>,
    /// `config.yaml`.
    pub config: serde_yaml::Value,
    /// `node.sh`, if any.
    pub node_script: Option<String>,
}

/// Why a scenario could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not the YAML it should be.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl Scenario {
    /// Reads the scenario in `dir`.
    ///
    /// # Errors
    /// A missing `cluster.yaml` or `config.yaml`, or one that is not YAML of objects.
    pub fn load(dir: &Path) -> Result<Scenario, ScenarioError> {
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read_to_string(&path).map_err(|source| ScenarioError::Read { path, source })
        };
        let invalid = |file: &str, reason: String| ScenarioError::Invalid {
            path: dir.join(file),
            reason,
        };
        let cluster = read("cluster.yaml")?;
        let objects = objects(&cluster).map_err(|e| invalid("cluster.yaml", e))?;
        let config: serde_yaml::Value = serde_yaml::from_str(&read("config.yaml")?)
            .map_err(|e| invalid("config.yaml", e.to_string()))?;
        if !config.is_mapping() {
            return Err(invalid("config.yaml", "not a mapping".into()));
        }
        let node_script = match std::fs::read_to_string(dir.join("node.sh")) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ScenarioError::Read {
                    path: dir.join("node.sh"),
                    source,
                })
            }
        };
        Ok(Scenario {
            name: dir
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            dir: dir.to_owned(),
            objects,
            config,
            node_script,
        })
    }

    /// Every scenario under `root` (each subdirectory), sorted by name.
    ///
    /// # Errors
    /// When `root` cannot be listed or a scenario cannot be read.
    pub fn load_all(root: &Path) -> Result<Vec<Scenario>, ScenarioError> {
        let entries = std::fs::read_dir(root).map_err(|source| ScenarioError::Read {
            path: root.to_owned(),
            source,
        })?;
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        dirs.iter().map(|d| Scenario::load(d)).collect()
    }

    /// The node's name: the config's `hostnameOverride`.
    pub fn node_name(&self) -> Option<&str> {
        self.config
            .get("hostnameOverride")
            .and_then(serde_yaml::Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Where to reach `/healthz` from inside the node: `healthzBindAddress` (kube-proxy's
    /// default `0.0.0.0:10256`) with an unspecified address made loopback. `None` when
    /// the config turns the server off (an empty address).
    pub fn healthz_address(&self) -> Option<String> {
        self.server_address("healthzBindAddress", "0.0.0.0:10256", 10256)
    }

    /// Where to reach `/metrics` from inside the node: `metricsBindAddress` (default
    /// `127.0.0.1:10249`), as [`Scenario::healthz_address`].
    pub fn metrics_address(&self) -> Option<String> {
        self.server_address("metricsBindAddress", "127.0.0.1:10249", 10249)
    }

    fn server_address(&self, field: &str, default: &str, port: u16) -> Option<String> {
        let value = match self.config.get(field) {
            None | Some(serde_yaml::Value::Null) => default.to_owned(),
            Some(v) => v.as_str()?.to_owned(),
        };
        connect_address(&value, port)
    }

    /// The healthCheckNodePorts of the scenario's Services (LoadBalancer Services with
    /// `externalTrafficPolicy: Local` that set one), sorted.
    pub fn health_check_node_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .objects
            .iter()
            .filter(|o| o["kind"] == "Service")
            .filter_map(|o| o["spec"]["healthCheckNodePort"].as_u64())
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The namespaces the scenario's namespaced objects live in.
    pub fn namespaces(&self) -> BTreeSet<String> {
        self.objects
            .iter()
            .filter(|o| o["kind"] != "Node" && o["kind"] != "Namespace")
            .map(|o| {
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_owned()
            })
            .collect()
    }

    /// The objects as they are created: without `status`.
    pub fn creatable(&self) -> Vec<Value> {
        self.objects
            .iter()
            .map(|o| {
                let mut o = o.clone();
                if let Some(fields) = o.as_object_mut() {
                    fields.remove("status");
                }
                o
            })
            .collect()
    }

    /// The statuses to write after creation through the status subresource: objects
    /// with only kind, name, namespace and `status`.
    pub fn statuses(&self) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|o| o.get("status").is_some_and(|s| !s.is_null()))
            .map(|o| {
                let mut metadata = serde_json::json!({"name": o["metadata"]["name"]});
                if let Some(ns) = o["metadata"].get("namespace") {
                    metadata["namespace"] = ns.clone();
                }
                serde_json::json!({
                    "apiVersion": o["apiVersion"],
                    "kind": o["kind"],
                    "metadata": metadata,
                    "status": o["status"],
                })
            })
            .collect()
    }

    /// `config.yaml` with `clientConnection.kubeconfig` set to `kubeconfig`, as YAML.
    pub fn config_with_kubeconfig(&self, kubeconfig: &Path) -> String {
        let mut config = self.config.clone();
        if let Some(map) = config.as_mapping_mut() {
            let connection = map
                .entry("clientConnection".into())
                .or_insert_with(|| serde_yaml::Value::Mapping(serde_yaml::Mapping::new()));
            if !connection.is_mapping() {
                *connection = serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
            }
            if let Some(connection) = connection.as_mapping_mut() {
                connection.insert("kubeconfig".into(), kubeconfig.display().to_string().into());
            }
        }
        serde_yaml::to_string(&config).unwrap_or_default()
    }
}

/// The address to connect to for a server bound to `bind` (`HOST:PORT`, or a bare host
/// that gets `port` as kube-proxy appends it): `0.0.0.0` becomes `127.0.0.1`, `::`
/// becomes `::1`. `None` for an empty address (the server is off).
pub fn connect_address(bind: &str, port: u16) -> Option<String> {
    let bind = bind.trim();
    if bind.is_empty() {
        return None;
    }
    let (host, port) = if let Ok(addr) = bind.parse::<std::net::SocketAddr>() {
        (addr.ip().to_string(), addr.port())
    } else if let Ok(ip) = bind.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        (ip.to_string(), port)
    } else {
        let (host, p) = bind.rsplit_once(':')?;
        (host.to_owned(), p.parse().ok()?)
    };
    let host = match host.as_str() {
        "0.0.0.0" | "" => "127.0.0.1".to_owned(),
        "::" => "::1".to_owned(),
        _ => host,
    };
    Some(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// The objects of a `cluster.yaml` text: every document, a `kind: List` expanded.
fn objects(text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).map_err(|e| e.to_string())?;
        match value {
            Value::Null => {}
            Value::Object(ref o) if o.get("kind").and_then(Value::as_str) == Some("List") => {
                let items = o
                    .get("items")
                    .and_then(Value::as_array)
                    .ok_or("a List without items")?;
                out.extend(items.iter().cloned());
            }
            Value::Object(_) => out.push(value),
            _ => return Err("a document that is not an object".into()),
        }
    }
    for (i, o) in out.iter().enumerate() {
        if o["kind"].as_str().is_none() || o["metadata"]["name"].as_str().is_none() {
            return Err(format!("object {} has no kind or metadata.name", i + 1));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(cluster: &str, config: &str) -> Scenario {
        Scenario {
            name: "t".into(),
            dir: PathBuf::from("/nonexistent"),
            objects: objects(cluster).unwrap(),
            config: serde_yaml::from_str(config).unwrap(),
            node_script: None,
        }
    }

    const CLUSTER: &str = "apiVersion: v1
kind: Node
metadata: {name: node-a}
status:
  addresses: [{type: InternalIP, address: 192.168.1.10}]
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: lb, namespace: shop}
  spec: {type: LoadBalancer, externalTrafficPolicy: Local, healthCheckNodePort: 32100, ports: [{port: 80}]}
  status: {loadBalancer: {ingress: [{ip: 203.0.113.10}]}}
- apiVersion: v1
  kind: Service
  metadata: {name: plain}
  spec: {ports: [{port: 80}]}
";

    #[test]
    fn objects_come_from_documents_and_lists_and_statuses_are_applied_apart() {
        let s = scenario(CLUSTER, "hostnameOverride: node-a\n");
        assert_eq!(s.objects.len(), 3);
        assert_eq!(s.node_name(), Some("node-a"));
        assert_eq!(s.health_check_node_ports(), [32100]);
        assert_eq!(
            s.namespaces().into_iter().collect::<Vec<_>>(),
            ["default", "shop"]
        );
        assert!(s.creatable().iter().all(|o| o.get("status").is_none()));
        let statuses = s.statuses();
        assert_eq!(statuses.len(), 2);
        assert_eq!(
            statuses[0],
            serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
                               "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"}]}})
        );
        assert_eq!(statuses[1]["metadata"]["namespace"], "shop");
        assert_eq!(
            statuses[1]["status"]["loadBalancer"]["ingress"][0]["ip"],
            "203.0.113.10"
        );
        assert!(objects("- 1\n").is_err());
        assert!(objects("kind: Service\nmetadata: {}\n").is_err());
    }

    #[test]
    fn server_addresses_follow_the_config_and_kube_proxys_defaults() {
        let s = scenario(CLUSTER, "hostnameOverride: node-a\n");
        assert_eq!(s.healthz_address().as_deref(), Some("127.0.0.1:10256"));
        assert_eq!(s.metrics_address().as_deref(), Some("127.0.0.1:10249"));
        let s = scenario(
            CLUSTER,
            "healthzBindAddress: 192.168.1.10\nmetricsBindAddress: '[::]:9100'\n",
        );
        assert_eq!(s.healthz_address().as_deref(), Some("192.168.1.10:10256"));
        assert_eq!(s.metrics_address().as_deref(), Some("[::1]:9100"));
        let s = scenario(CLUSTER, "healthzBindAddress: ''\n");
        assert_eq!(s.healthz_address(), None);
    }

    #[test]
    fn the_kubeconfig_is_set_per_proxy_and_the_rest_kept() {
        let s = scenario(
            CLUSTER,
            "mode: ipvs\nclientConnection: {qps: 7}\nipvs: {scheduler: lc}\n",
        );
        let text = s.config_with_kubeconfig(Path::new("/k/kipvs.kubeconfig"));
        let back: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(
            back["clientConnection"]["kubeconfig"],
            "/k/kipvs.kubeconfig"
        );
        assert_eq!(back["clientConnection"]["qps"], 7);
        assert_eq!(back["ipvs"]["scheduler"], "lc");
        assert_eq!(back["mode"], "ipvs");
    }
}
