//! `kipvs run` against the real kube-apiserver and etcd (`tests/peer/cluster`), on the
//! real kernel of the test VM: what `kernel_apiserver` checks against our own test API
//! server, checked against the real one.
//!
//! - A Service with a bad annotation: kipvs programs it with the default and records a
//!   Warning Event, which is read back through the API (`events.k8s.io/v1`).
//! - A ServiceAccount bound to less than the ClusterRole of
//!   `examples/kubernetes/kipvs/rbac.yaml` (no `list` on EndpointSlices): kipvs logs, at
//!   error level, what it may not do (verb, resource, API group, user) and what it needs;
//!   once the permission is granted it programs the node without a restart.
//! - The API server restarts: kipvs' watches end with it and go on against the new
//!   server (kube-runtime resumes each from its resourceVersion; after an error kipvs
//!   lists again); a transient 403 of the starting server is no error. Then etcd's
//!   history is compacted behind kipvs' resourceVersions: at the watches' renewal the
//!   server answers 410 Gone and kipvs lists again at once, which is not an outage.
//!   Across both the kernel is untouched (`ipvsadm -Sn` the same and not one kernel
//!   operation counted in `/metrics`), and after each a change made to the Service is
//!   applied.
//!
//! The host does what the VM cannot (it reaches the API server and nothing else): the
//! test asks for an API server restart or an etcd compaction by a request file in
//! `KIPVS_PEER_REQUESTS`, which `tests/peer/apiserver-test` serves. The cluster runs
//! with `--watch-cache=false`: with the watch cache, the server's bookmarks keep a
//! watcher's resourceVersion fresh and a compaction never reaches it, so the only way to
//! show the real server's 410 Gone is a watch served from etcd, as it is on a server
//! without the cache. And with `--endpoint-reconciler-type=none`: by default a
//! kube-apiserver that stops removes its own address from the `kubernetes` Service's
//! endpoints and adds it back when it starts, which is a change to the cluster that kipvs
//! must apply (it does: the destination is drained, deleted and added again); without it
//! a restart changes nothing in the cluster, so any kernel write would be kipvs' own.
//!
//! Not a `kernel*` target: it needs the real peers, so `tests/run` does not run it;
//! `tests/peer/apiserver-test` does.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kipvs_testkit::{terminate, wait_for, Netns};
use serde_json::Value;

const KIPVS: &str = env!("CARGO_BIN_EXE_kipvs");
/// The Node kipvs runs as.
const NODE: &str = "peer-apiserver-node";
/// Its address.
const NODE_IP: &str = "192.0.2.10";
/// How long kipvs may take to program what it has listed (the emulated VM is slow).
const PROGRAMMED: Duration = Duration::from_secs(180);
/// How long one watch lasts before kipvs renews it: kube-runtime's `timeoutSeconds`
/// (290 s), which the server honours.
const WATCH_RENEWAL: Duration = Duration::from_secs(290);

/// The real peers, as `tests/peer/cluster env` and `tests/peer/apiserver-test` describe them.
struct Peers {
    bin: PathBuf,
    admin: PathBuf,
    kipvs: PathBuf,
    /// Where request files for the host go.
    requests: PathBuf,
}

impl Peers {
    fn from_env() -> Peers {
        let var = |name: &str| -> PathBuf {
            std::env::var_os(name)
                .unwrap_or_else(|| {
                    panic!("{name} is not set: run this test with tests/peer/apiserver-test")
                })
                .into()
        };
        Peers {
            bin: var("KIPVS_PEER_BIN"),
            admin: var("KIPVS_PEER_KUBECONFIG_ADMIN"),
            kipvs: var("KIPVS_PEER_KUBECONFIG_KIPVS"),
            requests: var("KIPVS_PEER_REQUESTS"),
        }
    }

