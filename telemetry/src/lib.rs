//! Logging setup shared by the cellroute binaries: one switch between plain and JSON, always to
//! stderr so stdout stays free for command output.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// Installs the global subscriber. An unparsable filter falls back to `info` with a warning.
pub fn init(format: LogFormat, filter: &str) {
    let (env_filter, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Plain => builder.init(),
    }
    if let Some(e) = bad {
        tracing::warn!(filter, error = %e, "invalid --log-level; using `info`");
    }
}
