//! `kipvs dump`.

use std::process::ExitCode;

/// Runs `kipvs dump`.
pub fn main(_args: &crate::cli::DumpArgs) -> ExitCode {
    eprintln!("kipvs: `dump` is not implemented yet");
    ExitCode::from(2)
}
