//! What `kipvs version` and `kipvs --version` print: the crate version and the commit
//! the binary was built from (`unknown` when built outside a git checkout without
//! `KIPVS_GIT_COMMIT`; see build.rs).

/// The crate version, as in Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The short git commit the binary was built from, or `unknown`.
pub const COMMIT: &str = env!("KIPVS_GIT_COMMIT");

/// `VERSION (commit COMMIT)`, as `kipvs --version` prints it after the name.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("KIPVS_GIT_COMMIT"),
    ")"
);
