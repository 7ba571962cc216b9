//! The owners file: which Service port each virtual service kipvs programs is for.
//!
//! The kernel records *that* a virtual service is kipvs' (its address on kube-ipvs0, its
//! members in the KUBE-* sets: see `kipvs_proxy::ownership`) but not *for which Service*:
//! IPVS has no field for it, and kube-proxy's ipsets carry no comments. So `kipvs run`
//! writes the answer down: after every sync that may have changed it, a small JSON file
//! (by default `/run/kipvs/owners.json`, else `--owners-file` or `$KIPVS_OWNERS_FILE`),
//! written to a temporary file beside it and renamed over it, so a reader sees the old
//! file or the new one, never half of one. `kipvs dump --services` reads it when it is
//! given neither `--state` nor `--kubeconfig`.
//!
//! ```json
//! {
//!   "format": "kipvs-owners/v1",
//!   "node": "node-a",
//!   "services": [
//!     { "protocol": "tcp", "address": "10.96.0.1", "port": 443,
//!       "owner": "default/kubernetes:https" }
//!   ]
//! }
//! ```
//!
//! The file says what kipvs wanted when it last synced; a virtual service the kernel
//! has and the file does not name (a foreign one, or one kipvs no longer wants) has no
//! owner.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use kipvs_ipvs::{Protocol, ServiceKey};
use kipvs_proxy::Proxier;
use serde::{Deserialize, Serialize};

/// Where `kipvs run` writes the owners file unless told otherwise.
pub const DEFAULT_PATH: &str = "/run/kipvs/owners.json";

/// The environment variable that moves the owners file (the `--owners-file` flag wins).
pub const ENV: &str = "KIPVS_OWNERS_FILE";

/// The version of the file's shape.
pub const FORMAT: &str = "kipvs-owners/v1";

