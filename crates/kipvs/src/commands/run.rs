//! `kipvs run`.

use std::process::ExitCode;

/// Runs `kipvs run`.
pub fn main(_args: &crate::cli::RunArgs) -> ExitCode {
    eprintln!("kipvs: `run` is not implemented yet");
    ExitCode::from(2)
}
