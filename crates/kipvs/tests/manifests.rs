//! The deployables in examples/kubernetes are what kipvs needs, no more, and they boot on
//! their own: the ConfigMap's config.conf is a configuration kipvs accepts, and its
//! kubeconfig.conf reaches the API server at the control plane's own address (never
//! through the ClusterIP kipvs itself programs) with the pod's service-account token; the
//! DaemonSet's commands parse with kipvs' own command line and mount what they read; the
//! long-running container holds only NET_ADMIN and NET_RAW; a startup probe waits for the
//! first sync; the image is pinned to this crate's version; the ClusterRole grants exactly
//! the reads and Event writes kipvs makes. The migration kit puts exactly one proxy on
//! every node: kipvs where the node is labelled `kipvs.io/proxy=kipvs`, kube-proxy (with
//! the affinity patch) everywhere else.
//!
//! Where `kubectl` is installed it is the oracle for the kustomize overlay and the patch
//! (`kubectl kustomize`, `kubectl patch --local`); without it those tests say they skipped.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMap, Container, NodeSelectorRequirement, PodSpec, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kipvs::cli::{Cli, Command};
use kipvs::config::Config;
use serde::Deserialize;

const KIPVS: &str = env!("CARGO_BIN_EXE_kipvs");

/// Where a pod's service-account token and CA are mounted.
const SA_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const SA_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// The label that moves a node from kube-proxy to kipvs.
const PROXY_LABEL: (&str, &str) = ("kipvs.io/proxy", "kipvs");

fn repo_path(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn repo_file(path: &str) -> String {
    let full = repo_path(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn example(name: &str) -> String {
    repo_file(&format!("examples/kubernetes/{name}"))
}

/// Every document of a multi-document YAML text, as `T` where its kind is `kind`.
fn documents<T: serde::de::DeserializeOwned>(text: &str, kind: &str) -> Vec<T> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .filter(|doc| doc.get("kind").and_then(|k| k.as_str()) == Some(kind))
        .map(|doc| serde_yaml::from_value(doc).unwrap())
        .collect()
}

fn configmap() -> ConfigMap {
    let mut maps: Vec<ConfigMap> = documents(&example("configmap.yaml"), "ConfigMap");
    assert_eq!(maps.len(), 1);
    maps.remove(0)
}

fn configmap_key(key: &str) -> String {
    let data = configmap().data.unwrap();
    data.get(key)
        .unwrap_or_else(|| panic!("configmap.yaml has no {key}"))
        .clone()
}

fn config_conf() -> String {
    configmap_key("config.conf")
}

fn the_daemonset(text: &str) -> DaemonSet {
    let mut sets: Vec<DaemonSet> = documents(text, "DaemonSet");
    assert_eq!(sets.len(), 1);
    sets.remove(0)
}

fn daemonset() -> DaemonSet {
    the_daemonset(&example("kipvs/daemonset.yaml"))
}

fn pod_spec() -> PodSpec {
    daemonset().spec.template.spec.unwrap()
}

/// The container's args as kipvs' command line parses them.
fn command_line(container: &Container) -> Command {
    let args = container.args.clone().unwrap();
    Cli::try_parse_from(std::iter::once("kipvs".to_owned()).chain(args))
        .unwrap_or_else(|e| panic!("{}: {e}", container.name))
        .command
}

fn mount_for<'a>(container: &'a Container, path: &Path) -> Option<&'a str> {
    container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| path.starts_with(&m.mount_path))
        .map(|m| m.name.as_str())
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
    let spec = pod_spec();
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

fn healthz_port() -> IntOrString {
    let loaded = Config::parse(&config_conf(), "configmap").unwrap();
    IntOrString::Int(i32::from(loaded.config.healthz_bind_address.port()))
}

#[test]
fn the_daemonset_probes_the_health_endpoints_kipvs_serves() {
    let main = &pod_spec().containers[0];
    for (probe, path) in [
        (main.startup_probe.clone(), "/readyz"),
        (main.liveness_probe.clone(), "/livez"),
        (main.readiness_probe.clone(), "/healthz"),
    ] {
        let get = probe.unwrap().http_get.unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, healthz_port());
    }
}

