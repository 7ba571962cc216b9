//! From Kubernetes API objects (k8s-openapi) to the core's loose `Raw*` inputs.
//!
//! Copying only: every check happens in the core's `try_new`, once, so a value is judged
//! the same way whether it came from the API server or a state file.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kipvs_proxy::{
    RawEndpoint, RawEndpointPort, RawEndpointSlice, RawIngress, RawService, RawServicePort,
};

/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The taint the cluster autoscaler sets on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

fn map(m: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    m.cloned().unwrap_or_default()
}

/// A Service as the core takes it.
pub fn service(svc: &Service) -> RawService {
    let meta = &svc.metadata;
    let spec = svc.spec.as_ref();
    let cluster_ips = match spec.and_then(|s| s.cluster_ips.as_ref()) {
        Some(ips) if !ips.is_empty() => ips.clone(),
        _ => spec
            .and_then(|s| s.cluster_ip.clone())
            .into_iter()
            .collect(),
    };
    RawService {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        labels: map(meta.labels.as_ref()),
        annotations: map(meta.annotations.as_ref()),
        service_type: spec.and_then(|s| s.type_.clone()),
        cluster_ips,
        ports: spec
            .and_then(|s| s.ports.as_ref())
            .map(|ports| {
                ports
                    .iter()
                    .map(|p| RawServicePort {
                        name: p.name.clone(),
                        protocol: p.protocol.clone(),
                        port: p.port,
                        node_port: p.node_port,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        external_ips: spec
            .and_then(|s| s.external_ips.clone())
            .unwrap_or_default(),
        load_balancer_ingress: svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|ingress| {
                ingress
                    .iter()
                    .map(|i| RawIngress {
                        ip: i.ip.clone(),
                        ip_mode: i.ip_mode.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        load_balancer_source_ranges: spec
            .and_then(|s| s.load_balancer_source_ranges.clone())
            .unwrap_or_default(),
        session_affinity: spec.and_then(|s| s.session_affinity.clone()),
        session_affinity_timeout: spec
            .and_then(|s| s.session_affinity_config.as_ref())
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds),
        external_traffic_policy: spec.and_then(|s| s.external_traffic_policy.clone()),
        internal_traffic_policy: spec.and_then(|s| s.internal_traffic_policy.clone()),
        health_check_node_port: spec.and_then(|s| s.health_check_node_port),
        traffic_distribution: spec.and_then(|s| s.traffic_distribution.clone()),
    }
}

/// An EndpointSlice as the core takes it.
pub fn endpoint_slice(slice: &EndpointSlice) -> RawEndpointSlice {
    let meta = &slice.metadata;
    RawEndpointSlice {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        service_name: meta
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned(),
        address_type: slice.address_type.clone(),
        endpoints: slice
            .endpoints
            .iter()
            .flatten()
            .map(|e| {
                let conditions = e.conditions.as_ref();
                let hints = e.hints.as_ref();
                RawEndpoint {
                    addresses: e.addresses.clone(),
                    ready: conditions.and_then(|c| c.ready),
                    serving: conditions.and_then(|c| c.serving),
                    terminating: conditions.and_then(|c| c.terminating),
                    node_name: e.node_name.clone(),
                    zone: e.zone.clone(),
                    zone_hints: hints
                        .and_then(|h| h.for_zones.as_ref())
                        .map(|z| z.iter().map(|z| z.name.clone()).collect())
                        .unwrap_or_default(),
                    node_hints: hints
                        .and_then(|h| h.for_nodes.as_ref())
                        .map(|n| n.iter().map(|n| n.name.clone()).collect())
                        .unwrap_or_default(),
                }
            })
            .collect(),
        ports: slice
            .ports
            .as_ref()
            .map(|ports| {
                ports
                    .iter()
                    .map(|p| RawEndpointPort {
                        name: p.name.clone(),
                        protocol: p.protocol.clone(),
                        port: p.port,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// What kipvs takes from its own Node object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// `metadata.name`.
    pub name: String,
    /// Label `topology.kubernetes.io/zone`.
    pub zone: Option<String>,
    /// `status.addresses` that parse as IPs: those of type InternalIP, then those of type
    /// ExternalIP, each in order (kube-proxy's `GetNodeHostIPs` order, whose first per
    /// family are the node's primary IPs). The core's node has the machine's local
    /// addresses instead, but in `kipvs plan`, which has no machine to read.
    pub addresses: Vec<IpAddr>,
    /// False while the node is being deleted or is tainted for deletion by the cluster
    /// autoscaler: `/healthz` then fails so load balancers drain the node.
    pub eligible: bool,
    /// `spec.podCIDRs` (else `spec.podCIDR`), those that parse: the pod ranges of this
    /// node, for `detectLocalMode: NodeCIDR`.
    pub pod_cidrs: Vec<ipnet::IpNet>,
}

/// The annotation the EndpointSlice controller sets to when the change the slice carries
/// was triggered (a Pod or Service change), for the network programming latency.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The slice's `endpoints.kubernetes.io/last-change-trigger-time`, when it has one that
/// parses as an RFC 3339 time (kube-proxy's `getLastChangeTriggerTime`; a bad value is
/// ignored as kube-proxy ignores it).
pub fn last_change_trigger_time(slice: &EndpointSlice) -> Option<std::time::SystemTime> {
    let value = slice
        .metadata
        .annotations
        .as_ref()?
        .get(LAST_CHANGE_TRIGGER_TIME)?;
    let time: k8s_openapi::jiff::Timestamp = value.parse().ok()?;
    Some(time.into())
}

/// This node's facts as kipvs needs them.
pub fn node(node: &Node) -> NodeInfo {
    let meta = &node.metadata;
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    NodeInfo {
        name: meta.name.clone().unwrap_or_default(),
        zone: meta
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL))
            .cloned(),
        addresses: node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(|addrs| {
                ["InternalIP", "ExternalIP"]
                    .iter()
                    .flat_map(|kind| addrs.iter().filter(move |a| a.type_ == *kind))
                    .filter_map(|a| a.address.parse().ok())
                    .collect()
            })
            .unwrap_or_default(),
        eligible: meta.deletion_timestamp.is_none() && !tainted,
        pod_cidrs: pod_cidrs(node),
    }
}

/// The node's pod CIDRs: `spec.podCIDRs`, or `spec.podCIDR` when the list is absent or
/// empty (older clusters); entries that do not parse are left out.
fn pod_cidrs(node: &Node) -> Vec<ipnet::IpNet> {
    let Some(spec) = node.spec.as_ref() else {
        return Vec::new();
    };
    let listed: Vec<&String> = match spec.pod_cidrs.as_deref() {
        Some(list) if !list.is_empty() => list.iter().collect(),
        _ => spec.pod_cidr.iter().collect(),
    };
    listed.iter().filter_map(|c| c.parse().ok()).collect()
}

impl NodeInfo {
    /// The core's view of the node, with the given local addresses.
    pub fn to_core(&self, addresses: impl IntoIterator<Item = IpAddr>) -> kipvs_proxy::Node {
        let node = kipvs_proxy::Node::new(self.name.clone())
            .with_addresses(addresses)
            .with_pod_cidrs(self.pod_cidrs.iter().copied());
        match &self.zone {
            Some(zone) => node.with_zone(zone.clone()),
            None => node,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_file;

    fn example() -> state_file::ClusterState {
        state_file::parse(
            include_str!("../../../examples/cluster.yaml"),
            "cluster.yaml",
        )
        .unwrap()
    }

    #[test]
    fn services_convert_with_every_field_the_core_reads() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata:
  name: lb
  namespace: shop
  labels: {app: lb}
  annotations: {ipvs.kipvs.io/scheduler: sh}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.9
  clusterIPs: [10.96.0.9, "fd00::9"]
  ports: [{name: http, protocol: TCP, port: 80, nodePort: 30080}]
  externalIPs: [203.0.113.5]
  loadBalancerSourceRanges: [198.51.100.0/24]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  externalTrafficPolicy: Local
  internalTrafficPolicy: Cluster
  healthCheckNodePort: 32000
  trafficDistribution: PreferClose
status:
  loadBalancer:
    ingress: [{ip: 192.0.2.7, ipMode: Proxy}, {hostname: lb.example}]
"#;
        let svc: Service = serde_yaml::from_str(yaml).unwrap();
        let raw = service(&svc);
        assert_eq!(raw.namespace, "shop");
        assert_eq!(raw.name, "lb");
        assert_eq!(raw.labels["app"], "lb");
        assert_eq!(raw.annotations["ipvs.kipvs.io/scheduler"], "sh");
        assert_eq!(raw.service_type.as_deref(), Some("LoadBalancer"));
        assert_eq!(raw.cluster_ips, vec!["10.96.0.9", "fd00::9"]);
        assert_eq!(
            raw.ports,
            vec![RawServicePort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port: 80,
                node_port: Some(30080)
            }]
        );
        assert_eq!(raw.external_ips, vec!["203.0.113.5"]);
        assert_eq!(raw.load_balancer_source_ranges, vec!["198.51.100.0/24"]);
        assert_eq!(raw.session_affinity.as_deref(), Some("ClientIP"));
        assert_eq!(raw.session_affinity_timeout, Some(600));
        assert_eq!(raw.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(raw.internal_traffic_policy.as_deref(), Some("Cluster"));
        assert_eq!(raw.health_check_node_port, Some(32000));
        assert_eq!(raw.traffic_distribution.as_deref(), Some("PreferClose"));
        assert_eq!(
            raw.load_balancer_ingress,
            vec![
                RawIngress {
                    ip: Some("192.0.2.7".into()),
                    ip_mode: Some("Proxy".into())
                },
                RawIngress {
                    ip: None,
                    ip_mode: None
                },
            ]
        );
    }

    #[test]
    fn a_service_without_cluster_ips_list_uses_cluster_ip() {
        let svc: Service =
            serde_yaml::from_str("metadata: {name: a}\nspec: {clusterIP: 10.96.0.3}\n").unwrap();
        assert_eq!(service(&svc).cluster_ips, vec!["10.96.0.3"]);
    }

    #[test]
    fn endpoint_slices_convert_with_conditions_and_hints() {
        let yaml = r#"
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: node-a
  zone: zone-a
  hints: {forZones: [{name: zone-a}], forNodes: [{name: node-a}]}
- addresses: [10.244.2.7]
ports: [{name: http, protocol: TCP, port: 8080}, {}]
"#;
        let slice: EndpointSlice = serde_yaml::from_str(yaml).unwrap();
        let raw = endpoint_slice(&slice);
        assert_eq!(raw.service_name.as_deref(), Some("web"));
        assert_eq!(raw.address_type, "IPv4");
        assert_eq!(
            raw.endpoints[0],
            RawEndpoint {
                addresses: vec!["10.244.1.5".into()],
                ready: Some(false),
                serving: Some(true),
                terminating: Some(true),
                node_name: Some("node-a".into()),
                zone: Some("zone-a".into()),
                zone_hints: vec!["zone-a".into()],
                node_hints: vec!["node-a".into()],
            }
        );
        assert_eq!(
            raw.endpoints[1].ready, None,
            "absent conditions stay absent"
        );
        assert_eq!(raw.ports[1], RawEndpointPort::default());
    }

    #[test]
    fn nodes_give_name_zone_addresses_and_eligibility() {
        let info = node(&example().nodes[0]);
        assert_eq!(info.name, "node-a");
        assert_eq!(info.zone.as_deref(), Some("zone-a"));
        assert_eq!(
            info.addresses,
            vec!["192.168.1.10".parse::<IpAddr>().unwrap()]
        );
        assert!(info.eligible);
        let tainted: Node = serde_yaml::from_str(
            "metadata: {name: n}\nspec: {taints: [{key: ToBeDeletedByClusterAutoscaler, effect: NoSchedule}]}\n",
        )
        .unwrap();
        assert!(!node(&tainted).eligible);
        let deleting: Node = serde_yaml::from_str(
            "metadata: {name: n, deletionTimestamp: \"2026-01-01T00:00:00Z\"}\n",
        )
        .unwrap();
        assert!(!node(&deleting).eligible);
    }

    #[test]
    fn the_trigger_time_annotation_is_read_when_it_parses() {
        let with = |value: &str| -> EndpointSlice {
            serde_yaml::from_str(&format!(
                "metadata: {{name: s, annotations: {{{LAST_CHANGE_TRIGGER_TIME}: \"{value}\"}}}}\naddressType: IPv4\nendpoints: []\n"
            ))
            .unwrap()
        };
        let expected = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_979_200_250);
        assert_eq!(
            last_change_trigger_time(&with("2025-12-06T00:00:00.25Z")),
            Some(expected)
        );
        assert_eq!(last_change_trigger_time(&with("yesterday")), None);
        let without: EndpointSlice =
            serde_yaml::from_str("metadata: {name: s}\naddressType: IPv4\nendpoints: []\n")
                .unwrap();
        assert_eq!(last_change_trigger_time(&without), None);
    }

    #[test]
    fn node_addresses_list_internal_ips_before_external_ips() {
        let mixed: Node = serde_yaml::from_str(
            "metadata: {name: n}\nstatus: {addresses: [\
             {type: ExternalIP, address: 203.0.113.5}, {type: Hostname, address: n}, \
             {type: InternalIP, address: \"fd00::10\"}, {type: InternalIP, address: bad}, \
             {type: InternalIP, address: 192.168.1.10}]}\n",
        )
        .unwrap();
        let expected: Vec<IpAddr> = ["fd00::10", "192.168.1.10", "203.0.113.5"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(node(&mixed).addresses, expected);
    }

    #[test]
    fn pod_cidrs_come_from_the_list_else_the_single_field() {
        let dual: Node = serde_yaml::from_str(
            "metadata: {name: n}\nspec: {podCIDR: 10.244.9.0/24, podCIDRs: [10.244.1.0/24, \"fd00:1::/64\", bad]}\n",
        )
        .unwrap();
        let expected: Vec<ipnet::IpNet> = vec![
            "10.244.1.0/24".parse().unwrap(),
            "fd00:1::/64".parse().unwrap(),
        ];
        assert_eq!(node(&dual).pod_cidrs, expected);
        let old: Node =
            serde_yaml::from_str("metadata: {name: n}\nspec: {podCIDR: 10.244.9.0/24}\n").unwrap();
        let expected: Vec<ipnet::IpNet> = vec!["10.244.9.0/24".parse().unwrap()];
        assert_eq!(node(&old).pod_cidrs, expected);
        assert_eq!(node(&old).to_core([]).pod_cidrs, expected);
        assert!(node(&example().nodes[0]).pod_cidrs.is_empty());
    }

    #[test]
    fn the_example_cluster_validates_in_the_core_without_warnings() {
        let state = example();
        for svc in &state.services {
            let core = kipvs_proxy::Service::try_new(service(svc)).unwrap();
            assert!(core.warnings.is_empty(), "{:?}", core.warnings);
        }
        for slice in &state.endpoint_slices {
            let core = kipvs_proxy::EndpointSlice::try_new(endpoint_slice(slice)).unwrap();
            assert!(core.warnings.is_empty(), "{:?}", core.warnings);
        }
    }
}
