//! `control-plane split FILE -o DIR`: one large RoutingConfig file into a RoutingConfig and
//! RoutingShards that `kubectl apply -f DIR` (client-side, the default) accepts.
//!
//! The file is checked with the shared validation first, so only a valid table is split. The
//! output is checked again before it is kept: every file written is read back with the shared
//! parser and the shards composed with the RoutingConfig, which must give the same table (the
//! same content hash) as the input. `DIR` may be new, empty, or hold only files an earlier
//! `split` wrote (recognized by their first line); those are replaced, so a table that now needs
//! fewer shards leaves no stale shard file behind. Anything else in `DIR` is an error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use routing_model::compose::{Members, Shard, compose};
use routing_model::parse::{parse_manifest, parse_shard};
use routing_model::{ConfigError, ParseLimits};

use crate::cli::SplitArgs;
use crate::split::{self, HEADER, Limits, Plan, Source};

/// Why splitting failed; each names the file or directory at fault.
#[derive(Debug, thiserror::Error)]
pub enum SplitCmdError {
    /// The input cannot be read (the error names it).
    #[error("{0}")]
    Read(config_watch::ReadError),
    /// The input is no valid RoutingConfig.
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem.
        source: ConfigError,
    },
    /// The limits, or the table, cannot be split.
    #[error("{path}: {source}")]
    Plan {
        /// The file.
        path: PathBuf,
        /// Why.
        source: split::SplitError,
    },
    /// The output directory holds files `split` did not write.
    #[error(
        "{dir} holds files that `control-plane split` did not write ({found}): choose a new or empty directory, or one an earlier split wrote"
    )]
    ForeignFiles {
        /// The directory.
        dir: PathBuf,
        /// Some of them.
        found: String,
    },
    /// Reading or writing the output directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// What was written does not compose back to the input (a bug: nothing is kept).
    #[error("the files written to {dir} do not compose back to {file}: {why}; they were removed")]
    NotTheSameTable {
        /// The output directory.
        dir: PathBuf,
        /// The input file.
        file: PathBuf,
        /// What differs.
        why: String,
    },
}

/// Splits, prints what it wrote (exit 0) or every error (exit 1).
pub fn run(args: &SplitArgs) -> ExitCode {
    match split_file(args) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(SplitCmdError::Invalid {
            path,
            source: ConfigError::Invalid(errors),
        }) => {
            for e in &errors.0 {
                eprintln!("{}: {e}", path.display());
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("control-plane split: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Does the work; returns the summary to print.
pub fn split_file(args: &SplitArgs) -> Result<String, SplitCmdError> {
    let file = &args.file;
    let limits = ParseLimits {
        max_bytes: args.max_config_bytes,
    };
    let bytes = config_watch::read_limited(file, limits.max_bytes).map_err(SplitCmdError::Read)?;
    let invalid = |source: ConfigError| SplitCmdError::Invalid {
        path: file.clone(),
        source,
    };
    let manifest = parse_manifest(&bytes, limits).map_err(|e| invalid(e.into()))?;
    let validated = routing_model::validate::validate(manifest.clone()).map_err(|e| invalid(e.into()))?;
    let origin = file.file_name().map_or_else(
        || file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let source = Source {
        name: manifest.metadata.name.as_deref().unwrap_or_default(),
        namespace: manifest.metadata.namespace.as_deref(),
        spec: &manifest.spec,
        origin: &origin,
    };
    let plan = split::plan(
        &source,
        Limits {
            shard_bytes: args.shard_bytes,
            customers_per_shard: args.customers_per_shard,
        },
    )
    .map_err(|source| SplitCmdError::Plan {
        path: file.clone(),
        source,
    })?;
    let dir = &args.output;
    prepare(dir)?;
    let files: Vec<&split::File> = plan.shards.iter().chain(std::iter::once(&plan.config)).collect();
    for f in &files {
        let path = dir.join(&f.name);
        std::fs::write(&path, &f.content).map_err(|source| SplitCmdError::Io { path, source })?;
    }
    if let Err(why) = check_written(dir, &plan, &validated, source.namespace.unwrap_or("default")) {
        for f in &files {
            let _ = std::fs::remove_file(dir.join(&f.name));
        }
        return Err(SplitCmdError::NotTheSameTable {
            dir: dir.clone(),
            file: file.clone(),
            why,
        });
    }
    let largest = plan.shards.iter().map(|f| f.json_bytes).max().unwrap_or(0);
    let first = plan.shards.first().map_or("", |f| f.name.as_str());
    let last = plan.shards.last().map_or("", |f| f.name.as_str());
    Ok(format!(
        "{}: {} customers into {} RoutingShards ({first} .. {last}, the largest {largest} bytes) and the RoutingConfig {}, in {} ({}).\n\
         Apply them with: kubectl apply -f {}",
        file.display(),
        manifest.spec.customer_to_placement.len(),
        plan.shards.len(),
        plan.config.name,
        dir.display(),
        validated.hash(),
        dir.display()
    ))
}

/// Makes `dir` ready: created if missing; files an earlier split wrote removed; anything else
/// refused.
fn prepare(dir: &Path) -> Result<(), SplitCmdError> {
    let io = |path: &Path, source| SplitCmdError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut ours = Vec::new();
    let mut foreign = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let path = entry.path();
        let written_by_split = entry.file_type().is_ok_and(|t| t.is_file())
            && std::fs::read(&path).is_ok_and(|b| b.starts_with(HEADER.as_bytes()));
        if written_by_split {
            ours.push(path);
        } else {
            foreign.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        foreign.truncate(3);
        return Err(SplitCmdError::ForeignFiles {
            dir: dir.to_owned(),
            found: foreign.join(", "),
        });
    }
    for path in ours {
        std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
    }
    Ok(())
}

/// Reads the written files back and composes them: the table must be the input's.
fn check_written(
    dir: &Path,
    plan: &Plan,
    input: &routing_model::ValidatedConfig,
    namespace: &str,
) -> Result<(), String> {
    let limits = ParseLimits::default();
    let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"));
    let config = parse_manifest(&read(&plan.config.name)?, limits)
        .map_err(|e| format!("{}: {e}", plan.config.name))?;
    let mut shards = Vec::new();
    for f in &plan.shards {
        let shard = parse_shard(&read(&f.name)?, limits).map_err(|e| format!("{}: {e}", f.name))?;
        shards.push((
            shard.metadata.name.unwrap_or_default(),
            shard.spec.customer_to_placement,
        ));
    }
    let composed = compose(&Members {
        namespace,
        name: config.metadata.name.as_deref().unwrap_or_default(),
        config: &config.spec,
        shards: shards
            .iter()
            .map(|(name, customers)| Shard { name, customers })
            .collect(),
    })
    .map_err(|e| e.to_string())?;
    if composed.hash() != input.hash() {
        return Err(format!(
            "they hash to {}, the input to {}",
            composed.hash(),
            input.hash()
        ));
    }
    Ok(())
}
