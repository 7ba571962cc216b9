//! One module per subcommand; each exposes `main(&Args) -> Result<ExitCode, Failure>`,
//! and the binary prints the [`Failure`] (see [`failure`]).

pub mod cleanup;
pub mod dump;
pub mod failure;
pub mod plan;
pub mod prepare;
pub mod run;

pub use failure::Failure;

/// The tokio runtime a command runs on.
///
/// Fails when the runtime cannot be started (no threads left, ...).
pub(crate) fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|err| Failure::Other(format!("cannot start the runtime: {err}")))
}

/// The configuration in `path`, or kube-proxy's defaults without one.
///
/// Fails on a bad file, saying what is wrong and where (file:line:column: field).
pub(crate) fn optional_config(
    path: Option<&std::path::Path>,
) -> Result<crate::config::Config, Failure> {
    match path {
        Some(path) => crate::config::Config::load(path)
            .map(|loaded| loaded.config)
            .map_err(|err| Failure::Other(format!("invalid configuration: {err}"))),
        None => Ok(crate::config::Config::default()),
    }
}
