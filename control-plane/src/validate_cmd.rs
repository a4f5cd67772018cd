//! `control-plane validate FILE`: the shared validation as a command.

use std::path::Path;
use std::process::ExitCode;

use routing_model::{ConfigError, ParseLimits};

/// Prints every error with its key (exit 1), or a one-line summary (exit 0).
pub fn run(file: &Path) -> ExitCode {
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
            for w in cfg.warnings() {
                println!("  warning: {w}");
            }
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