    /// Runs kubectl as the admin, with `input` on its standard input; panics with its
    /// output when it fails.
    fn kubectl_with(&self, args: &[&str], input: &str) -> String {
        use std::io::Write as _;
        let mut child = Command::new(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.admin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_with(args, "")
    }

    /// `kubectl apply -f -` of `yaml`.
    fn apply(&self, yaml: &str) {
        self.kubectl_with(&["apply", "-f", "-"], yaml);
    }

    /// Node [`NODE`] with address [`NODE_IP`].
    fn create_node(&self) {
        self.apply(&format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE}\n  labels: {{kubernetes.io/hostname: {NODE}}}\n"
        ));
        let addresses = format!(
            r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{NODE_IP}"}},{{"type":"Hostname","address":"{NODE}"}}]}}}}"#
        );
        self.kubectl(&[
            "patch",
            "node",
            NODE,
            "--subresource=status",
            "--type=merge",
            "-p",
            &addresses,
        ]);
    }

    /// Asks the host to `action` (`restart-apiserver`, `compact`) and waits until it has;
    /// returns what the host's command printed.
    fn host(&self, action: &str) -> String {
        std::fs::create_dir_all(&self.requests).unwrap();
        let name = format!("{}-{action}", nanos());
        let tmp = self.requests.join(format!("{name}.tmp"));
        std::fs::write(&tmp, action).unwrap();
        std::fs::rename(&tmp, self.requests.join(&name)).unwrap();
        let done = self.requests.join(format!("{name}.done"));
        let start = Instant::now();
        loop {
            if let Ok(answer) = std::fs::read_to_string(&done) {
                let (status, output) = answer.split_once('\n').unwrap_or((&answer, ""));
                assert_eq!(
                    status, "0",
                    "the host failed to {action} (is tests/peer/apiserver-test serving the requests?): {output}"
                );
                return output.to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "the host did not {action} within 300 s (is tests/peer/apiserver-test serving {}?)",
                self.requests.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A network namespace for the node: `eth0` with [`NODE_IP`], and the API server
/// reachable on 127.0.0.1:6443 through `tests/peer/apiserver-forward`.
struct Node {
    forward: Child,
    ns: Netns,
}

impl Node {
    fn new() -> Node {
        let ns = Netns::new();
        ns.sh(&format!(
            "ip link add eth0 type dummy
             ip addr add {NODE_IP}/24 dev eth0
             ip link set eth0 up"
        ));
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/peer/apiserver-forward"
        );
        let forward = Command::new("ip")
            .args(["netns", "exec", ns.name(), script])
            .stdout(Stdio::null())
            .spawn()
            .expect("apiserver-forward starts");
        wait_for(
            "apiserver-forward to listen",
            Duration::from_secs(30),
            || {
                let _inside = ns.enter();
                TcpStream::connect_timeout(
                    &"127.0.0.1:6443".parse().unwrap(),
                    Duration::from_secs(1),
                )
                .is_ok()
            },
        );
        Node { forward, ns }
    }

    fn ipvs(&self) -> String {
        self.ns.run_ok("ipvsadm", &["-Sn"])
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.forward.kill();
        let _ = self.forward.wait();
    }
}

/// `kipvs run` in the node, logging JSON lines to a file.
struct Kipvs {
    child: Option<Child>,
    log: PathBuf,
}

impl Kipvs {
    fn start(node: &Node, kubeconfig: &Path, dir: &Path) -> Kipvs {
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
                 mode: ipvs\nhostnameOverride: {NODE}\nclusterCIDR: 10.244.0.0/16\n\
                 healthzBindAddress: 127.0.0.1:10256\nmetricsBindAddress: 127.0.0.1:10249\n\
                 conntrack: {{maxPerCore: 0}}\nipvs: {{syncPeriod: 5s}}\nlogging: {{format: json}}\n\
                 clientConnection: {{kubeconfig: {}}}\n",
                kubeconfig.display()
            ),
        )
        .unwrap();
        let log = dir.join("kipvs.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", node.ns.name(), KIPVS, "run", "--config"])
            .arg(&config)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("kipvs starts");
        Kipvs {
            child: Some(child),
            log,
        }
    }

    /// kipvs' log lines so far, parsed.
    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The log lines whose message contains `text`.
    fn logged(&self, text: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| message(l).contains(text))
            .collect()
    }

    fn stop(mut self) {
        terminate(self.child.take().unwrap());
    }
}

impl Drop for Kipvs {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            // A failed test shows what kipvs said.
            eprintln!(
                "--- kipvs' log\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or_default()
}

fn field<'a>(line: &'a Value, name: &str) -> &'a str {
    line["fields"][name].as_str().unwrap_or_default()
}

