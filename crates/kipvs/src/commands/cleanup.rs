//! `kipvs cleanup`.

use std::process::ExitCode;

/// Runs `kipvs cleanup`.
pub fn main(_args: &crate::cli::CleanupArgs) -> ExitCode {
    eprintln!("kipvs: `cleanup` is not implemented yet");
    ExitCode::from(2)
}
