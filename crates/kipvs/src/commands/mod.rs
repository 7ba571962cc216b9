//! One module per subcommand; each exposes `main(&Args) -> ExitCode`.

pub mod cleanup;
pub mod dump;
pub mod plan;
pub mod prepare;
pub mod run;

/// The tokio runtime a command runs on, or the exit code after saying why there is none.
pub(crate) fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, std::process::ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|err| {
            eprintln!("kipvs: cannot start the runtime: {err}");
            std::process::ExitCode::from(1)
        })
}

/// The configuration in `path`, or kube-proxy's defaults without one; on a bad file, the
/// exit code after saying what is wrong and where (file:line:column: field).
pub(crate) fn optional_config(
    path: Option<&std::path::Path>,
) -> Result<crate::config::Config, std::process::ExitCode> {
    match path {
        Some(path) => crate::config::Config::load(path)
            .map(|loaded| loaded.config)
            .map_err(|err| {
                eprintln!("kipvs: invalid configuration: {err}");
                std::process::ExitCode::from(1)
            }),
        None => Ok(crate::config::Config::default()),
    }
}
