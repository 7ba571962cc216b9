//! The sync loop: cluster events in, Plans out to the kernel executors.

pub mod cluster;
