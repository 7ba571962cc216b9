//! The sync loop: cluster events in, Plans out to the kernel executors.

pub mod cluster;
pub mod conntrack;
pub mod families;
pub mod kernel;
pub mod node;
pub mod run_loop;
