//! The command-line contract, exercised on the real binary.

use std::process::Command;

fn kipvs(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kipvs"))
        .args(args)
        .output()
        .expect("the kipvs binary runs")
}

#[test]
fn version_prints_the_package_version() {
    let out = kipvs(&["version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("kipvs {}", env!("CARGO_PKG_VERSION"))
    );
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
