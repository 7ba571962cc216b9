//! One module per subcommand; each exposes `main(&Args) -> ExitCode`.

pub mod cleanup;
pub mod dump;
pub mod plan;
pub mod run;
