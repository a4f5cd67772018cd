//! `swarm`: load for the control plane's snapshot push, for `bench/run` (rows 1 and 5 of the
//! benchmark issue). Not part of cellroute.
//!
//! - `swarm subscribe` opens N data-plane protocol sessions from one process. Each client does
//!   what a data plane must do to take part (hello, read every snapshot, ACK it, answer pings)
//!   and nothing a data plane does to apply a table, so a thousand of them fit on one machine.
//! - `swarm loopback` measures this machine's loopback TCP throughput and round trip, the
//!   physical limits the convergence benchmark compares against in the same run.

mod fast_ref;
mod loopback;
mod subscribe;

use clap::{Parser, Subcommand};

/// Benchmark load for cellroute's snapshot push.
#[derive(Debug, Parser)]
#[command(name = "swarm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open N lightweight data-plane sessions and ACK every snapshot. Prints one JSON line per
    /// event on stdout: `{"event":"synced","snapshot":{..},"clients":N}` once every client has
    /// ACKed a snapshot; exits non-zero (after a `lost` line) if any session ends.
    Subscribe(subscribe::Args),
    /// Measure loopback TCP throughput and round-trip time; prints one JSON object.
    Loopback(loopback::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Subscribe(args) => subscribe::run(args),
        Command::Loopback(args) => loopback::run(&args),
    }
}