/// kipvs' `kipvs_kernel_operations_total` counters by their labels: every change it made
/// to the kernel.
fn kernel_operations(node: &Node) -> std::collections::BTreeMap<String, u64> {
    let metrics = http_get(node, 10249, "/metrics");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("kipvs_kernel_operations_total"))
        .map(|l| {
            let (labels, value) = l.rsplit_once(' ').unwrap();
            let value = value.parse().unwrap_or_else(|e| panic!("{l}: {e}"));
            (labels.to_owned(), value)
        })
        .collect()
}

/// The body of a GET on 127.0.0.1:`port` in the node; panics unless it answers 200.
fn http_get(node: &Node, port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let _inside = node.ns.enter();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    body.to_owned()
}

/// A scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kipvs-peer-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Namespace `ns`, a ClusterIP Service `web` at `ip`:80 (with `annotations`, YAML flow
/// mapping) and its EndpointSlice with one ready endpoint `endpoint`:8080.
fn web_service(ns: &str, ip: &str, endpoint: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {ns}\n  annotations: {annotations}\n\
         spec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: {ns}\n\
         \x20 labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\n\
         ports: [{{name: http, port: 8080, protocol: TCP}}]\n\
         endpoints: [{{addresses: [\"{endpoint}\"], conditions: {{ready: true}}, nodeName: {NODE}}}]\n"
    )
}

#[test]
#[ignore = "peer: run by tests/peer/apiserver-test"]
fn a_bad_annotation_becomes_an_event_readable_through_the_api() {
    let peers = Peers::from_env();
    peers.create_node();
    peers.apply(&web_service(
        "peer-event",
        "10.96.50.10",
        "10.244.1.5",
        "{ipvs.kipvs.io/scheduler: fastest}",
    ));
    let node = Node::new();
    let dir = scratch("event");
    let kipvs = Kipvs::start(&node, &peers.kipvs, &dir);

    // The Service is programmed with the default scheduler...
    wait_for("web to be programmed with rr", PROGRAMMED, || {
        let t = node.ipvs();
        t.contains("-A -t 10.96.50.10:80 -s rr")
            && t.contains("-a -t 10.96.50.10:80 -r 10.244.1.5:8080 -m -w 1")
    });
    // ... and the Event is there for anyone with `kubectl get events`.
    let mut found = None;
    wait_for(
        "a Warning Event about peer-event/web",
        Duration::from_secs(60),
        || {
            let list: Value = serde_json::from_str(&peers.kubectl(&[
                "get",
                "events.v1.events.k8s.io",
                "-n",
                "peer-event",
                "-o",
                "json",
            ]))
            .unwrap();
            found = list["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["regarding"]["kind"] == "Service" && e["regarding"]["name"] == "web")
                .cloned();
            found.is_some()
        },
    );
    let event = found.unwrap();
    assert_eq!(event["type"], "Warning", "{event:#}");
    assert_eq!(event["reason"], "InvalidAnnotation", "{event:#}");
    assert_eq!(event["reportingController"], "kipvs", "{event:#}");
    assert_eq!(event["reportingInstance"], NODE, "{event:#}");
    let note = event["note"].as_str().unwrap();
    assert!(
        note.contains("ipvs.kipvs.io/scheduler") && note.contains("fastest"),
        "the note names the annotation and its value: {note}"
    );
    // The core API lists it too (what `kubectl get events` and `describe` read).
    let core = peers.kubectl(&["get", "events", "-n", "peer-event", "-o", "json"]);
    assert!(
        core.contains("InvalidAnnotation"),
        "not in the core Events: {core}"
    );
    kipvs.stop();
    // (No controller-manager: a namespace would never finish terminating.)
    peers.kubectl(&[
        "-n",
        "peer-event",
        "delete",
        "service,endpointslice",
        "--all",
    ]);
}

#[test]
#[ignore = "peer: run by tests/peer/apiserver-test"]
fn less_than_the_cluster_role_is_an_error_naming_the_missing_permission() {
    let peers = Peers::from_env();
    peers.create_node();
    // The ClusterRole of the example, for a ServiceAccount of its own, without `list` on
    // EndpointSlices.
    let rbac = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/kubernetes/kipvs/rbac.yaml"
    ))
    .unwrap();
    let full = "resources: [endpointslices]\n  verbs: [list, watch]";
    assert!(rbac.contains(full), "the example's rule changed: {rbac}");
    let limited = rbac
        .replace("name: kipvs\n", "name: kipvs-limited\n")
        .replace(full, "resources: [endpointslices]\n  verbs: [watch]");
    // The ServiceAccount, the ClusterRole, the binding, its roleRef and its subject.
    assert_eq!(limited.matches("kipvs-limited").count(), 5, "{limited}");
    peers.apply(&limited);
    let token = peers.kubectl(&[
        "-n",
        "kube-system",
        "create",
        "token",
        "kipvs-limited",
        "--duration",
        "1h",
    ]);
    let dir = scratch("rbac");
    let kubeconfig = dir.join("kubeconfig");
    let mine = std::fs::read_to_string(&peers.kipvs).unwrap();
    let theirs: Vec<String> = mine
        .lines()
        .map(|l| match l.split_once("token: ") {
            Some((indent, _)) => format!("{indent}token: {}", token.trim()),
            None => l.to_owned(),
        })
        .collect();
    assert_ne!(theirs.join("\n"), mine.trim_end(), "no token in {mine}");
    std::fs::write(&kubeconfig, theirs.join("\n")).unwrap();

    let node = Node::new();
    let kipvs = Kipvs::start(&node, &kubeconfig, &dir);
    // A warning at once (a restarting API server refuses for a moment), an error when the
    // refusal lasts.
    let errors = || -> Vec<Value> {
        kipvs
            .logged("permission denied")
            .into_iter()
            .filter(|l| l["level"] == "ERROR")
            .collect()
    };
    let mut denied = Vec::new();
    wait_for(
        "kipvs to say it may not list endpointslices",
        PROGRAMMED,
        || {
            denied = errors();
            !denied.is_empty()
        },
    );
    let line = &denied[0];
    let text = message(line);
    eprintln!("kipvs said: {line}");
    assert_eq!(field(line, "watcher"), "endpointslices", "{line}");
    let warned = kipvs.logged("permission denied");
    assert_eq!(warned[0]["level"], "WARN", "first a warning: {warned:?}");
    for needed in [
        r#"User "system:serviceaccount:kube-system:kipvs-limited""#,
        r#"cannot list resource "endpointslices""#,
        r#"in API group "discovery.k8s.io""#,
        "examples/kubernetes/kipvs/rbac.yaml",
    ] {
        assert!(text.contains(needed), "{needed:?} not in: {text}");
    }
    // Said once, not once per retry, and only about EndpointSlices.
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(errors().len(), 1, "{:?}", errors());
    assert!(
        kipvs
            .logged("permission denied")
            .iter()
            .all(|l| field(l, "watcher") == "endpointslices"),
        "{:?}",
        kipvs.logged("permission denied")
    );
    // Nothing else is refused: Services and Nodes are listed and watched (kube-runtime's
    // own warnings quote the status in Debug form, with escaped quotes).
    for line in kipvs.lines() {
        let text = message(&line).replace('\\', "");
        for other in [r#"resource "services""#, r#"resource "nodes""#] {
            assert!(!text.contains(other), "{other} refused too: {line}");
        }
    }

    // Granted, kipvs lists them on its next retry and programs the node.
    peers.apply(&rbac.replace("name: kipvs\n", "name: kipvs-limited\n"));
    wait_for("the node to be programmed once allowed", PROGRAMMED, || {
        node.ipvs().contains("-A -t 10.96.0.1:443 -s rr")
    });
    kipvs.stop();
}

#[test]
#[ignore = "peer: run by tests/peer/apiserver-test"]
fn the_watch_survives_an_apiserver_restart_and_an_etcd_compaction() {
    let peers = Peers::from_env();
    peers.create_node();
    let web = |endpoint: &str| web_service("peer-watch", "10.96.60.10", endpoint, "{}");
    let programmed = |node: &Node, endpoint: &str| {
        node.ipvs()
            .contains(&format!("-a -t 10.96.60.10:80 -r {endpoint}:8080 -m -w 1"))
    };
    peers.apply(&web("10.244.2.5"));
    let node = Node::new();
    let dir = scratch("watch");
    let kipvs = Kipvs::start(&node, &peers.kipvs, &dir);
    wait_for("web to be programmed", PROGRAMMED, || {
        programmed(&node, "10.244.2.5")
    });
    // Let the first syncs settle, then take the kernel's state and kipvs' count of
    // kernel operations.
    std::thread::sleep(Duration::from_secs(10));
    let before = node.ipvs();
    let operations = kernel_operations(&node);

    // The API server restarts. kipvs' watches end with it; kube-runtime resumes each
    // from its resourceVersion on the new server, or (after an error) kipvs lists again.
    let restart = Instant::now();
    peers.host("restart-apiserver");
    let restarted = Instant::now();
    eprintln!("API server restarted in {:?}", restart.elapsed());
    std::thread::sleep(Duration::from_secs(15));
    assert_eq!(node.ipvs(), before, "the restart changed the kernel");
    assert_eq!(
        kernel_operations(&node),
        operations,
        "kipvs wrote to the kernel across the restart"
    );
    eprintln!(
        "after the restart: {} watch connections ended, degraded {:?}, listed again {:?}",
        kipvs.logged("eof in poll").len(),
        kipvs.logged("cluster source degraded"),
        kipvs
            .logged("listed again after an error")
            .iter()
            .map(|l| field(l, "watcher"))
            .collect::<Vec<_>>()
    );
    // A starting kube-apiserver may refuse for a moment (its RBAC cache): a warning, not
    // the error of a missing permission.
    let refused: Vec<Value> = kipvs
        .logged("permission denied")
        .into_iter()
        .filter(|l| l["level"] == "ERROR")
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    // The watch works: a change made now arrives.
    peers.apply(&web("10.244.2.6"));
    wait_for(
        "a change after the restart to be programmed",
        PROGRAMMED,
        || programmed(&node, "10.244.2.6") && !programmed(&node, "10.244.2.5"),
    );
    std::thread::sleep(Duration::from_secs(10));
    let before = node.ipvs();
    let operations = kernel_operations(&node);
    let degraded = kipvs.logged("cluster source degraded").len();

    // etcd's history is compacted past every resourceVersion kipvs holds (two writes
    // first, so the compaction is past the revision of the last change, not at it).
    for n in 0..2 {
        peers.kubectl(&[
            "-n",
            "peer-watch",
            "create",
            "configmap",
            &format!("bump-{n}"),
        ]);
    }
    let revision = peers.host("compact");
    let revision = revision.lines().last().unwrap_or_default().to_owned();
    assert!(revision.parse::<u64>().is_ok(), "no revision: {revision}");
    eprintln!("etcd compacted at revision {revision}");
    // The watches run on until their renewal, which asks etcd for history it no longer
    // has: 410 Gone, and kipvs lists again at once. They were (re)started at the latest
    // when the restarted server was ready.
    let mut gone = Vec::new();
    wait_for(
        "a 410 Gone at the renewal of the watches",
        (WATCH_RENEWAL + Duration::from_secs(90)).saturating_sub(restarted.elapsed()),
        || {
            gone = kipvs.logged("resourceVersion too old, listing again");
            !gone.is_empty()
        },
    );
    // The other watchers renew about when the first did.
    std::thread::sleep(Duration::from_secs(15));
    let gone = kipvs.logged("resourceVersion too old, listing again");
    let watchers: Vec<&str> = gone.iter().map(|l| field(l, "watcher")).collect();
    eprintln!("410 Gone for {watchers:?}: {}", field(&gone[0], "error"));
    assert!(
        gone.iter().all(
            |l| field(l, "error").contains("resourceVersion for the provided watch is too old")
        ),
        "{gone:?}"
    );
    // Listing again is not an outage, and changes nothing.
    assert_eq!(
        kipvs.logged("cluster source degraded").len(),
        degraded,
        "a 410 Gone was taken for an outage"
    );
    assert_eq!(node.ipvs(), before, "the re-list changed the kernel");
    assert_eq!(
        kernel_operations(&node),
        operations,
        "kipvs wrote to the kernel across the 410 Gone"
    );

    // The watch still works: a change made now arrives.
    peers.apply(&web("10.244.2.7"));
    wait_for(
        "a change after the 410 Gone to be programmed",
        PROGRAMMED,
        || programmed(&node, "10.244.2.7") && !programmed(&node, "10.244.2.6"),
    );
    kipvs.stop();
    peers.kubectl(&[
        "-n",
        "peer-watch",
        "delete",
        "service,endpointslice",
        "--all",
    ]);
}
