//! The command-line contract, exercised on the real binary.

use std::process::Command;

fn kipvs(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kipvs"))
        .args(args)
        .output()
        .expect("the kipvs binary runs")
}

/// The commit of this checkout as git names it, when the tests run in one.
fn checkout_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !commit.is_empty()).then_some(commit)
}

#[test]
fn version_prints_the_package_version_and_the_commit_it_was_built_from() {
    // With KIPVS_GIT_COMMIT set (for the build and so for this run), the binary names
    // that commit instead of the checkout's.
    let commit = std::env::var("KIPVS_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .map(|c| c.trim().to_owned())
        .or_else(checkout_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    let expected = format!("kipvs {} (commit {commit})", env!("CARGO_PKG_VERSION"));
    for args in [&["version"][..], &["--version"][..]] {
        let out = kipvs(args);
        assert!(out.status.success(), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            expected,
            "{args:?}"
        );
    }
}

#[test]
fn unknown_subcommands_are_refused_with_usage() {
    let out = kipvs(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}

/// On a kernel built without IPVS (the machines of this project's CI are such), every
/// command that needs it says so in one line. Elsewhere (IPVS loaded, or a kernel that
/// could load it) this test has nothing to check and says it skipped.
#[test]
fn on_a_kernel_without_ipvs_every_command_says_so_in_one_line() {
    let modular = std::path::Path::new("/proc/modules").exists();
    if std::path::Path::new("/proc/net/ip_vs").exists() || modular {
        println!("skipped: this kernel has IPVS or can load modules");
        return;
    }
    let state = format!("{}/../../examples/cluster.yaml", env!("CARGO_MANIFEST_DIR"));
    for (name, args) in [
        ("dump", vec!["dump"]),
        ("dump", vec!["dump", "--connections"]),
        ("plan", vec!["plan", "--state", &state, "--diff"]),
        ("prepare", vec!["prepare"]),
        (
            "run",
            vec![
                "run",
                "--once",
                "--state",
                &state,
                "--hostname-override",
                "node-a",
            ],
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kipvs"))
            .args(&args)
            .env("RUST_LOG", "off")
            .output()
            .expect("the kipvs binary runs");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "kipvs {name}: this kernel has no IPVS (CONFIG_IP_VS): boot a kernel built \
                 with it\n"
            ),
            "{args:?}"
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}");
    }
}

/// A file for `--config` in a fresh temporary directory.
fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kipvs-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).expect("config written");
    path
}

/// Fields kube-proxy would drop with a warning (older kubeadm ConfigMaps) start kipvs
/// with one warning each, naming file, line and field; fields kipvs accepts without
/// acting on them are reported once. Both reach the log (it is set up first).
#[test]
fn unknown_and_unused_config_fields_are_logged_once_after_logging_starts() {
    let config = config_file(
        "unknown",
        "mode: ipvs\nudpIdleTimeout: 250ms\nhealthzBindAddress: 127.0.0.1:0\n\
         metricsBindAddress: 127.0.0.1:0\nenableProfiling: true\n",
    );
    let state = format!("{}/../../examples/cluster.yaml", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_kipvs"))
        .args(["run", "--dry-run", "--once", "--state", &state])
        .args(["--hostname-override", "node-a", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .output()
        .expect("the kipvs binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes when standard error is not a terminal: {stderr:?}"
    );
    let unknown = format!(
        "{}:2:1: udpIdleTimeout: unknown field, ignored (as kube-proxy ignores it)",
        config.display()
    );
    assert_eq!(stderr.matches(&unknown).count(), 1, "{stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("accepted but not used") && l.contains("enableProfiling"))
            .count(),
        1,
        "{stderr}"
    );
}

/// kube-proxy's own argv, unchanged, starts `run`; with `--config`, the flags kube-proxy
/// ignores are ignored too, each with a warning saying where to set it.
#[test]
fn kube_proxys_argv_runs_the_proxy_and_names_the_flags_the_file_overrides() {
    let config = config_file(
        "argv",
        "mode: ipvs\nhealthzBindAddress: 127.0.0.1:0\nmetricsBindAddress: 127.0.0.1:0\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kipvs"))
        .arg(format!("--config={}", config.display()))
        .args(["--hostname-override=node-a", "--ipvs-scheduler=lc", "--v=2"])
        .env_remove("RUST_LOG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("the kipvs binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--ipvs-scheduler is ignored because --config is given (kube-proxy ignores it too): \
             set ipvs.scheduler in {}",
            config.display()
        )),
        "{stderr}"
    );
    // It ran `run` (which, here, has no API server or no IPVS to work with).
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("kipvs run: "), "{stderr}");

    let version = kipvs(&["--version"]);
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// `plan` is a dry run of `run`: everything `run` would warn about for the same files
/// is printed on standard error, and the table still comes out.
#[test]
fn plan_prints_every_warning_run_would_log() {
    let dir = std::env::temp_dir().join(format!("kipvs-cli-{}-plan", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let state = dir.join("state.yaml");
    std::fs::write(
        &state,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop, annotations: {ipvs.kipvs.io/scheduler: bogus}}\n\
         spec: {clusterIP: 10.96.0.20, ports: [{port: 80, protocol: TCP}]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: shop}\n\
         spec: {clusterIP: 10.96.0.21, ports: [{port: 80, protocol: ICMP}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n",
    )
    .expect("state written");
    let config = config_file("plan", "mode: ipvs\nudpIdleTimeout: 250ms\n");
    let out = Command::new(env!("CARGO_BIN_EXE_kipvs"))
        .args(["plan", "--hostname-override", "node-z", "--state"])
        .arg(&state)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("the kipvs binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("TCP  10.96.0.20:80 rr"),
        "the default scheduler: {stdout}"
    );
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    let has = |needle: &str| warnings.iter().any(|w| w.contains(needle));
    assert!(has("udpIdleTimeout: unknown field"), "{stderr}");
    assert!(
        has("Pod x/p: not a Service, EndpointSlice or Node; ignored"),
        "{stderr}"
    );
    assert!(has("shop/web") && has("bogus"), "{stderr}");
    assert!(has("shop/broken"), "{stderr}");
    assert!(has("node \"node-z\" is not among the Nodes"), "{stderr}");
}
