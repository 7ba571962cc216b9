//! `kipvs`: a Kubernetes service proxy for Linux IPVS, a drop-in for kube-proxy's
//! `mode: "ipvs"`. This binary only parses the command line and dispatches; everything
//! else lives in the `kipvs` library.

use std::process::ExitCode;

use clap::Parser;
use kipvs::cli::{Cli, Command};
use kipvs::commands;

fn main() -> ExitCode {
    let (name, result) =
        match Cli::parse_from(kipvs::cli::kube_proxy_argv(std::env::args_os())).command {
            Command::Run(args) => ("run", commands::run::main(&args)),
            Command::Plan(args) => ("plan", commands::plan::main(&args)),
            Command::Dump(args) => ("dump", commands::dump::main(&args)),
            Command::Cleanup(args) => ("cleanup", commands::cleanup::main(&args)),
            Command::Prepare(args) => ("prepare", commands::prepare::main(&args)),
            Command::Version => {
                println!("kipvs {}", kipvs::version::LONG);
                ("version", Ok(ExitCode::SUCCESS))
            }
        };
    // The one place a command's failure reaches the user: one line, non-zero status.
    result.unwrap_or_else(|failure| failure.exit(name))
}