/// The startup probe's budget: kubelet gives up after failureThreshold x periodSeconds.
#[test]
fn the_startup_probe_allows_a_large_clusters_first_sync_before_liveness_counts() {
    let main = &pod_spec().containers[0];
    let startup = main.startup_probe.clone().unwrap();
    let budget = startup.failure_threshold.unwrap_or(3) * startup.period_seconds.unwrap_or(10);
    // 300 s: the first sync of 50,000 Services x 10 endpoints takes about 95 s at the
    // rate measured in the test VM (see the comment in daemonset.yaml).
    assert!(budget >= 300, "startup budget {budget} s");
    // The liveness probe starts after the startup probe; its own delay would only add.
    let liveness = main.liveness_probe.clone().unwrap();
    assert_eq!(liveness.initial_delay_seconds, None);
}

#[test]
fn the_daemonset_image_is_pinned_to_this_crates_version() {
    let spec = pod_spec();
    let version = env!("CARGO_PKG_VERSION");
    for container in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        let image = container.image.clone().unwrap();
        let (_, tag) = image.rsplit_once(':').unwrap();
        assert_eq!(tag, version, "{}: {image}", container.name);
        assert_eq!(
            container.image_pull_policy.as_deref(),
            Some("IfNotPresent"),
            "{}",
            container.name
        );
    }
}

/// The kubeconfig `kipvs run` in the DaemonSet uses: `--kubeconfig`, else
/// `clientConnection.kubeconfig` in the mounted config.conf. `None` with `--master`.
fn kubeconfig_of_the_run_container() -> Option<PathBuf> {
    let main = pod_spec().containers[0].clone();
    let args = main.args.clone().unwrap();
    if args
        .iter()
        .any(|a| a == "--master" || a.starts_with("--master="))
    {
        return None;
    }
    let Command::Run(run) = command_line(&main) else {
        panic!("the container must run `kipvs run`");
    };
    let loaded = Config::parse(&config_conf(), "configmap").unwrap();
    let path = run.kubeconfig.or(loaded.config.kubeconfig);
    Some(path.expect(
        "the DaemonSet must name a kubeconfig or --master: in-cluster configuration deadlocks",
    ))
}

fn yaml_str<'a>(value: &'a serde_yaml::Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(value, |v, key| &v[*key])
        .as_str()
        .unwrap_or_else(|| panic!("no {path:?}"))
}

/// The kubeconfig's current context: (server, certificate-authority, tokenFile).
fn kubeconfig_context(text: &str) -> (String, String, String) {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    let current = yaml_str(&doc, &["current-context"]);
    let named = |list: &str, name: &str| {
        doc[list]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|item| item["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {list} named {name}"))
            .clone()
    };
    let context = named("contexts", current);
    let cluster = named("clusters", yaml_str(&context, &["context", "cluster"]));
    let user = named("users", yaml_str(&context, &["context", "user"]));
    (
        yaml_str(&cluster, &["cluster", "server"]).to_owned(),
        yaml_str(&cluster, &["cluster", "certificate-authority"]).to_owned(),
        yaml_str(&user, &["user", "tokenFile"]).to_owned(),
    )
}

