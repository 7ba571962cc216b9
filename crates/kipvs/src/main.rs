//! `kipvs`: a Kubernetes service proxy for Linux IPVS, a drop-in for kube-proxy's
//! `mode: "ipvs"`. This binary only parses the command line and dispatches; everything
//! else lives in the `kipvs` library.

use std::process::ExitCode;

use clap::Parser;
use kipvs::cli::{Cli, Command};
use kipvs::commands;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(args) => commands::run::main(&args),
        Command::Plan(args) => commands::plan::main(&args),
        Command::Dump(args) => commands::dump::main(&args),
        Command::Cleanup(args) => commands::cleanup::main(&args),
        Command::Prepare(args) => commands::prepare::main(&args),
        Command::Version => {
            println!("kipvs {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}
