//! `kipvs run` watching an API server (the test API server, spoken to by the real kube
//! client) and programming the real kernel: changes arrive live, an API server outage
//! leaves the kernel as it is, recovery resumes, and bad annotations become Events.

// Helpers below are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
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

#[test]
#[ignore = "kernel: run by tests/run"]
fn run_follows_the_api_server_and_survives_its_outage() {
    let ns = Netns::new();
    ns.sh("ip link add eth0 type dummy
           ip addr add 192.168.1.10/24 dev eth0
           ip link set eth0 up");
    // The API server listens inside the node's namespace: enter it before the runtime
    // (and its threads) exist.
    let _inside = ns.enter();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut server = rt.block_on(ApiServer::start()).unwrap();
    let state = example();
    server.apply_all(&state.nodes);
    server.apply_all(&state.services);
    server.apply_all(&state.endpoint_slices);
    let dir = std::env::temp_dir().join(format!("kipvs-api-{}", std::process::id()));
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
    let child = Command::new("ip")
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
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
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
