//! `kipvs run` watching an API server (the test API server, spoken to by the real kube
//! client) and programming the real kernel: changes arrive live, an API server outage
//! leaves the kernel as it is, recovery resumes, and bad annotations become Events; an
//! endpoint the kernel refuses becomes an Event and never makes the node unhealthy.

// Helpers below are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kipvs_apiserver_fake::ApiServer;
use kipvs_kube::state_file;
use kipvs_testkit::{terminate, wait_for, Netns};

const KIPVS: &str = env!("CARGO_BIN_EXE_kipvs");

fn example() -> state_file::ClusterState {
    let path = format!("{}/../../examples/cluster.yaml", env!("CARGO_MANIFEST_DIR"));
    state_file::load(std::path::Path::new(&path)).unwrap()
}

/// A node namespace with eth0 carrying the example node's address.
fn node() -> Netns {
    let ns = Netns::new();
    ns.sh("ip link add eth0 type dummy
           ip addr add 192.168.1.10/24 dev eth0
           ip link set eth0 up");
    ns
}

/// A runtime whose threads live in the namespace the caller has entered.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts `kipvs run` in `ns`, watching `server` (syncPeriod 2 s).
fn start_kipvs(ns: &Netns, server: &ApiServer, test: &str) -> Child {
    let dir = std::env::temp_dir().join(format!("kipvs-api-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "mode: ipvs\nhealthzBindAddress: 127.0.0.1:10256\nmetricsBindAddress: 127.0.0.1:10249\nipvs: {{syncPeriod: 2s}}\nclientConnection: {{kubeconfig: \"{}\"}}\n",
            kubeconfig.display()
        ),
    )
    .unwrap();
    spawn(ns, &config)
}

/// `kipvs run` in `ns` with `config`, as node-a.
fn spawn(ns: &Netns, config: &Path) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            KIPVS,
            "run",
            "--hostname-override",
            "node-a",
        ])
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// A GET on 127.0.0.1:`port` from the namespace the caller has entered: status and body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: kipvs\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn run_follows_the_api_server_and_survives_its_outage() {
    let ns = node();
    // The API server listens inside the node's namespace: enter it before the runtime
    // (and its threads) exist.
    let _inside = ns.enter();
    let rt = runtime();
    let mut server = rt.block_on(ApiServer::start()).unwrap();
    let state = example();
    server.apply_all(&state.nodes);
    server.apply_all(&state.services);
    server.apply_all(&state.endpoint_slices);
    let child = start_kipvs(&ns, &server, "outage");
    let ipvs = || ns.run_ok("ipvsadm", &["-Sn"]);

    wait_for(
        "the cluster to be programmed",
        Duration::from_secs(90),
        || {
            let t = ipvs();
            t.contains("-A -t 10.96.0.1:443 -s rr")
                && t.contains("-A -u 10.96.0.10:53 -s rr -p 10800")
        },
    );

    // A deletion arrives live.
    assert!(server.delete::<Service>("kube-system", "kube-dns"));
    wait_for("kube-dns to go", Duration::from_secs(60), || {
        !ipvs().contains("10.96.0.10:53")
    });

    // The API server goes away: the kernel keeps every rule through several verifies.
    let before = ipvs();
    rt.block_on(server.stop());
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        ipvs(),
        before,
        "the kernel changed while the API server was away"
    );

    // It comes back with a change made meanwhile: kipvs relists and applies it.
    let dns = state
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("kube-dns"))
        .unwrap();
    server.apply(dns);
    rt.block_on(server.restart()).unwrap();
    wait_for("kube-dns to return", Duration::from_secs(120), || {
        ipvs().contains("-A -u 10.96.0.10:53")
    });

    // A bad scheduler annotation: the default scheduler is used and an Event recorded.
    let mut web = state
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("web"))
        .unwrap()
        .clone();
    web.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("ipvs.kipvs.io/scheduler".into(), "fastest".into());
    server.apply(&web);
    wait_for("web to fall back to rr", Duration::from_secs(60), || {
        ipvs().contains("-A -t 10.96.10.20:80 -s rr")
    });
    wait_for(
        "a warning Event on shop/web",
        Duration::from_secs(60),
        || {
            server.events().iter().any(|e| {
                e.reason.as_deref() == Some("InvalidAnnotation")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web")
            })
        },
    );
    assert!(
        ipvs().contains("-A -t 10.96.0.1:443 -s rr"),
        "other Services kept working"
    );
    terminate(child);
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn an_endpoint_the_kernel_refuses_is_an_event_and_the_node_stays_healthy() {
    let ns = node();
    let _inside = ns.enter();
    let rt = runtime();
    let server = rt.block_on(ApiServer::start()).unwrap();
    let state = example();
    server.apply_all(&state.nodes);
    server.apply_all(&state.services);
    server.apply_all(&state.endpoint_slices);
    // 239.1.1.1 passes the API server's validation, but IPVS refuses a multicast
    // destination (EINVAL): one object the kernel will never take.
    let bad = state_file::parse(
        "apiVersion: v1
kind: Service
metadata: {name: bad, namespace: shop}
spec:
  clusterIP: 10.96.30.1
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: bad-1, namespace: shop, labels: {kubernetes.io/service-name: bad}}
addressType: IPv4
endpoints:
- {addresses: [239.1.1.1], conditions: {ready: true}}
- {addresses: [10.244.1.9], conditions: {ready: true}}
ports: [{name: http, port: 8080}]
",
        "bad.yaml",
    )
    .unwrap();
    server.apply_all(&bad.services);
    server.apply_all(&bad.endpoint_slices);
    let child = start_kipvs(&ns, &server, "refused");
    let ipvs = || ns.run_ok("ipvsadm", &["-Sn"]);

    wait_for(
        "the cluster to be programmed",
        Duration::from_secs(90),
        || {
            let t = ipvs();
            t.contains("-A -t 10.96.0.1:443 -s rr")
                && t.contains("-a -t 10.96.30.1:80 -r 10.244.1.9:8080 -m -w 1")
        },
    );
    wait_for(
        "a FailedToProgram Event on shop/bad",
        Duration::from_secs(60),
        || {
            server.events().iter().any(|e| {
                e.reason.as_deref() == Some("FailedToProgram")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad")
                    && e.note.as_deref().is_some_and(|n| n.contains("239.1.1.1"))
            })
        },
    );
    // Well past the health timeout (2 x syncPeriod = 4 s), with the destination retried
    // and refused at every verify, the node stays healthy.
    std::thread::sleep(Duration::from_secs(10));
    for path in ["/healthz", "/livez"] {
        let (status, body) = http_get(10256, path);
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (_, metrics) = http_get(10249, "/metrics");
    let refused = metrics
        .lines()
        .find(|l| {
            l.starts_with("kipvs_kernel_operations_total{")
                && l.contains("kind=\"add_destination\"")
                && !l.contains("result=\"ok\"")
        })
        .unwrap_or_else(|| panic!("no failed add_destination counted:\n{metrics}"));
    let count: f64 = refused.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 3.0, "not retried: {refused}");
    assert!(!ipvs().contains("239.1.1.1"));
    terminate(child);
}
