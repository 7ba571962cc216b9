//! The scenario corpus (tests/peer/scenarios) and the README's table are valid before
//! any VM boots: every object is a Kubernetes object with no misspelt field, ClusterIPs
//! lie in the test API server's service CIDRs, every port the capture asks for is fixed
//! in the files, the example scenario is the example cluster, and the README's rules
//! parse.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kipvs_conformance::rules;
use kipvs_conformance::scenario::{Scenario, NODE_IP, NODE_IP6};
use serde_json::Value;

/// The service CIDRs of tests/peer/cluster's kube-apiserver.
const SERVICE_CIDRS: [&str; 2] = ["10.96.0.0/16", "fd00:10:96::/112"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn corpus() -> Vec<Scenario> {
    Scenario::load_all(&repo().join("tests/peer/scenarios")).unwrap()
}

/// `value` with every null field removed, for comparing a round trip through the typed
/// API (which leaves absent fields out).
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(object: &Value) -> Value {
    let typed: T =
        serde_json::from_value(object.clone()).unwrap_or_else(|e| panic!("{e}: {object}"));
    serde_json::to_value(typed).unwrap()
}

#[test]
fn the_corpus_has_at_least_twenty_scenarios_of_well_formed_objects() {
    let corpus = corpus();
    assert!(corpus.len() >= 20, "{} scenarios", corpus.len());
    for scenario in &corpus {
        let name = &scenario.name;
        assert!(!scenario.objects.is_empty(), "{name}: no objects");
        for object in &scenario.objects {
            // Every field survives a trip through the typed API: nothing misspelt.
            let back = match object["kind"].as_str().unwrap() {
                "Service" => round_trip::<Service>(object),
                "EndpointSlice" => round_trip::<EndpointSlice>(object),
                "Node" => round_trip::<Node>(object),
                other => panic!("{name}: unexpected kind {other}"),
            };
            assert_eq!(without_nulls(&back), without_nulls(object), "{name}");
        }
    }
}

#[test]
fn cluster_ips_lie_in_the_service_cidrs_and_ports_are_fixed_in_the_files() {
    let cidrs: Vec<IpNet> = SERVICE_CIDRS.iter().map(|c| c.parse().unwrap()).collect();
    for scenario in corpus() {
        let name = &scenario.name;
        for service in scenario.objects.iter().filter(|o| o["kind"] == "Service") {
            let spec = &service["spec"];
            let svc = service["metadata"]["name"].as_str().unwrap();
            let kind = spec["type"].as_str().unwrap_or("ClusterIP");
            if kind == "ExternalName" {
                continue;
            }
            let ips: Vec<&str> = spec["clusterIPs"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}/{svc}: clusterIPs not fixed"))
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(
                spec["clusterIP"].as_str(),
                ips.first().copied(),
                "{name}/{svc}"
            );
            for ip in ips.iter().filter(|ip| **ip != "None") {
                let ip: std::net::IpAddr = ip.parse().unwrap();
                assert!(cidrs.iter().any(|c| c.contains(&ip)), "{name}/{svc}: {ip}");
                assert_ne!(
                    ip.to_string(),
                    "10.96.0.1",
                    "{name}/{svc}: the API server's own"
                );
            }
            if kind == "NodePort" || kind == "LoadBalancer" {
                for port in spec["ports"].as_array().unwrap() {
                    let node_port = port["nodePort"].as_u64();
                    assert!(
                        node_port.is_some_and(|p| (30000..=32767).contains(&p)),
                        "{name}/{svc}: nodePort not fixed in range: {port}"
                    );
                }
            }
            if kind == "LoadBalancer" && spec["externalTrafficPolicy"] == "Local" {
                assert!(
                    spec["healthCheckNodePort"].as_u64().is_some(),
                    "{name}/{svc}: healthCheckNodePort not fixed"
                );
            }
        }
    }
}

#[test]
fn every_config_is_ipvs_mode_for_node_a_and_can_run_in_a_node_namespace() {
    for scenario in corpus() {
        let name = &scenario.name;
        let c = &scenario.config;
        assert_eq!(c["mode"].as_str(), Some("ipvs"), "{name}");
        assert_eq!(scenario.node_name(), Some("node-a"), "{name}");
        assert_eq!(c["conntrack"]["maxPerCore"].as_u64(), Some(0), "{name}");
        assert!(
            scenario.metrics_address().is_some(),
            "{name}: the driver needs metrics"
        );
        let node = scenario
            .objects
            .iter()
            .find(|o| o["kind"] == "Node" && o["metadata"]["name"] == "node-a")
            .unwrap_or_else(|| panic!("{name}: no Node node-a"));
        let internal: Vec<&str> = node["status"]["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["type"] == "InternalIP")
            .map(|a| a["address"].as_str().unwrap())
            .collect();
        assert_eq!(internal.first().copied(), Some(NODE_IP), "{name}");
        assert!(
            internal.iter().all(|a| *a == NODE_IP || *a == NODE_IP6),
            "{name}: {internal:?}"
        );
    }
}

#[test]
fn the_example_scenario_is_the_example_cluster_without_the_api_servers_own_objects() {
    let example = Scenario::load_all(&repo().join("tests/peer/scenarios"))
        .unwrap()
        .into_iter()
        .find(|s| s.name == "example")
        .unwrap();
    let text = std::fs::read_to_string(repo().join("examples/cluster.yaml")).unwrap();
    let whole: Value = serde_yaml::from_str(&text).unwrap();
    let expected: Vec<Value> = whole["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| {
            !(o["metadata"]["name"] == "kubernetes" && o["metadata"]["namespace"] == "default")
        })
        .cloned()
        .collect();
    assert_eq!(expected.len() + 2, whole["items"].as_array().unwrap().len());
    assert_eq!(example.objects, expected);
}

#[test]
fn the_readmes_table_of_intended_differences_parses() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let rules = rules::from_readme(&readme).unwrap();
    assert!(
        rules.iter().any(|r| r.row.contains("`kipvs_*` metrics")),
        "{rules:?}"
    );
}
