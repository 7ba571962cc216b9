//! One module per subcommand; each exposes `main(&Args) -> ExitCode`.

pub mod cleanup;
pub mod dump;
pub mod plan;
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
