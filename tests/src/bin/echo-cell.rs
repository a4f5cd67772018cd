//! `echo-cell`: the test suite's echo cell as a standalone server, for the demo script and
//! benchmarks.
//!
//! It prints exactly one line, `listening on ADDR`, to stdout once bound, so a script started
//! with `--listen 127.0.0.1:0` can read the port it got. It runs until SIGINT or SIGTERM.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use cellroute_tests::echo::{Counters, serve};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

/// An HTTP server that answers every request with a JSON description of it.
#[derive(Debug, Parser)]
#[command(name = "echo-cell", version)]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Cell name reported in every response's `cell` field.
    #[arg(long)]
    name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {addr}")?;
    stdout.flush()?;
    drop(stdout);

    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        () = serve(listener, Arc::from(args.name.as_str()), Arc::new(Counters::default())) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
