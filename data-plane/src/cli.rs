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
    Run(Box<RunArgs>),
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

    /// Extra CA certificates (PEM) to trust for `https` cells, in addition to the system's
    /// roots.
    #[arg(long, env = "CELLROUTE_UPSTREAM_CA", value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,

    /// Proxy workers: each is a thread with its own event loop, listening socket
    /// (SO_REUSEPORT) and connections to the cells. Default: the CPUs this process may use.
    #[arg(long, env = "CELLROUTE_WORKERS", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub workers: Option<usize>,

    /// Largest accepted config file, in bytes; larger files are rejected before parsing.
    #[arg(long, env = "CELLROUTE_MAX_CONFIG_BYTES", default_value_t = routing_model::parse::DEFAULT_MAX_CONFIG_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 30))]
    pub max_config_bytes: usize,

    /// How long file events are collected before one reload (editors write in several steps).
    #[arg(long, env = "CELLROUTE_RELOAD_DEBOUNCE", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub reload_debounce: Duration,

    /// Longest a steady stream of file events can delay a reload: a file rewritten faster than
    /// --reload-debounce is still re-read at least this often.
    #[arg(long, env = "CELLROUTE_RELOAD_MAX_WAIT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub reload_max_wait: Duration,

    /// Do not watch the config file; reload only on SIGHUP or POST /admin/reload.
    #[arg(long, env = "CELLROUTE_NO_WATCH")]
    pub no_watch: bool,

    /// A second listener serving only GET /healthz and GET /readyz, for probes from outside the
    /// pod while --admin-listen stays on loopback. Off by default. Changing it needs a restart.
    #[arg(long, env = "CELLROUTE_HEALTH_LISTEN", value_name = "ADDR")]
    pub health_listen: Option<SocketAddr>,

    /// On SIGTERM/SIGINT, how long to keep accepting and serving proxy requests after /readyz
    /// turns 503, so the application can drain through the proxy; then the drain of
    /// --shutdown-grace begins. A second signal ends the delay early.
    #[arg(long, env = "CELLROUTE_SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,

    /// On SIGTERM/SIGINT (after --shutdown-delay), how long in-flight requests may take to
    /// finish before the process exits anyway.
    #[arg(long, env = "CELLROUTE_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "CELLROUTE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax (for example `info` or `info,data_plane=debug`).
    #[arg(long, env = "CELLROUTE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Control plane to follow: `ws://host:port` or `wss://host:port`. Without it the data plane
    /// runs standalone on --config.
    #[arg(
        long,
        env = "CELLROUTE_CONTROL_PLANE",
        value_name = "URL",
        requires = "routing_config"
    )]
    pub control_plane: Option<String>,

    /// The RoutingConfig to serve, as NAMESPACE/NAME.
    #[arg(long, env = "CELLROUTE_ROUTING_CONFIG", value_name = "NAMESPACE/NAME",
          value_parser = parse_object_ref)]
    pub routing_config: Option<String>,

    /// Bearer token presented to the control plane (a projected ServiceAccount token in a
    /// cluster). Re-read on every connect, so rotation needs no restart.
    #[arg(long, env = "CELLROUTE_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Extra CA certificates (PEM) to trust for a `wss://` control plane, in addition to the
    /// system's roots.
    #[arg(long, env = "CELLROUTE_CONTROL_PLANE_CA", value_name = "FILE")]
    pub control_plane_ca: Option<PathBuf>,

    /// Directory of the last-known-good cache. With it, a restart during a control-plane outage
    /// serves the last applied snapshot at once.
    #[arg(long, env = "CELLROUTE_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// This data plane's id, shown on the control plane (the pod name in a cluster): a
    /// Kubernetes object name. Default: the host name, made one.
    #[arg(long, env = "POD_NAME", value_parser = crate::identity::parse_id)]
    pub id: Option<String>,

    /// Refuse tables with more customers than this (they are NACKed or rejected).
    #[arg(long, env = "CELLROUTE_MAX_CUSTOMERS", default_value_t = routing_model::validate::MAX_CUSTOMERS)]
    pub max_customers: usize,

    /// Largest control-plane message accepted, in bytes; a larger one closes the session.
    #[arg(long, env = "CELLROUTE_MAX_MESSAGE_BYTES", default_value_t = routing_model::protocol::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    /// How often to ping the control plane.
    #[arg(long, env = "CELLROUTE_HEARTBEAT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// Silence after which the control plane is considered gone (a silent partition is noticed
    /// within this time).
    #[arg(long, env = "CELLROUTE_HEARTBEAT_TIMEOUT", default_value = "4s", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Duration,

    /// Longest wait between reconnect attempts (the waits grow exponentially up to this, with
    /// full jitter).
    #[arg(long, env = "CELLROUTE_RECONNECT_MAX", default_value = "10s", value_parser = humantime::parse_duration)]
    pub reconnect_max: Duration,
}

fn parse_object_ref(value: &str) -> Result<String, String> {
    routing_model::protocol::check_object_ref(value).map(|()| value.to_owned())
}

/// Flags of `data-plane validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The RoutingConfig file to check.
    pub file: PathBuf,

    /// Also print what would change if FILE replaced this (currently active) file.
    #[arg(long, value_name = "FILE2")]
    pub against: Option<PathBuf>,

    /// Largest accepted config file, in bytes (as for `run`).
    #[arg(long, env = "CELLROUTE_MAX_CONFIG_BYTES", default_value_t = routing_model::parse::DEFAULT_MAX_CONFIG_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 30))]
    pub max_config_bytes: usize,

    /// Refuse tables with more customers than this (as for `run`).
    #[arg(long, env = "CELLROUTE_MAX_CUSTOMERS", default_value_t = routing_model::validate::MAX_CUSTOMERS)]
    pub max_customers: usize,
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
