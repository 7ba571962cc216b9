//! `kipvs`: a Kubernetes service proxy for Linux IPVS, a drop-in for kube-proxy's
//! `mode: "ipvs"`. This binary is the imperative shell: command line, configuration,
//! the sync loop and the servers; every decision lives in `kipvs-proxy`.

use std::process::ExitCode;

use clap::Parser;
use kipvs::cli;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Version => {
            println!("kipvs {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("kipvs: `{}` is not implemented yet", other.name());
            ExitCode::from(2)
        }
    }
}
