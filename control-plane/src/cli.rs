//! Command-line flags; every flag of `run` can also be set by a `CELLROUTE_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cellroute_telemetry::LogFormat;
use clap::{Args, Parser, Subcommand};

/// cellroute control plane: validates RoutingConfigs and serves them to data planes.
#[derive(Debug, Parser)]
#[command(name = "control-plane", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane: watch RoutingConfigs (in a cluster, or one file with --from-file),
    /// validate them, report status, and serve snapshots.
    Run(Box<RunArgs>),
    /// Check a RoutingConfig file with the same rules the control plane applies before it serves
    /// a version (validation, and the size of the snapshot message); exit 1 on errors.
    Validate(ValidateArgs),
    /// Split one large RoutingConfig file into a RoutingConfig and RoutingShards, in a directory
    /// that `kubectl apply -f DIR` (client-side, the default) accepts; exit 1 on errors.
    Split(SplitArgs),
}

/// Flags of `control-plane split`.
#[derive(Debug, Args)]
pub struct SplitArgs {
    /// The RoutingConfig file (YAML or JSON), with `metadata.name` (the shards are named after it).
    pub file: PathBuf,

    /// The directory to write to: created if missing; it may hold only files an earlier split
    /// wrote, which are replaced.
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: PathBuf,

    /// Largest shard, in bytes of the JSON `kubectl apply` keeps in its last-applied annotation
    /// (at most 250000: annotations are limited to 262144 bytes).
    #[arg(long, value_name = "N", default_value_t = crate::split::DEFAULT_SHARD_BYTES)]
    pub shard_bytes: usize,

    /// Most customers in one shard (the byte limit applies too).
    #[arg(long, value_name = "N")]
    pub customers_per_shard: Option<usize>,

    /// Largest accepted input file, in bytes.
    #[arg(long, default_value_t = 1 << 30,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 32))]
    pub max_config_bytes: usize,
}

/// Flags of `control-plane validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The RoutingConfig file (YAML or JSON).
    pub file: PathBuf,

    /// Largest accepted file, in bytes (as `run --max-config-bytes`).
    #[arg(long, default_value_t = routing_model::parse::DEFAULT_MAX_CONFIG_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 30))]
    pub max_config_bytes: usize,

    /// Largest snapshot message the control plane may send, in bytes (as `run
    /// --max-message-bytes`): a file whose snapshot would be larger is refused.
    #[arg(long, default_value_t = routing_model::protocol::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
}

