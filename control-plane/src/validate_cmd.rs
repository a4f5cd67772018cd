//! `control-plane validate FILE`: what the control plane checks before it serves a version, as a
//! command: the shared validation, then the size of the snapshot message the version would be
//! sent as, against `--max-message-bytes`.
//!
//! The size is computed for the longest identity the file can be served under (its file-mode
//! lineage and the largest version), so a file that passes here fits when served; the margin is
//! a few dozen bytes at most.

use std::path::Path;
use std::process::ExitCode;

use routing_model::protocol::SnapshotRef;
use routing_model::{ConfigError, ParseLimits};

use crate::cli::ValidateArgs;
use crate::snapshot::{check_deliverable, message_bytes};
use crate::source::file::object_key;
use crate::source::versions::longest_lineage;

/// Prints every error with its key (exit 1), or a one-line summary (exit 0).
pub fn run(args: &ValidateArgs) -> ExitCode {
    let file = &args.file;
    let limits = ParseLimits {
        max_bytes: args.max_config_bytes,
    };
    let bytes = match config_watch::read_limited(file, limits.max_bytes) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let config = match routing_model::load(&bytes, limits) {
        Ok(cfg) => cfg,
        Err(ConfigError::Invalid(errors)) => {
            for e in &errors.0 {
                eprintln!("{}: {e}", file.display());
            }
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    let size = largest_message(&config, file);
    if let Err(e) = check_deliverable(size, args.max_message_bytes) {
        eprintln!("{}: {e}", file.display());
        return ExitCode::FAILURE;
    }
    println!(
        "{}: valid ({}; a snapshot message of {size} bytes, limit {})",
        file.display(),
        config.hash(),
        args.max_message_bytes
    );
    for w in config.warnings() {
        println!("  warning: {w}");
    }
    ExitCode::SUCCESS
}

/// The snapshot message `config` would be sent as, at its largest identity.
fn largest_message(config: &routing_model::ValidatedConfig, file: &Path) -> usize {
    let reference = SnapshotRef {
        lineage: longest_lineage(file),
        version: i64::MAX,
        hash: config.hash(),
    };
    message_bytes(&object_key(config, file), &reference, config.spec())
}
