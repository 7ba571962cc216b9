//! Capturing a node: runs the real tools inside the node's network namespace and asks
//! its servers, then hands the output to [`crate::normalize`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use crate::capture::{Capture, Section};
use crate::normalize::{self, HttpAnswer};

/// What to ask a node's servers.
#[derive(Debug, Clone, Default)]
pub struct Probes {
    /// `HOST:PORT` of `/healthz` and `/livez`, if served.
    pub healthz: Option<String>,
    /// `HOST:PORT` of `/metrics` and `/proxyMode`, if served.
    pub metrics: Option<String>,
    /// The healthCheckNodePorts to ask, on [`Probes::node_ip`].
    pub health_check_node_ports: Vec<u16>,
    /// The node address the healthCheckNodePorts are asked on.
    pub node_ip: String,
}

/// Why a node could not be captured.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A tool could not be started or failed.
    #[error("`{command}` in {netns}: {reason}")]
    Tool {
        /// The command line.
        command: String,
        /// The namespace.
        netns: String,
        /// Its standard error, or why it did not start.
        reason: String,
    },
    /// `ip -j` printed something else than its JSON.
    #[error(transparent)]
    Links(#[from] normalize::LinksError),
}

/// A named network namespace (`ip netns`), the node a proxy runs on.
#[derive(Debug, Clone)]
pub struct NodeNs {
    name: String,
}

impl NodeNs {
    /// The namespace `name` (it must exist).
    pub fn new(name: &str) -> NodeNs {
        NodeNs {
            name: name.to_owned(),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its file, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `program args` inside (through `nsenter`) and returns its standard output.
    ///
    /// # Errors
    /// When it cannot start or exits non-zero (the error carries its standard error).
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, NodeError> {
        let command = format!("{program} {}", args.join(" "));
        let tool = |reason: String| NodeError::Tool {
            command: command.clone(),
            netns: self.name.clone(),
            reason,
        };
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.path().display()))
            .arg(program)
            .args(args)
            .output()
            .map_err(|e| tool(e.to_string()))?;
        if !out.status.success() {
            return Err(tool(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A GET of `http://ADDRESS/PATH` from inside the namespace.
    ///
    /// # Errors
    /// A short reason (`connection refused`, `timed out`, ...) when there is no answer.
    pub fn get(&self, address: &str, path: &str) -> Result<HttpAnswer, String> {
        http_get(&self.path(), address, path)
    }

    /// Whether something accepts TCP connections on `address` inside the namespace.
    pub fn accepts(&self, address: &str) -> bool {
        in_netns(&self.path(), address, |_| Ok(Vec::new())).is_ok()
    }

    /// Captures the node: the kernel's state through the real tools, the servers'
    /// answers through `probes`.
    ///
    /// # Errors
    /// When a tool fails (a server that does not answer is a line of the capture, not
    /// an error).
    pub fn capture(&self, probes: &Probes) -> Result<Capture, NodeError> {
        // One process for every tool: starting processes is what a capture spends its
        // time on in an emulated VM.
        let script: String = TOOLS
            .iter()
            .map(|(name, command)| format!("echo '{MARK}{name}'; {command}\n"))
            .collect();
        let out = self.run("sh", &["-ec", &script])?;
        let mut outputs = std::collections::BTreeMap::new();
        let mut current = None;
        for line in out.lines() {
            if let Some(name) = line.strip_prefix(MARK) {
                current = Some(name.to_owned());
                outputs.insert(name.to_owned(), String::new());
            } else if let Some(text) = current.as_ref().and_then(|n| outputs.get_mut(n)) {
                text.push_str(line);
                text.push('\n');
            }
        }
        let output = |name: &str| outputs.get(name).map_or("", String::as_str);
        let mut capture = Capture::new();
        capture.set(
            Section::Ipvs,
            normalize::ipvs(output("ipvsadm"), output("timeouts")),
        );
        capture.set(Section::Ipset, normalize::ipset(output("ipset")));
        capture.set(Section::Iptables, normalize::iptables(output("iptables")));
        capture.set(Section::Ip6tables, normalize::iptables(output("ip6tables")));
        capture.set(Section::Links, normalize::links(output("links"))?);
        capture.set(
            Section::Sysctl,
            normalize::sysctls(self.sysctls().iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        );

        let mut health = Vec::new();
        if let Some(addr) = &probes.healthz {
            for path in ["/healthz", "/livez"] {
                health.extend(normalize::http(
                    path.trim_start_matches('/'),
                    &self.get(addr, path),
                ));
            }
        }
        let mut metrics = (Vec::new(), Vec::new());
        if let Some(addr) = &probes.metrics {
            health.extend(normalize::http("proxyMode", &self.get(addr, "/proxyMode")));
            match self.get(addr, "/metrics") {
                Ok(answer) => metrics = normalize::metrics(&answer.body),
                Err(reason) => metrics.0.push(format!("unreachable: {reason}")),
            }
        }
        for port in &probes.health_check_node_ports {
            let addr = join_host_port(&probes.node_ip, *port);
            health.extend(normalize::http(
                &format!("healthCheckNodePort {port}"),
                &self.get(&addr, "/"),
            ));
        }
        health.sort();
        capture.set(Section::Health, health);
        capture.set(Section::Metrics, metrics.0);
        capture.set(Section::MetricLabels, metrics.1);
        Ok(capture)
    }

    /// The sysctls a proxy may write ([`normalize::proxy_sysctl`]), read from
    /// `/proc/sys` by a thread inside the namespace (`/proc/sys/net` shows the reader's
    /// namespace), as `(key, value)`.
    fn sysctls(&self) -> Vec<(String, String)> {
        let netns = self.path();
        let thread = std::thread::spawn(move || {
            let mut found = Vec::new();
            let Ok(file) = std::fs::File::open(&netns) else {
                return found;
            };
            if setns(&file, CloneFlags::CLONE_NEWNET).is_err() {
                return found;
            }
            let root = Path::new("/proc/sys");
            let mut dirs = vec![
                root.join("net/ipv4/vs"),
                root.join("net/ipv4/conf"),
                root.join("net/netfilter"),
                root.join("net/bridge"),
                root.join("net/ipv6/conf/all"),
                root.join("net/ipv6/conf/default"),
            ];
            for file in ["net/ipv4/ip_forward", "net/ipv4/ip_nonlocal_bind"] {
                read_sysctl(root, &root.join(file), &mut found);
            }
            while let Some(dir) = dirs.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.is_dir() {
                        dirs.push(path);
                    } else {
                        read_sysctl(root, &path, &mut found);
                    }
                }
            }
            found
        });
        thread.join().unwrap_or_default()
    }

    /// The samples of metric `name` on the metrics server: `(labels, value)` for each,
    /// `labels` being the text between the braces (empty without labels). Empty when the
    /// server does not answer or has no such sample.
    pub fn metric_samples(&self, metrics_address: &str, name: &str) -> Vec<(String, f64)> {
        let Ok(answer) = self.get(metrics_address, "/metrics") else {
            return Vec::new();
        };
        answer
            .body
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(name)?;
                let (labels, rest) = match rest.strip_prefix('{') {
                    Some(r) => r.split_once("} ")?,
                    None => ("", rest.strip_prefix(' ')?),
                };
                let value = rest.split_whitespace().next()?.parse().ok()?;
                Some((labels.to_owned(), value))
            })
            .collect()
    }
}

/// What a capture runs inside the node, in one shell: `(name, command)`.
const TOOLS: [(&str, &str); 6] = [
    ("ipvsadm", "ipvsadm -Sn"),
    ("timeouts", "ipvsadm -Ln --timeout"),
    ("ipset", "ipset save"),
    ("iptables", "iptables-save"),
    ("ip6tables", "ip6tables-save"),
    ("links", "ip -d -j addr show"),
];

/// Starts each tool's output in the capture script's output.
const MARK: &str = "@@kipvs-conformance@@ ";

/// Adds the sysctl at `path` (under `root`) to `found` when it is one a proxy writes and
/// it can be read.
fn read_sysctl(root: &Path, path: &Path, found: &mut Vec<(String, String)>) {
    let Ok(relative) = path.strip_prefix(root) else {
        return;
    };
    let key = relative.to_string_lossy().replace('/', ".");
    if !normalize::proxy_sysctl(&key) {
        return;
    }
    if let Ok(value) = std::fs::read_to_string(path) {
        found.push((key, value));
    }
}

/// `HOST:PORT`, bracketing an IPv6 host.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A GET on `address` (`HOST:PORT`) from inside the namespace at `netns`, reading the
/// whole answer (`Connection: close`; chunked bodies decoded).
fn http_get(netns: &Path, address: &str, path: &str) -> Result<HttpAnswer, String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    let raw = in_netns(netns, address, move |stream| {
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .map_err(io_reason)?;
        stream.write_all(request.as_bytes()).map_err(io_reason)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).map_err(io_reason)?;
        Ok(raw)
    })?;
    parse_response(&raw)
}

