//! Test support for kipvs' kernel tests.
//!
//! Kernel tests are ordinary Rust tests that need root and a kernel with IPVS. They live
//! in integration-test targets named `kernel*` and carry
//! `#[ignore = "kernel: run by tests/run"]`, so a plain `cargo test` lists them as
//! ignored, never as passed; `tests/run` runs them with `--ignored`, one process per
//! test, directly or inside the test VM.
//!
//! Each test works in its own network namespace: [`Netns::new`] creates one (named, so
//! the real tools can be pointed at it), [`Netns::enter`] moves the calling thread into it
//! (sockets opened afterwards belong to it) and [`Netns::run`] runs `ipvsadm`, `ipset`,
//! `iptables-save` or `ip` inside it and returns what they printed.

use std::fs::File;
use std::io::{Read, Write};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};

/// A named network namespace that exists for as long as this value does.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

/// Restores the thread's previous network namespace when dropped.
#[derive(Debug)]
#[must_use = "the thread returns to its previous namespace when the guard drops"]
pub struct EnteredNetns {
    previous: File,
}

impl Drop for EnteredNetns {
    fn drop(&mut self) {
        // Best effort: a test thread that cannot go back is about to end anyway.
        let _ = setns(&self.previous, CloneFlags::CLONE_NEWNET);
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Netns {
    /// Creates a fresh network namespace with `lo` up.
    ///
    /// # Panics
    /// When `ip netns add` fails (not root, no `ip`): a kernel test cannot go on then.
    pub fn new() -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("kipvs-t{}-{}", std::process::id(), n);
        run_checked(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves the calling thread into this namespace until the guard drops.
    ///
    /// # Panics
    /// When the namespace file cannot be opened or `setns` fails.
    pub fn enter(&self) -> EnteredNetns {
        let previous = File::open("/proc/thread-self/ns/net").expect("open current netns");
        let target = File::open(format!("/run/netns/{}", self.name)).expect("open test netns");
        setns(&target, CloneFlags::CLONE_NEWNET).expect("setns into the test netns");
        EnteredNetns { previous }
    }

    /// Runs `program args...` inside the namespace and returns its output, whatever its
    /// exit status.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }

    /// Runs `program args...` inside the namespace as an unprivileged user (uid and gid
    /// 65534, no capabilities, through `setpriv`), whatever its exit status: for testing
    /// what users without CAP_NET_ADMIN are told.
    pub fn run_unprivileged(&self, program: &str, args: &[&str]) -> Output {
        let mut all = vec![
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
            program,
        ];
        all.extend_from_slice(args);
        self.run("setpriv", &all)
    }

    /// The namespace's file, `/run/netns/NAME`, for APIs that open a namespace by path.
    pub fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs `program args...` inside the namespace and returns its standard output.
    ///
    /// # Panics
    /// When the program fails; the message carries its standard error.
    pub fn run_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "`{program} {}` failed in {}: {}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell script inside the namespace and returns its standard output.
    ///
    /// # Panics
    /// When the script fails.
    pub fn sh(&self, script: &str) -> String {
        self.run_ok("sh", &["-euc", script])
    }

    /// Runs `ip args...` inside the namespace and returns its standard output.
    ///
    /// # Panics
    /// When `ip` fails.
    pub fn ip(&self, args: &[&str]) -> String {
        self.run_ok("ip", args)
    }

    /// Makes every IPv4 and IPv6 address routable in the namespace, through a dummy link
    /// `kt-dst` carrying default routes.
    ///
    /// For tests that send traffic towards addresses nothing else in the namespace
    /// routes. (IPVS itself accepts unicast destinations without a route.)
    pub fn route_everything(&self) {
        self.sh("ip link add kt-dst type dummy
             ip link set kt-dst up
             ip addr add 198.18.255.254/32 dev kt-dst
             ip route add default dev kt-dst
             ip -6 addr add fd00:ffff::fffe/128 dev kt-dst nodad
             ip -6 route add default dev kt-dst");
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A test that failed half-way leaves its servers running; a process inside keeps
        // the namespace, its IPVS services and so the ip_vs module alive after `ip netns
        // del`, and later tests (the module unload of kernel_errors) wait for it in vain.
        let _ = Command::new("sh")
            .args([
                "-c",
                "pids=$(ip netns pids \"$1\"); [ -z \"$pids\" ] || kill -9 $pids",
                "sh",
                &self.name,
            ])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs a command, panicking with its standard error when it fails.
fn run_checked(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Loads a kernel module with `modprobe`, panicking with a clear message when it is
/// missing: inside the test VM a missing kernel feature is a failure, never a skip.
pub fn modprobe(module: &str) {
    run_checked(Command::new("modprobe").arg(module));
}

/// Polls `check` every 200 ms until it holds.
///
/// # Panics
/// When it does not hold within `timeout`; the message names `what` was awaited.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends SIGTERM to `child` and waits for it.
///
/// # Panics
/// When the signal cannot be sent or the child does not exit with status 0.
pub fn terminate(mut child: Child) {
    let pid = i32::try_from(child.id()).expect("a pid fits in i32");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM delivered");
    let status = child.wait().expect("the child is waited for");
    assert!(
        status.success(),
        "the process did not stop cleanly: {status}"
    );
}

/// A GET on 127.0.0.1:`port` inside `ns` (kipvs' health, metrics and healthCheckNodePort
/// servers): status, lower-cased head and body; an error when nothing listens.
pub fn try_http_get(ns: &Netns, port: u16, path: &str) -> std::io::Result<(u16, String, String)> {
    let _inside = ns.enter();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: kipvs\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response[9..12].parse().expect("an HTTP/1.1 status line");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Ok((status, head.to_lowercase(), body.to_owned()))
}