#[test]
fn the_daemonset_reaches_the_api_server_without_the_service_it_programs() {
    let spec = pod_spec();
    // With hostNetwork, ClusterFirst (or no policy) resolves with the node's own
    // resolv.conf; ClusterFirstWithHostNet would ask CoreDNS through a ClusterIP.
    let dns = spec.dns_policy.as_deref();
    assert!(
        matches!(dns, None | Some("ClusterFirst" | "Default")),
        "dnsPolicy {dns:?}"
    );
    let Some(kubeconfig) = kubeconfig_of_the_run_container() else {
        return; // --master names the API server directly
    };

    // The kubeconfig is a key of the mounted ConfigMap.
    let main = &spec.containers[0];
    let volume = mount_for(main, &kubeconfig).expect("the kubeconfig is mounted");
    let source = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == volume)
        .and_then(|v| v.config_map.clone())
        .expect("the kubeconfig comes from a ConfigMap");
    assert_eq!(source.name, configmap().metadata.name.unwrap());
    let key = kubeconfig.file_name().unwrap().to_str().unwrap();
    let (server, ca, token) = kubeconfig_context(&configmap_key(key));

    // The real control-plane endpoint, not the `kubernetes` Service.
    let host = server
        .trim_start_matches("https://")
        .split([':', '/'])
        .next()
        .unwrap();
    for service in [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "10.96.0.1",
    ] {
        assert_ne!(host, service, "{server} is the ClusterIP kipvs programs");
    }
    assert!(server.starts_with("https://"), "{server}");
    // kube-proxy's layout: the pod's own service-account token and CA, so kipvs
    // authenticates as ServiceAccount kipvs.
    assert_eq!((ca.as_str(), token.as_str()), (SA_CA, SA_TOKEN));
    assert_ne!(spec.automount_service_account_token, Some(false));
    let accounts: Vec<ServiceAccount> = documents(&example("kipvs/rbac.yaml"), "ServiceAccount");
    assert_ne!(accounts[0].automount_service_account_token, Some(false));
}

/// A port free on loopback now (the kernel does not hand it out again at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The answer's status to `GET path` on loopback, or `None` while nothing listens.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.get(9..12)?.parse().ok()
}

fn wait_for_status(port: u16, path: &str, want: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("kipvs exited ({status}) before {path} answered {want}");
        }
        last = http_status(port, path);
        if last == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{path} answered {last:?}, not {want}");
}

