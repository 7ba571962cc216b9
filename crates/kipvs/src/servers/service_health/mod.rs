//! healthCheckNodePort servers, as kube-proxy's `healthcheck.ServiceHealthServer` runs
//! them: one HTTP server per LoadBalancer Service with `externalTrafficPolicy: Local`
//! and a `healthCheckNodePort`, answering any path with the Service's ready endpoints on
//! this node, so a cloud load balancer sends traffic only to nodes that have some.
//!
//! This module decides, without I/O: which servers should run on which addresses with
//! which counts ([`wanted`]), what to open and close to get there ([`changes`]), and
//! what a server answers ([`answer`]). [`listeners`] opens and closes the sockets.

pub mod listeners;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use kipvs_proxy::{Config, Node, Proxier, ServiceName};

use super::health::HealthAnswer;

/// The Event reason kube-proxy records on a Service whose health check port cannot be
/// opened.
pub const FAILED_TO_START: &str = "FailedToStartServiceHealthcheck";

/// Where every health check server listens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Listen {
    /// Every address of the node (`nodePortAddresses` unset or matching everything).
    #[default]
    Everywhere,
    /// These node addresses only (those `nodePortAddresses` selects; possibly none).
    On(Vec<IpAddr>),
}

impl Listen {
    /// The socket addresses a server on `port` binds. Everywhere is one dual-stack
    /// wildcard socket, as Go's `net.Listen` makes for `0.0.0.0`.
    pub fn socket_addresses(&self, port: u16) -> Vec<SocketAddr> {
        match self {
            Listen::Everywhere => vec![SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)],
            Listen::On(addresses) => addresses
                .iter()
                .map(|a| SocketAddr::new(*a, port))
                .collect(),
        }
    }
}

/// One server kipvs should run: its port and what it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// `spec.healthCheckNodePort`.
    pub port: u16,
    /// Ready endpoints of the Service on this node.
    pub local_endpoints: usize,
}

/// Every server kipvs should run, and where they listen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthChecks {
    /// Where the servers listen.
    pub listen: Listen,
    /// One entry per Service that needs a server.
    pub services: BTreeMap<ServiceName, Wanted>,
}

/// The servers the core's current desired state asks for, with the addresses they
/// listen on.
pub fn wanted(proxier: &Proxier) -> HealthChecks {
    HealthChecks {
        listen: listen(proxier.config(), proxier.node()),
        services: proxier
            .desired()
            .health_checks()
            .map(|(name, hc)| {
                (
                    name.clone(),
                    Wanted {
                        port: hc.node_port,
                        local_endpoints: hc.local_endpoints,
                    },
                )
            })
            .collect(),
    }
}

/// Where health check servers listen: everywhere unless `nodePortAddresses` narrows
/// it, then on the node's addresses it selects (as kube-proxy's `GetNodeIPs`).
pub fn listen(config: &Config, node: &Node) -> Listen {
    let matches_all = config.node_port_addresses.is_empty()
        || config
            .node_port_addresses
            .iter()
            .any(|n| n.prefix_len() == 0);
    if matches_all {
        return Listen::Everywhere;
    }
    let mut addresses: Vec<IpAddr> = node
        .addresses
        .iter()
        .filter(|a| config.is_node_port_address(a))
        .copied()
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    Listen::On(addresses)
}

/// A server that is running: the port and addresses it was opened on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// Its port.
    pub port: u16,
    /// Where it listens.
    pub listen: Listen,
}

/// What to do to the running servers to get the wanted ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Servers to close: no longer wanted, or wanted on another port or addresses.
    pub close: Vec<ServiceName>,
    /// Servers to open, on the wanted addresses (after the closes).
    pub open: Vec<(ServiceName, u16)>,
}

/// The closes and opens that turn `running` into `wanted`. A server already running on
/// the right port and addresses is left alone (its count changes without a reopen).
pub fn changes(running: &BTreeMap<ServiceName, Running>, wanted: &HealthChecks) -> Changes {
    let mut out = Changes::default();
    for (name, server) in running {
        let keep = wanted
            .services
            .get(name)
            .is_some_and(|w| w.port == server.port && server.listen == wanted.listen);
        if !keep {
            out.close.push(name.clone());
        }
    }
    for (name, want) in &wanted.services {
        let open = running
            .get(name)
            .is_none_or(|r| r.port != want.port || r.listen != wanted.listen);
        if open {
            out.open.push((name.clone(), want.port));
        }
    }
    out
}

/// What a health check server answers: kube-proxy's JSON, byte for byte (Go's indented
/// template, tabs and no trailing newline), 200 when the Service has local endpoints
/// and the proxy is healthy (kube-proxy 1.28+), else 503.
pub fn answer(name: &ServiceName, local_endpoints: usize, proxy_healthy: bool) -> HealthAnswer {
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        quoted(&name.namespace),
        quoted(&name.name),
    );
    HealthAnswer {
        status: if local_endpoints > 0 && proxy_healthy {
            200
        } else {
            503
        },
        body,
    }
}

