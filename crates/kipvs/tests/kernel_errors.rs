//! Kernel tests of what users are told when a command cannot reach IPVS: without
//! privileges, and with the ip_vs module not loaded. Each command must fail with one line
//! on standard error that says what to do, and a non-zero exit status.
//!
//! Run by `tests/run` as root in the test VM, one test at a time (the module test unloads
//! ip_vs for the whole kernel and loads it back before it ends, even when it fails).
//! Plain `cargo test` lists them as ignored. The third case, a kernel built without IPVS,
//! is in `cli.rs`: the host's own kernel is one.

// Test code: a panic is a test failure, with the message of what was unwrapped.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};
use std::time::Duration;

use kipvs_testkit::{wait_for, Netns};

const KIPVS: &str = env!("CARGO_BIN_EXE_kipvs");

fn repo_file(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// Every command that needs the kernel's IPVS, with arguments that reach it.
fn commands(state: &str) -> Vec<(&'static str, Vec<String>)> {
    let owned = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    vec![
        ("dump", owned(&["dump"])),
        ("cleanup", owned(&["cleanup"])),
        ("plan", owned(&["plan", "--state", state, "--diff"])),
        ("prepare", owned(&["prepare"])),
        (
            "run",
            owned(&[
                "run",
                "--once",
                "--state",
                state,
                "--hostname-override",
                "node-a",
            ]),
        ),
    ]
}

/// `RUST_LOG=off kipvs ARGS`: `run` logs to standard error as a daemon does; the
/// failure line is what is under test.
fn quiet(args: &[String]) -> Vec<String> {
    let mut all = vec!["RUST_LOG=off".to_owned(), KIPVS.to_owned()];
    all.extend_from_slice(args);
    all
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Asserts that `out` failed with status 1 and exactly `line` on standard error.
fn assert_fails_with(out: &Output, line: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err,
        format!("{line}\n"),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn without_privileges_every_command_says_to_run_as_root_in_one_line() {
    kipvs_testkit::modprobe("ip_vs");
    let ns = Netns::new();
    let state = repo_file("examples/cluster.yaml");
    for (name, args) in commands(&state) {
        let out = ns.run_unprivileged("env", &strs(&quiet(&args)));
        let expected = match name {
            "prepare" => {
                "kipvs prepare: permission denied writing net.ipv4.vs.conntrack: run as root"
                    .to_owned()
            }
            "run" => "kipvs run: permission denied writing net.ipv4.vs.conntrack: run as root, \
                      or run `kipvs prepare` as root first"
                .to_owned(),
            _ => format!(
                "kipvs {name}: permission denied opening IPVS: run as root or with CAP_NET_ADMIN"
            ),
        };
        assert_fails_with(&out, &expected);
    }
    // Once the sysctls are set (the init container's job), `run` gets as far as the
    // kernel's netlink and says the same as the other commands.
    ns.run_ok(KIPVS, &["prepare"]);
    let run = commands(&state).pop().unwrap().1;
    let out = ns.run_unprivileged("env", &strs(&quiet(&run)));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("kipvs run: permission denied ")
            && err.ends_with(": run as root or with CAP_NET_ADMIN\n")
            && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
}

/// The ip_vs modules loaded now (schedulers, persistence engines, helpers and ip_vs).
fn loaded_ipvs_modules() -> Vec<String> {
    std::fs::read_to_string("/proc/modules")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|m| *m == "ip_vs" || m.starts_with("ip_vs_"))
        .map(str::to_owned)
        .collect()
}

/// The modules that use `module`, as the fourth field of `/proc/modules` lists them
/// (`ip_vs_rr,xt_ipvs,`).
fn users_of(module: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/modules")
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.first() == Some(&module))
        .filter_map(|f| f.get(3).map(|u| u.to_string()))
        .flat_map(|u| {
            u.split(',')
                .filter(|m| !m.is_empty() && *m != "-")
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Unloads every ip_vs module, the ones that use ip_vs first (schedulers, helpers, and
/// `xt_ipvs`, which kipvs' own `-m ipvs` rules of earlier tests loaded); true once none
/// is left. Namespaces of earlier tests are torn down asynchronously and hold their
/// services and rules (and so these modules) until then: the caller retries.
fn unload_ipvs() -> bool {
    let mut users = users_of("ip_vs");
    for m in loaded_ipvs_modules() {
        if m != "ip_vs" && !users.contains(&m) {
            users.push(m);
        }
    }
    if !users.is_empty() {
        let _ = Command::new("rmmod").args(&users).output();
    }
    let _ = Command::new("rmmod").arg("ip_vs").output();
    loaded_ipvs_modules().is_empty()
}

/// Restores the kernel's module loader and loads ip_vs again when dropped, so the tests
/// after this one find IPVS as they expect, whatever happened here.
struct RestoreIpvs {
    modprobe_path: String,
}

const KERNEL_MODPROBE: &str = "/proc/sys/kernel/modprobe";

impl Drop for RestoreIpvs {
    fn drop(&mut self) {
        let _ = std::fs::write(KERNEL_MODPROBE, &self.modprobe_path);
        let _ = Command::new("modprobe").arg("ip_vs").output();
    }
}

#[test]
#[ignore = "kernel: run by tests/run"]
fn with_ip_vs_not_loaded_every_command_says_to_load_it_in_one_line() {
    let _restore = RestoreIpvs {
        modprobe_path: std::fs::read_to_string(KERNEL_MODPROBE).unwrap(),
    };
    // The kernel loads ip_vs by itself when a process asks for the IPVS netlink family
    // (the module's alias), through kernel.modprobe; a node where that cannot happen
    // and where kipvs cannot load modules (a container with NET_ADMIN but not
    // SYS_MODULE) is where users meet this message.
    let ns = Netns::new();
    // Whatever else the commands need (nf_tables for iptables, ...) is loaded first, as
    // on a node that runs anything: only IPVS is missing.
    ns.run_ok(KIPVS, &["cleanup"]);
    std::fs::write(KERNEL_MODPROBE, "/nonexistent/modprobe").unwrap();
    wait_for(
        "the ip_vs modules to unload",
        Duration::from_secs(120),
        unload_ipvs,
    );
    let state = repo_file("examples/cluster.yaml");
    for (name, args) in commands(&state) {
        let mut all = vec![
            "--bounding-set=-sys_module".to_owned(),
            "--inh-caps=-sys_module".to_owned(),
            "--".to_owned(),
            "env".to_owned(),
        ];
        all.extend(quiet(&args));
        let out = ns.run("setpriv", &strs(&all));
        if name == "cleanup" {
            // Without IPVS there is no IPVS state to remove: cleanup does the rest.
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).starts_with("removed 0 virtual services"));
            continue;
        }
        assert_fails_with(
            &out,
            &format!("kipvs {name}: IPVS is not available: load it with `modprobe ip_vs`"),
        );
        assert!(loaded_ipvs_modules().is_empty(), "{name} loaded ip_vs");
    }
    // What the message says works, and kipvs does it itself when it may (as ipvsadm).
    let out = ns.run(KIPVS, &["dump"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(loaded_ipvs_modules().contains(&"ip_vs".to_owned()));
}
