//! Sources of cluster state for kipvs: Kubernetes watchers and state files (YAML
//! manifests replayed without an API server), converted into the core's model.
//!
//! This crate reads; it never touches the kernel.

pub mod client;
pub mod convert;
pub mod events;
pub mod source;
pub mod state_file;
pub mod watch;
