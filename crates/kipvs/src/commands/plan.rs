//! `kipvs plan`.

use std::process::ExitCode;

/// Runs `kipvs plan`.
pub fn main(_args: &crate::cli::PlanArgs) -> ExitCode {
    eprintln!("kipvs: `plan` is not implemented yet");
    ExitCode::from(2)
}
