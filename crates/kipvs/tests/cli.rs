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
