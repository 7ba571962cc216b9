//! kipvs, the program: command line, configuration, the sync loop and the servers.
//!
//! This crate is the imperative shell around the pure core (`kipvs-proxy`): it reads
//! configuration and cluster state, asks the core for Plans and hands them to the kernel
//! executors (`kipvs-ipvs`, `kipvs-host`). It decides nothing itself. The `kipvs` binary
//! is a thin `main` over this library, so every piece here is testable.

pub mod cli;
pub mod commands;
pub mod config;
pub mod dump;
pub mod owners;
pub mod servers;
pub mod sync;
pub mod version;