/// Flags of `control-plane run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Serve one RoutingConfig manifest from this file instead of watching a cluster. The file is
    /// hot-reloaded (change, SIGHUP) and an invalid version never replaces a valid one.
    #[arg(long, env = "CELLROUTE_FROM_FILE", value_name = "FILE")]
    pub from_file: Option<PathBuf>,

    /// Address of the HTTP server (health, readiness, metrics, debug). Restart to change.
    #[arg(long, env = "CELLROUTE_LISTEN", default_value = "0.0.0.0:8090")]
    pub listen: SocketAddr,

    /// Watch RoutingConfigs in this namespace only (default: all namespaces).
    #[arg(long, env = "CELLROUTE_WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// This replica's identity in leader election (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// Name of the leader-election Lease; replicas sharing it elect one status writer.
    #[arg(long, env = "CELLROUTE_LEASE_NAME", default_value = "cellroute-control-plane")]
    pub lease_name: String,

    /// Seconds a leader's lease stays valid without renewal. A clean shutdown releases the lease;
    /// either way another replica takes over within about this long.
    #[arg(long, env = "CELLROUTE_LEASE_DURATION", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(3..=300))]
    pub lease_duration: u64,

    /// Longest a SIGTERM or SIGINT takes to exit. Within it the control plane closes data-plane
    /// sessions, removes its status entries and releases its Leases; whatever is not done by
    /// then (the apiserver is unreachable) is left: the Leases expire on their own.
    #[arg(long, env = "CELLROUTE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Largest accepted config file for --from-file, in bytes.
    #[arg(long, env = "CELLROUTE_MAX_CONFIG_BYTES", default_value_t = routing_model::parse::DEFAULT_MAX_CONFIG_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 30))]
    pub max_config_bytes: usize,

    /// How long file events are collected before one reload (--from-file).
    #[arg(long, env = "CELLROUTE_RELOAD_DEBOUNCE", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub reload_debounce: Duration,

    /// Directory where --from-file records its versions (lineage, version, content hash), so a
    /// restart on unchanged content serves the version data planes already have. Default:
    /// `$STATE_DIRECTORY`, `$XDG_STATE_HOME/cellroute`, or `~/.local/state/cellroute`.
    #[arg(long, env = "CELLROUTE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Longest a steady stream of file events can delay a reload (--from-file): a file rewritten
    /// faster than --reload-debounce is still re-read at least this often.
    #[arg(long, env = "CELLROUTE_RELOAD_MAX_WAIT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub reload_max_wait: Duration,

    /// File of bearer tokens accepted from data planes, one per line (out of a cluster). In a
    /// cluster, data planes' ServiceAccount tokens are checked with TokenReview instead.
    #[arg(long, env = "CELLROUTE_STATIC_TOKEN_FILE", value_name = "FILE")]
    pub static_token_file: Option<PathBuf>,

    /// Accept data planes without a token (only for local demos and tests).
    #[arg(
        long,
        env = "CELLROUTE_ALLOW_UNAUTHENTICATED",
        conflicts_with = "static_token_file"
    )]
    pub allow_unauthenticated: bool,

    /// Let a data plane subscribe to RoutingConfigs outside its own namespace (TokenReview).
    #[arg(long, env = "CELLROUTE_ALLOW_CROSS_NAMESPACE")]
    pub allow_cross_namespace: bool,

    /// Most data planes connected at once to this replica; more get 503 and retry.
    #[arg(long, env = "CELLROUTE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Largest message sent to a data plane, in bytes. A version whose snapshot message would
    /// be larger is rejected, not served. (What data planes send is bounded at 64 KiB.)
    #[arg(long, env = "CELLROUTE_MAX_MESSAGE_BYTES", default_value_t = routing_model::protocol::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    /// How often the control plane pings each data plane.
    #[arg(long, env = "CELLROUTE_HEARTBEAT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,

    /// Silence after which a data plane's session is dropped.
    #[arg(long, env = "CELLROUTE_HEARTBEAT_TIMEOUT", default_value = "4s", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Duration,

    /// Time allowed for one send to a data plane; one that stops reading is dropped after it.
    #[arg(long, env = "CELLROUTE_SEND_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub send_timeout: Duration,

    /// File holding a bearer token that lets peers not on loopback read `/debug/*` (re-read on
    /// every request, so it can be rotated). Without it, `/debug/*` is served to loopback only.
    #[arg(long, env = "CELLROUTE_DEBUG_TOKEN_FILE", value_name = "FILE")]
    pub debug_token_file: Option<PathBuf>,

    /// PEM certificate chain: serve `wss://` and `https://` instead of plain text.
    #[arg(long, env = "CELLROUTE_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "CELLROUTE_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve the sidecar injector (a mutating admission webhook) over HTTPS on this address.
    /// Off by default; needs a cluster and --inject-config.
    #[arg(
        long,
        env = "CELLROUTE_INJECT_LISTEN",
        requires = "inject_config",
        conflicts_with = "from_file"
    )]
    pub inject_listen: Option<SocketAddr>,

    /// The sidecar the injector adds (YAML; the chart's `<release>-inject` ConfigMap). Read at
    /// start.
    #[arg(long, env = "CELLROUTE_INJECT_CONFIG", value_name = "FILE")]
    pub inject_config: Option<PathBuf>,

    /// MutatingWebhookConfiguration whose caBundle the control plane keeps equal to the CA of
    /// the certificate it makes.
    #[arg(
        long,
        env = "CELLROUTE_INJECT_WEBHOOK_CONFIG",
        value_name = "NAME",
        requires = "inject_cert_secret",
        conflicts_with = "inject_tls_cert"
    )]
    pub inject_webhook_config: Option<String>,

    /// Secret in the control plane's namespace (--lease-namespace, from POD_NAMESPACE) where it
    /// keeps the injector's CA and serving certificate; it must exist (the chart creates it).
    #[arg(
        long,
        env = "CELLROUTE_INJECT_CERT_SECRET",
        value_name = "NAME",
        requires = "inject_webhook_config"
    )]
    pub inject_cert_secret: Option<String>,

    /// DNS names and IP addresses of the injector's serving certificate, comma-separated (the
    /// names the API server calls it by).
    #[arg(
        long,
        env = "CELLROUTE_INJECT_CERT_DNS_NAMES",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub inject_cert_dns_names: Vec<String>,

    /// Validity of each serving certificate the control plane makes; renewed when a third is left.
    #[arg(long, env = "CELLROUTE_INJECT_CERT_VALIDITY", default_value = "365d", value_parser = humantime::parse_duration)]
    pub inject_cert_validity: Duration,

    /// How often the serving certificate, the Secret and the caBundle are checked.
    #[arg(long, env = "CELLROUTE_INJECT_CERT_CHECK", default_value = "1m", value_parser = humantime::parse_duration)]
    pub inject_cert_check: Duration,

    /// Serve the injector with this PEM certificate chain (cert-manager's) instead of making one;
    /// re-read on every check.
    #[arg(
        long,
        env = "CELLROUTE_INJECT_TLS_CERT",
        value_name = "FILE",
        requires = "inject_tls_key"
    )]
    pub inject_tls_cert: Option<PathBuf>,

    /// PEM private key of --inject-tls-cert.
    #[arg(
        long,
        env = "CELLROUTE_INJECT_TLS_KEY",
        value_name = "FILE",
        requires = "inject_tls_cert"
    )]
    pub inject_tls_key: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "CELLROUTE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax (for example `info` or `info,kube=debug`).
    #[arg(long, env = "CELLROUTE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
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
