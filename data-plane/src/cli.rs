//! Command-line flags; every flag of `run` can also be set by a `CELLROUTE_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cellroute_telemetry::LogFormat;
use clap::{Args, Parser, Subcommand};

/// cellroute data plane: routes each HTTP request to the cell (placement) that owns its customer.
#[derive(Debug, Parser)]
#[command(name = "data-plane", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy and its admin server.
    Run(RunArgs),
    /// Check a RoutingConfig file without running anything (a dry run of a reload).
    ///
    /// Prints every error with the key it concerns and exits 1, or prints a summary (and, with
    /// --against, what would change) and exits 0.
    Validate(ValidateArgs),
}

/// Flags of `data-plane run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address the proxy listens on. Changing it needs a restart.
    #[arg(long, env = "CELLROUTE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of the admin server (health, readiness, metrics, admin API). Changing it needs a
    /// restart. Keep it on loopback or a pod-internal address.
    #[arg(long, env = "CELLROUTE_ADMIN_LISTEN", default_value = "127.0.0.1:9901")]
    pub admin_listen: SocketAddr,

    /// RoutingConfig file (YAML or JSON). Re-read on change, on SIGHUP and on
    /// POST /admin/reload; an invalid file never replaces the active table.
    #[arg(long, env = "CELLROUTE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// File holding the bearer token that the admin POST endpoints require. Re-read on every
    /// request, so it can be rotated without a restart. Without it the POST endpoints refuse
    /// every request.
    #[arg(long, env = "CELLROUTE_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Time allowed for an upstream cell to send response headers before the client gets 504.
    #[arg(long, env = "CELLROUTE_UPSTREAM_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,

    /// Time allowed to open a TCP connection to an upstream cell before the client gets 502.
    #[arg(long, env = "CELLROUTE_CONNECT_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Largest accepted config file, in bytes; larger files are rejected before parsing.
    #[arg(long, env = "CELLROUTE_MAX_CONFIG_BYTES", default_value_t = routing_model::parse::DEFAULT_MAX_CONFIG_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 30))]
    pub max_config_bytes: usize,

    /// How long file events are collected before one reload (editors write in several steps).
    #[arg(long, env = "CELLROUTE_RELOAD_DEBOUNCE", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub reload_debounce: Duration,

    /// Do not watch the config file; reload only on SIGHUP or POST /admin/reload.
    #[arg(long, env = "CELLROUTE_NO_WATCH")]
    pub no_watch: bool,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish before the process
    /// exits anyway.
    #[arg(long, env = "CELLROUTE_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "CELLROUTE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax (for example `info` or `info,data_plane=debug`).
    #[arg(long, env = "CELLROUTE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Flags of `data-plane validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The RoutingConfig file to check.
    pub file: PathBuf,

    /// Also print what would change if FILE replaced this (currently active) file.
    #[arg(long, value_name = "FILE2")]
    pub against: Option<PathBuf>,

    /// Largest accepted config file, in bytes.
    #[arg(long, env = "CELLROUTE_MAX_CONFIG_BYTES", default_value_t = routing_model::parse::DEFAULT_MAX_CONFIG_BYTES)]
    pub max_config_bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
