//! `control-plane`: parse the command line and hand over to the library.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::process::ExitCode;

use clap::Parser;
use control_plane::cli::{Cli, Command};

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate(args) => control_plane::validate_cmd::run(&args),
        Command::Split(args) => control_plane::split_cmd::run(&args),
        Command::Run(args) => {
            cellroute_telemetry::init(args.log_format, &args.log_level);
            match control_plane::run::run(*args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "control plane failed");
                    eprintln!("control-plane: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