/// A JSON string literal (Kubernetes names need no escaping, but input is input).
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kipvs_proxy::Moment;

    fn name(n: &str) -> ServiceName {
        ServiceName::new("shop", n)
    }

    fn checks(listen: Listen, services: &[(&str, u16, usize)]) -> HealthChecks {
        HealthChecks {
            listen,
            services: services
                .iter()
                .map(|(n, port, local)| {
                    (
                        name(n),
                        Wanted {
                            port: *port,
                            local_endpoints: *local,
                        },
                    )
                })
                .collect(),
        }
    }

    fn running(services: &[(&str, u16)], listen: &Listen) -> BTreeMap<ServiceName, Running> {
        services
            .iter()
            .map(|(n, port)| {
                (
                    name(n),
                    Running {
                        port: *port,
                        listen: listen.clone(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn the_answer_is_kube_proxys_json_with_200_only_for_local_endpoints_and_a_healthy_proxy() {
        let web = name("web");
        let ok = answer(&web, 2, true);
        assert_eq!(ok.status, 200);
        assert_eq!(
            ok.body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&ok.body).unwrap();
        assert_eq!(parsed["service"]["name"], "web");
        assert_eq!(answer(&web, 0, true).status, 503);
        let stale = answer(&web, 3, false);
        assert_eq!(stale.status, 503);
        assert!(stale.body.contains("\"serviceProxyHealthy\": false"));
    }

    #[test]
    fn new_services_are_opened_gone_ones_closed_and_moved_ones_reopened() {
        let everywhere = Listen::Everywhere;
        let now = running(&[("a", 30001), ("b", 30002), ("c", 30003)], &everywhere);
        let want = checks(
            Listen::Everywhere,
            &[("a", 30001, 0), ("b", 30012, 1), ("d", 30004, 2)],
        );
        let c = changes(&now, &want);
        assert_eq!(c.close, vec![name("b"), name("c")]);
        assert_eq!(c.open, vec![(name("b"), 30012), (name("d"), 30004)]);
    }

    #[test]
    fn a_count_change_alone_reopens_nothing() {
        let now = running(&[("a", 30001)], &Listen::Everywhere);
        let want = checks(Listen::Everywhere, &[("a", 30001, 7)]);
        assert_eq!(changes(&now, &want), Changes::default());
    }

    #[test]
    fn new_listen_addresses_reopen_every_server() {
        let old = Listen::On(vec!["192.168.1.10".parse().unwrap()]);
        let now = running(&[("a", 30001)], &old);
        let want = checks(
            Listen::On(vec!["192.168.1.11".parse().unwrap()]),
            &[("a", 30001, 1)],
        );
        let c = changes(&now, &want);
        assert_eq!(c.close, vec![name("a")]);
        assert_eq!(c.open, vec![(name("a"), 30001)]);
    }

    #[test]
    fn servers_listen_everywhere_unless_node_port_addresses_narrow_it() {
        let node = Node::new("node-a").with_addresses([
            "127.0.0.1".parse().unwrap(),
            "192.168.1.10".parse().unwrap(),
            "10.0.0.5".parse().unwrap(),
        ]);
        let mut config = Config::default();
        assert_eq!(listen(&config, &node), Listen::Everywhere);
        assert_eq!(
            Listen::Everywhere.socket_addresses(30000),
            vec!["[::]:30000".parse().unwrap()]
        );
        config.node_port_addresses = vec!["0.0.0.0/0".parse().unwrap()];
        assert_eq!(listen(&config, &node), Listen::Everywhere);
        config.node_port_addresses = vec!["192.168.1.0/24".parse().unwrap()];
        let on = listen(&config, &node);
        assert_eq!(on, Listen::On(vec!["192.168.1.10".parse().unwrap()]));
        assert_eq!(
            on.socket_addresses(30000),
            vec!["192.168.1.10:30000".parse().unwrap()]
        );
    }

    /// A state file with three LoadBalancers: Local with a health check port, Cluster
    /// with one, Local without one; `web`'s slice has `slice_endpoints`.
    fn cluster(slice_endpoints: &str) -> String {
        let lb = |name: &str, ip: &str, policy: &str, hc: &str| {
            format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
                 spec:\n  type: LoadBalancer\n  clusterIP: {ip}\n  externalTrafficPolicy: {policy}\n{hc}\
                 \n  ports: [{{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}}]\n"
            )
        };
        format!(
            "{}{}{}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\n\
             addressType: IPv4\nendpoints: {slice_endpoints}\nports: [{{name: http, protocol: TCP, port: 8080}}]\n",
            lb("web", "10.96.0.50", "Local", "  healthCheckNodePort: 32000"),
            lb("api", "10.96.0.51", "Cluster", "  healthCheckNodePort: 32001"),
            lb("noport", "10.96.0.52", "Local", ""),
        )
    }

    fn proxier_for(text: &str) -> Proxier {
        use crate::sync::cluster::ClusterView;
        use kipvs_kube::source::ClusterEvent;
        let state = kipvs_kube::state_file::parse(text, "cluster.yaml").unwrap();
        let mut p = Proxier::new(
            Config::default(),
            Node::new("node-a").with_addresses(["192.168.1.10".parse().unwrap()]),
        );
        let mut view = ClusterView::new("node-a");
        view.apply(&mut p, ClusterEvent::ServicesReset(state.services));
        view.apply(&mut p, ClusterEvent::SlicesReset(state.endpoint_slices));
        p.sync(Moment::from_secs(0));
        p
    }

    #[test]
    fn only_local_policy_services_with_a_port_want_a_server_counting_ready_local_endpoints() {
        let p = proxier_for(&cluster("[]"));
        assert_eq!(wanted(&p), checks(Listen::Everywhere, &[("web", 32000, 0)]));
        let p = proxier_for(&cluster(
            "\n- {addresses: [10.244.1.5], conditions: {ready: true}, nodeName: node-a}\
             \n- {addresses: [10.244.1.6], conditions: {ready: false}, nodeName: node-a}\
             \n- {addresses: [10.244.1.7], conditions: {ready: true}, nodeName: node-a}\
             \n- {addresses: [10.244.2.7], conditions: {ready: true}, nodeName: node-b}",
        ));
        assert_eq!(wanted(&p), checks(Listen::Everywhere, &[("web", 32000, 2)]));
    }
}
