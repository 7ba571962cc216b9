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

/// The configuration in `path`, or kube-proxy's defaults without one. Sets up logging
/// as the file says, then logs what the file says that kipvs ignores.
///
/// Fails on a bad file, saying what is wrong and where (file:line:column: field).
pub(crate) fn optional_config(
    path: Option<&std::path::Path>,
) -> Result<crate::config::Config, Failure> {
    let loaded = match path {
        Some(path) => crate::config::Config::load(path)
            .map_err(|err| Failure::Other(format!("invalid configuration: {err}")))?,
        None => crate::config::Loaded::defaults(),
    };
    run::init_logging(loaded.config.log_format, loaded.config.verbosity);
    loaded.log();
    Ok(loaded.config)
}
