//! The deployables in examples/kubernetes are what kipvs needs, no more: the ConfigMap's
//! config.conf is a configuration kipvs accepts; the DaemonSet's commands parse with
//! kipvs' own command line and mount what they read; the long-running container holds
//! only NET_ADMIN and NET_RAW; the ClusterRole grants exactly the reads and Event writes
//! kipvs makes.

#![allow(clippy::unwrap_used)]

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use kipvs::cli::{Cli, Command};
use kipvs::config::Config;
use serde::Deserialize;

fn example(name: &str) -> String {
    let path = format!(
        "{}/../../examples/kubernetes/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every document of a multi-document YAML file, as `T` where its kind is `kind`.
fn documents<T: serde::de::DeserializeOwned>(text: &str, kind: &str) -> Vec<T> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .filter(|doc| doc.get("kind").and_then(|k| k.as_str()) == Some(kind))
        .map(|doc| serde_yaml::from_value(doc).unwrap())
        .collect()
}

fn config_conf() -> String {
    let maps: Vec<ConfigMap> = documents(&example("configmap.yaml"), "ConfigMap");
    assert_eq!(maps.len(), 1);
    let data = maps[0].data.clone().unwrap();
    data.get("config.conf").unwrap().clone()
}

fn daemonset() -> DaemonSet {
    let mut sets: Vec<DaemonSet> = documents(&example("daemonset.yaml"), "DaemonSet");
    assert_eq!(sets.len(), 1);
    sets.remove(0)
}

/// The container's args as kipvs' command line parses them.
fn command_line(container: &Container) -> Command {
    let args = container.args.clone().unwrap();
    Cli::try_parse_from(std::iter::once("kipvs".to_owned()).chain(args))
        .unwrap_or_else(|e| panic!("{}: {e}", container.name))
        .command
}

fn mounted_at(container: &Container, dir: &str) -> bool {
    container
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.mount_path == dir)
}

#[test]
fn the_example_configmap_is_an_ipvs_configuration_kipvs_accepts() {
    let loaded = Config::parse(&config_conf(), "examples/kubernetes/configmap.yaml").unwrap();
    assert!(loaded.config.ipvs.strict_arp);
}

#[test]
fn the_daemonset_runs_prepare_privileged_then_run_with_two_capabilities() {
    let spec = daemonset().spec.template.spec.unwrap();
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.service_account_name.as_deref(), Some("kipvs"));

    let init = spec.init_containers.unwrap();
    assert_eq!(init.len(), 1);
    let Command::Prepare(prepare) = command_line(&init[0]) else {
        panic!("the init container must run `kipvs prepare`");
    };
    let config = prepare.config.unwrap();
    assert!(mounted_at(
        &init[0],
        config.parent().unwrap().to_str().unwrap()
    ));
    assert!(mounted_at(&init[0], "/lib/modules"));

    assert_eq!(spec.containers.len(), 1);
    let main = &spec.containers[0];
    let Command::Run(run) = command_line(main) else {
        panic!("the container must run `kipvs run`");
    };
    assert_eq!(run.config, Some(config.clone()));
    assert!(mounted_at(main, config.parent().unwrap().to_str().unwrap()));
    assert!(mounted_at(main, "/run/xtables.lock"));
    assert!(!run.once && !run.dry_run && !run.cleanup && run.state.is_none());

    let security = main.security_context.clone().unwrap();
    assert_eq!(security.privileged, Some(false));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let caps = security.capabilities.unwrap();
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(
        caps.add,
        Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()])
    );
}

#[test]
fn the_daemonset_probes_the_health_endpoints_kipvs_serves() {
    let loaded = Config::parse(&config_conf(), "configmap").unwrap();
    let healthz_port = loaded.config.healthz_bind_address.port();
    let spec = daemonset().spec.template.spec.unwrap();
    let main = &spec.containers[0];
    for (probe, path) in [
        (main.liveness_probe.clone(), "/livez"),
        (main.readiness_probe.clone(), "/healthz"),
    ] {
        let get = probe.unwrap().http_get.unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(healthz_port))
        );
    }
}

fn grants(rules: &[PolicyRule], group: &str, resource: &str) -> Vec<String> {
    let mut verbs: Vec<String> = rules
        .iter()
        .filter(|r| r.api_groups.iter().flatten().any(|g| g == group))
        .filter(|r| r.resources.iter().flatten().any(|x| x == resource))
        .flat_map(|r| r.verbs.clone())
        .collect();
    verbs.sort();
    verbs
}

#[test]
fn the_cluster_role_grants_the_watches_and_event_writes_kipvs_makes_and_nothing_more() {
    let text = example("rbac.yaml");
    let roles: Vec<ClusterRole> = documents(&text, "ClusterRole");
    let rules = roles[0].rules.clone().unwrap();
    let watch = vec!["list".to_owned(), "watch".to_owned()];
    assert_eq!(grants(&rules, "", "services"), watch);
    assert_eq!(grants(&rules, "", "nodes"), watch);
    assert_eq!(grants(&rules, "discovery.k8s.io", "endpointslices"), watch);
    assert_eq!(
        grants(&rules, "events.k8s.io", "events"),
        vec!["create".to_owned(), "patch".to_owned()]
    );
    let resources: usize = rules
        .iter()
        .map(|r| r.resources.as_ref().map_or(0, Vec::len))
        .sum();
    assert_eq!(resources, 4, "no grant beyond the four resources");

    let bindings: Vec<ClusterRoleBinding> = documents(&text, "ClusterRoleBinding");
    let subjects = bindings[0].subjects.clone().unwrap();
    assert_eq!(subjects[0].name, "kipvs");
    assert_eq!(subjects[0].namespace.as_deref(), Some("kube-system"));
    assert_eq!(bindings[0].role_ref.name, "kipvs");
}
