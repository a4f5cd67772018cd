//! `control-plane`: validates RoutingConfig objects and (in later releases) pushes versioned
//! snapshots to data planes. Today it offers the shared validation as a command, so a
//! RoutingConfig can be checked with exactly the rules both binaries apply.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use routing_model::{ConfigError, ParseLimits};

/// cellroute control plane.
#[derive(Debug, Parser)]
#[command(name = "control-plane", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a RoutingConfig file with the same rules the data plane applies; exit 1 on errors.
    Validate {
        /// The RoutingConfig file (YAML or JSON).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate { file } => validate(&file),
    }
}

fn validate(file: &PathBuf) -> ExitCode {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    match routing_model::load(&bytes, ParseLimits::default()) {
        Ok(cfg) => {
            println!("{}: valid ({})", file.display(), cfg.hash());
            ExitCode::SUCCESS
        }
        Err(ConfigError::Invalid(errors)) => {
            for e in &errors.0 {
                eprintln!("{}: {e}", file.display());
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}