/// Connects to `address` from inside the namespace at `netns` and hands the connection
/// to `talk`: a thread of our own enters the namespace and connects (a socket stays in
/// the namespace it was made in), so the caller's thread never moves.
fn in_netns(
    netns: &Path,
    address: &str,
    talk: impl FnOnce(&mut TcpStream) -> Result<Vec<u8>, String> + Send + 'static,
) -> Result<Vec<u8>, String> {
    let netns = netns.to_owned();
    let address = address.to_owned();
    let thread = std::thread::spawn(move || -> Result<Vec<u8>, String> {
        let file = std::fs::File::open(&netns).map_err(|e| format!("{}: {e}", netns.display()))?;
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
        let addr: SocketAddr = address
            .to_socket_addrs()
            .map_err(|e| format!("address {address}: {e}"))?
            .next()
            .ok_or_else(|| format!("address {address}: none"))?;
        let mut stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(io_reason)?;
        talk(&mut stream)
    });
    thread
        .join()
        .map_err(|_| "the connecting thread panicked".to_owned())?
}

/// A short, stable reason for a failed connection or read.
fn io_reason(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timed out".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        kind => format!("{kind:?}"),
    }
}

/// An HTTP/1.x response: status line, headers (names lower-cased), body (chunked
/// transfer decoded).
pub(crate) fn parse_response(raw: &[u8]) -> Result<HttpAnswer, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(HttpAnswer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_parsed_with_chunked_bodies_decoded() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        let answer = parse_response(raw).unwrap();
        assert_eq!(answer.status, 503);
        assert_eq!(
            answer.headers[0],
            ("content-type".to_owned(), "application/json".to_owned())
        );
        assert_eq!(answer.body, "{\"a\":1}");
        let plain = parse_response(b"HTTP/1.0 200 OK\r\n\r\nipvs").unwrap();
        assert_eq!((plain.status, plain.body.as_str()), (200, "ipvs"));
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }

    #[test]
    fn hosts_and_ports_join_with_brackets_for_ipv6() {
        assert_eq!(join_host_port("192.168.1.10", 32100), "192.168.1.10:32100");
        assert_eq!(join_host_port("fd00::10", 32100), "[fd00::10]:32100");
    }
}