/// Kills the child when dropped, so a failed assertion leaves no kipvs running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kipvs-manifests-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// config.conf as the example ConfigMap has it, the servers on loopback ports, and the
/// kubeconfig path replaced.
fn local_config(dir: &Path, healthz: u16, kubeconfig: &Path) -> PathBuf {
    let conf = config_conf()
        .replace("0.0.0.0:10256", &format!("127.0.0.1:{healthz}"))
        .replace("0.0.0.0:10249", &format!("127.0.0.1:{}", free_port()))
        .replace(
            "/var/lib/kube-proxy/kubeconfig.conf",
            kubeconfig.to_str().unwrap(),
        );
    let path = dir.join("config.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// A CA certificate, public part only (its key was thrown away): kube's client parses the
/// kubeconfig's certificate-authority even when the server is plain HTTP.
const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIB2zCCAYGgAwIBAgIUPMZ4MNCpV6pHZmTVBl+DWMCqpnEwCgYIKoZIzj0EAwIw
QjFAMD4GA1UEAww3a2lwdnMgdGVzdCBDQSAocHVibGljIHBhcnQgb25seTsgdGhl
IGtleSB3YXMgZGlzY2FyZGVkKTAgFw0yNjEyMDYwMjAyMTJaGA8yMTI2MTExMjAy
MDIxMlowQjFAMD4GA1UEAww3a2lwdnMgdGVzdCBDQSAocHVibGljIHBhcnQgb25s
eTsgdGhlIGtleSB3YXMgZGlzY2FyZGVkKTBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABBYutU5R3J82uSvbIvvTq2A6WgaVW2rvkAKav/pAb+bxqZFL3inSNulaGTmB
q6nrLhyK7dEWtrup/s7VVOKtLtGjUzBRMB0GA1UdDgQWBBSp/tf0+ZyzbBXc6D5v
/cpyZh9rTjAfBgNVHSMEGDAWgBSp/tf0+ZyzbBXc6D5v/cpyZh9rTjAPBgNVHRMB
Af8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIEkOnFxNfE2DR/mVtLV2ZISaiP4C
3F2mjp9vqzwmyKI0AiEAjUg5muOt+Qi6BT//e1UAbovxB6H8HkvzFFFksfnZBhU=
-----END CERTIFICATE-----
";

/// `kipvs run` with the example ConfigMap's two files, as the DaemonSet mounts them (the
/// service-account paths and the server moved to this test's): its first request goes to
/// the server the kubeconfig names, with the token from the token file. Until that server
/// answers, `/livez` is healthy (kube-proxy's rule while starting) but `/readyz`, the
/// startup probe's, is not.
#[test]
fn kipvs_run_with_the_example_configmap_calls_the_named_server_with_the_pods_token() {
    let dir = scratch("kubeconfig");
    let token = "token-of-serviceaccount-kipvs";
    // As the kubelet writes a projected token: no trailing newline.
    std::fs::write(dir.join("token"), token).unwrap();
    std::fs::write(dir.join("ca.crt"), TEST_CA).unwrap();
    // The API server: a listener that reads the first request and never answers.
    let api = TcpListener::bind("127.0.0.1:0").unwrap();
    let (server, _, _) = kubeconfig_context(&configmap_key("kubeconfig.conf"));
    let kubeconfig = configmap_key("kubeconfig.conf")
        .replace(&server, &format!("http://{}", api.local_addr().unwrap()))
        .replace(SA_TOKEN, dir.join("token").to_str().unwrap())
        .replace(SA_CA, dir.join("ca.crt").to_str().unwrap());
    std::fs::write(dir.join("kubeconfig.conf"), kubeconfig).unwrap();
    let healthz = free_port();
    let config = local_config(&dir, healthz, &dir.join("kubeconfig.conf"));

    let mut kipvs = Running(
        Process::new(KIPVS)
            .args(["run", "--config", config.to_str().unwrap()])
            .args(["--hostname-override", "node-a", "--dry-run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    api.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut connection = loop {
        match api.accept() {
            Ok((connection, _)) => break connection,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "kipvs never called the API server"
                );
                assert!(kipvs.0.try_wait().unwrap().is_none(), "kipvs exited");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    connection.set_nonblocking(false).unwrap();
    connection
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = connection.read(&mut byte).unwrap();
        assert_eq!(
            n,
            1,
            "the request ended early: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(
        head.contains(&format!("authorization: bearer {token}")),
        "{head}"
    );
    assert!(head.starts_with("get /api"), "{head}");

    wait_for_status(healthz, "/livez", 200, &mut kipvs.0);
    assert_eq!(http_status(healthz, "/readyz"), Some(503), "no sync yet");
    drop(connection);
}

/// The startup probe's endpoint turns healthy once the first sync is done: here a dry
/// run of the example cluster, replayed from its state file.
#[test]
fn readyz_answers_200_once_the_first_sync_is_done() {
    let dir = scratch("readyz");
    let healthz = free_port();
    let config = local_config(&dir, healthz, Path::new("/nonexistent"));
    let mut kipvs = Running(
        Process::new(KIPVS)
            .args(["run", "--config", config.to_str().unwrap()])
            .args([
                "--state",
                repo_path("examples/cluster.yaml").to_str().unwrap(),
            ])
            .args(["--hostname-override", "node-a", "--dry-run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_status(healthz, "/readyz", 200, &mut kipvs.0);
    assert_eq!(http_status(healthz, "/livez"), Some(200));
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
    let text = example("kipvs/rbac.yaml");
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

// The migration kit.

/// kube-proxy's DaemonSet as kubeadm creates it (cmd/kubeadm/app/phases/addons/proxy),
/// reduced to what scheduling and the patch see.
const KUBEADM_KUBE_PROXY: &str = "
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-proxy
  namespace: kube-system
  labels: {k8s-app: kube-proxy}
spec:
  selector:
    matchLabels: {k8s-app: kube-proxy}
  updateStrategy: {type: RollingUpdate}
  template:
    metadata:
      labels: {k8s-app: kube-proxy}
    spec:
      priorityClassName: system-node-critical
      hostNetwork: true
      serviceAccountName: kube-proxy
      containers:
      - name: kube-proxy
        image: registry.k8s.io/kube-proxy:v1.34.0
        command: [/usr/local/bin/kube-proxy, --config=/var/lib/kube-proxy/config.conf, --hostname-override=$(NODE_NAME)]
        securityContext: {privileged: true}
      tolerations:
      - {key: CriticalAddonsOnly, operator: Exists}
      - {operator: Exists}
      nodeSelector: {kubernetes.io/os: linux}
";

/// `kubectl ARGS`, or `None` (reported) when kubectl is not installed.
fn kubectl(args: &[&str], test: &str) -> Option<String> {
    let out = match Process::new("kubectl").args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("skipped: {test}: kubectl is not installed");
            return None;
        }
        Err(e) => panic!("kubectl: {e}"),
    };
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

/// Whether a node with `labels` satisfies one node-selector requirement.
fn satisfies(labels: &BTreeMap<String, String>, requirement: &NodeSelectorRequirement) -> bool {
    let value = labels.get(&requirement.key);
    let values = requirement.values.clone().unwrap_or_default();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        other => panic!("operator {other} is not used by the kit"),
    }
}

/// Whether the scheduler may place a pod of `spec` on a node with `labels`: its
/// nodeSelector, and one of the terms of its required node affinity.
fn schedules(spec: &PodSpec, labels: &BTreeMap<String, String>) -> bool {
    let selected = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let affinity = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affine = affinity.is_none_or(|required| {
        required.node_selector_terms.iter().any(|term| {
            term.match_expressions
                .iter()
                .flatten()
                .all(|r| satisfies(labels, r))
        })
    });
    selected && affine
}

fn node(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn the_kube_proxy_patch_is_only_a_node_affinity_away_from_kipvs_nodes() {
    let patch: serde_yaml::Value =
        serde_yaml::from_str(&example("migration/kube-proxy-affinity.yaml")).unwrap();
    // Nothing but spec.template.spec.affinity.
    let keys = |v: &serde_yaml::Value| v.as_mapping().unwrap().keys().count();
    assert_eq!(keys(&patch), 1);
    assert_eq!(keys(&patch["spec"]), 1);
    assert_eq!(keys(&patch["spec"]["template"]), 1);
    assert_eq!(keys(&patch["spec"]["template"]["spec"]), 1);
    let affinity: Affinity =
        serde_yaml::from_value(patch["spec"]["template"]["spec"]["affinity"].clone()).unwrap();
    let terms = affinity
        .node_affinity
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .unwrap()
        .node_selector_terms;
    let requirement = NodeSelectorRequirement {
        key: PROXY_LABEL.0.to_owned(),
        operator: "NotIn".to_owned(),
        values: Some(vec![PROXY_LABEL.1.to_owned()]),
    };
    assert_eq!(terms.len(), 1);
    assert_eq!(terms[0].match_expressions, Some(vec![requirement]));
}

/// kube-proxy patched as the README says, and kipvs from the migration overlay: on a
/// node without the label only kube-proxy is scheduled, on a labelled one only kipvs.
#[test]
fn during_the_migration_every_node_runs_exactly_one_proxy() {
    const TEST: &str = "during_the_migration_every_node_runs_exactly_one_proxy";
    let dir = scratch("migration");
    let kube_proxy_file = dir.join("kube-proxy.yaml");
    std::fs::write(&kube_proxy_file, KUBEADM_KUBE_PROXY).unwrap();
    let patch = repo_path("examples/kubernetes/migration/kube-proxy-affinity.yaml");
    let Some(patched) = kubectl(
        &[
            "patch",
            "--local",
            "-f",
            kube_proxy_file.to_str().unwrap(),
            "--patch-file",
            patch.to_str().unwrap(),
            "-o",
            "yaml",
        ],
        TEST,
    ) else {
        return;
    };
    let kube_proxy = the_daemonset(&patched).spec.template.spec.unwrap();
    let overlay = repo_path("examples/kubernetes/migration");
    let Some(built) = kubectl(&["kustomize", overlay.to_str().unwrap()], TEST) else {
        return;
    };
    let kipvs = the_daemonset(&built).spec.template.spec.unwrap();

    let linux = ("kubernetes.io/os", "linux");
    let unmoved = node(&[linux]);
    let moved = node(&[linux, PROXY_LABEL]);
    let other_value = node(&[linux, (PROXY_LABEL.0, "kube-proxy")]);
    for (labels, want_kipvs) in [(&unmoved, false), (&moved, true), (&other_value, false)] {
        assert_eq!(schedules(&kipvs, labels), want_kipvs, "kipvs on {labels:?}");
        assert_eq!(
            schedules(&kube_proxy, labels),
            !want_kipvs,
            "kube-proxy on {labels:?}"
        );
    }
    // The patch leaves the rest of kube-proxy's DaemonSet as kubeadm made it.
    let mut unpatched = the_daemonset(KUBEADM_KUBE_PROXY)
        .spec
        .template
        .spec
        .unwrap();
    unpatched.affinity = kube_proxy.affinity.clone();
    assert_eq!(unpatched, kube_proxy);
}

/// The overlay is the DaemonSet of examples/kubernetes/kipvs plus the nodeSelector, and
/// the same ServiceAccount and RBAC.
#[test]
fn the_migration_overlay_is_the_daemonset_with_the_kipvs_node_selector() {
    const TEST: &str = "the_migration_overlay_is_the_daemonset_with_the_kipvs_node_selector";
    let overlay = repo_path("examples/kubernetes/migration");
    let Some(built) = kubectl(&["kustomize", overlay.to_str().unwrap()], TEST) else {
        return;
    };
    let mut migrating = the_daemonset(&built);
    let selector = migrating
        .spec
        .template
        .spec
        .as_mut()
        .unwrap()
        .node_selector
        .as_mut()
        .unwrap();
    assert_eq!(
        selector.remove(PROXY_LABEL.0).as_deref(),
        Some(PROXY_LABEL.1)
    );
    assert_eq!(migrating, daemonset());
    let rbac = example("kipvs/rbac.yaml");
    assert_eq!(
        documents::<ClusterRole>(&built, "ClusterRole"),
        documents::<ClusterRole>(&rbac, "ClusterRole")
    );
    assert_eq!(
        documents::<ClusterRoleBinding>(&built, "ClusterRoleBinding"),
        documents::<ClusterRoleBinding>(&rbac, "ClusterRoleBinding")
    );
}

/// The README's deploy and migration guides only name files that exist, and patch
/// kube-proxy's DaemonSet with the kit's patch.
#[test]
fn the_readme_guides_name_the_kits_files() {
    let readme = repo_file("README.md");
    let start = readme.find("## Deploying").unwrap();
    let end = readme[start..]
        .find("\n## kipvs, kube-proxy")
        .map_or(readme.len(), |e| start + e);
    let guides = &readme[start..end];
    let mut named = 0;
    for (at, _) in guides.match_indices("examples/kubernetes/") {
        let path: String = guides[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || "/._-".contains(*c))
            .collect();
        let path = path.trim_end_matches('.');
        assert!(repo_path(path).exists(), "README names {path}");
        named += 1;
    }
    assert!(named >= 5, "{named} files named");
    assert!(guides.contains(
        "kubectl -n kube-system patch daemonset kube-proxy --patch-file examples/kubernetes/migration/kube-proxy-affinity.yaml"
    ));
    assert!(guides.contains("kubectl apply -k examples/kubernetes/migration"));
    assert!(guides.contains("disabled: true"));
    assert!(guides.contains("--skip-phases=addon/kube-proxy"));
}

#[test]
fn the_license_is_the_apache_2_0_text_cargo_toml_names() {
    assert_eq!(env!("CARGO_PKG_LICENSE"), "Apache-2.0");
    let license = repo_file("LICENSE");
    assert!(license.trim_start().starts_with("Apache License"));
    assert!(license.contains("Version 2.0, January 2004"));
    assert!(license.contains("TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION"));
    assert!(license.contains("END OF TERMS AND CONDITIONS"));
    assert!(license.contains("APPENDIX: How to apply the Apache License to your work."));
    // The full text, not an excerpt: nine sections.
    for section in 1..=9 {
        assert!(
            license.contains(&format!("\n   {section}. ")),
            "section {section}"
        );
    }
}

/// The image ships a stripped binary that knows its commit, and no floating tag.
#[test]
fn the_dockerfile_strips_the_binary_and_records_the_commit() {
    let dockerfile = repo_file("Dockerfile");
    assert!(dockerfile.contains("CARGO_PROFILE_RELEASE_STRIP=true"));
    assert!(dockerfile.contains("ARG KIPVS_GIT_COMMIT"));
    assert!(!dockerfile.contains(":latest"));
}
