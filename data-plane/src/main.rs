//! `data-plane`: parse the command line and hand over to the library.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::process::ExitCode;

use clap::Parser;
use data_plane::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => data_plane::validate_cmd::run(&args),
        Command::Run(args) => {
            cellroute_telemetry::init(args.log_format, &args.log_level);
            match data_plane::run::run(*args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "data plane failed");
                    eprintln!("data-plane: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