/// The owners file to use: `flag`, else `$KIPVS_OWNERS_FILE`, else [`DEFAULT_PATH`].
pub fn path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os(ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

#[derive(Serialize, Deserialize)]
struct Document {
    format: String,
    node: String,
    services: Vec<Record>,
}

#[derive(Serialize, Deserialize)]
struct Record {
    protocol: String,
    address: IpAddr,
    port: u16,
    owner: String,
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn protocol_from(name: &str) -> Option<Protocol> {
    match name {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "sctp" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// Virtual service → owning Service port (`namespace/name:port`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners(BTreeMap<ServiceKey, String>);

impl Owners {
    /// The owners of every virtual service `proxier` wants.
    pub fn of(proxier: &Proxier) -> Owners {
        Owners(
            proxier
                .desired()
                .virtual_services()
                .map(|v| (v.service.key, v.owner.to_string()))
                .collect(),
        )
    }

    /// The owner of the virtual service at `key`, if the record names one.
    pub fn get(&self, key: &ServiceKey) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Number of virtual services named.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no virtual service is named.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The file's text, for the node named `node`, in key order.
    pub fn render(&self, node: &str) -> String {
        let services = self
            .0
            .iter()
            .filter_map(|(key, owner)| match *key {
                ServiceKey::Addr {
                    protocol,
                    addr,
                    port,
                } => Some(Record {
                    protocol: protocol_name(protocol).to_owned(),
                    address: addr,
                    port,
                    owner: owner.clone(),
                }),
                // kipvs makes no firewall-mark services.
                ServiceKey::Fwmark { .. } => None,
            })
            .collect();
        let doc = Document {
            format: FORMAT.to_owned(),
            node: node.to_owned(),
            services,
        };
        let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Reads an owners file's text.
    ///
    /// Fails, saying why, when it is not JSON of [`FORMAT`].
    pub fn parse(text: &str) -> Result<Owners, String> {
        let doc: Document = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if doc.format != FORMAT {
            return Err(format!("format {:?}, expected {FORMAT:?}", doc.format));
        }
        let mut map = BTreeMap::new();
        for r in doc.services {
            let protocol = protocol_from(&r.protocol)
                .ok_or_else(|| format!("unknown protocol {:?}", r.protocol))?;
            let key = ServiceKey::Addr {
                protocol,
                addr: r.address,
                port: r.port,
            };
            map.insert(key, r.owner);
        }
        Ok(Owners(map))
    }

    /// Reads the owners file at `path`.
    ///
    /// Fails with a one-line message when it is missing (saying who writes it), cannot
    /// be read or is invalid.
    pub fn load(path: &Path) -> Result<Owners, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "no owners file at {} (`kipvs run` writes it; elsewhere pass \
                     --owners-file FILE or --state FILE)",
                    path.display()
                )
            } else {
                format!("cannot read {}: {e}", path.display())
            }
        })?;
        Owners::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Writes `text` to `path` atomically: to a temporary file in the same directory (made
/// if missing), flushed to disk, then renamed over `path`.
///
/// Fails when the directory or the file cannot be written.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(name);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Keeps the owners file equal to what a [`Proxier`] wants, rewriting it only when it
/// changed (the Proxier's [`Proxier::owners_generation`] says when to look).
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    node: String,
    /// The generation last looked at; `None` until the first successful write, and
    /// again after a failed one, so the next sync tries again.
    seen: Option<u64>,
    written: Option<Owners>,
}

impl Recorder {
    /// A recorder writing to `path` for the node named `node`.
    pub fn new(path: PathBuf, node: &str) -> Recorder {
        Recorder {
            path,
            node: node.to_owned(),
            seen: None,
            written: None,
        }
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rewrites the file if the owners `proxier` wants changed since the last write. A
    /// failure is logged and retried at the next call; it never stops the proxy.
    pub fn record(&mut self, proxier: &Proxier) {
        let generation = proxier.owners_generation();
        if self.seen == Some(generation) {
            return;
        }
        let owners = Owners::of(proxier);
        if self.written.as_ref() == Some(&owners) {
            self.seen = Some(generation);
            return;
        }
        match write_atomically(&self.path, &owners.render(&self.node)) {
            Ok(()) => {
                tracing::debug!(path = %self.path.display(), services = owners.len(), "owners file written");
                self.seen = Some(generation);
                self.written = Some(owners);
            }
            Err(err) => {
                tracing::warn!(path = %self.path.display(), error = %err, "cannot write the owners file");
                self.seen = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(protocol: Protocol, addr: &str, port: u16) -> ServiceKey {
        ServiceKey::Addr {
            protocol,
            addr: addr.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn the_file_reads_back_what_was_written() {
        let owners = Owners(
            [
                (
                    key(Protocol::Tcp, "10.96.0.1", 443),
                    "default/kubernetes:https".to_owned(),
                ),
                (key(Protocol::Sctp, "fd00::10", 3868), "a/b:3868".to_owned()),
            ]
            .into_iter()
            .collect(),
        );
        let text = owners.render("node-a");
        assert!(text.contains("\"format\": \"kipvs-owners/v1\""), "{text}");
        assert_eq!(Owners::parse(&text).unwrap(), owners);
    }

    #[test]
    fn a_foreign_or_broken_file_is_refused_with_the_reason() {
        assert!(Owners::parse("{}").is_err());
        let other = r#"{"format":"other/v9","node":"a","services":[]}"#;
        assert!(Owners::parse(other).unwrap_err().contains("other/v9"));
        let proto = r#"{"format":"kipvs-owners/v1","node":"a","services":[
            {"protocol":"icmp","address":"10.0.0.1","port":1,"owner":"a/b:1"}]}"#;
        assert!(Owners::parse(proto).unwrap_err().contains("icmp"));
    }

    #[test]
    fn a_missing_file_says_who_writes_it() {
        let err = Owners::load(Path::new("/nonexistent/owners.json")).unwrap_err();
        assert!(err.contains("kipvs run"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn the_flag_wins_over_the_default() {
        assert_eq!(
            path(Some(Path::new("/x/o.json"))),
            PathBuf::from("/x/o.json")
        );
    }

    #[test]
    fn writes_replace_the_file_whole_and_leave_no_temporary_behind() {
        let dir = std::env::temp_dir().join(format!("kipvs-owners-{}", std::process::id()));
        let file = dir.join("sub").join("owners.json");
        write_atomically(&file, "one\n").unwrap();
        write_atomically(&file, "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "two\n");
        let names: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("owners.json")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
