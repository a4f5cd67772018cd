//! This machine's loopback limits: TCP throughput and round-trip time, measured with plain
//! blocking sockets so the figures are the kernel's, not a runtime's.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

/// Flags of `swarm loopback`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Bytes sent per throughput measurement (split over the streams).
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Round trips timed for the RTT.
    #[arg(long, default_value_t = 2000)]
    rounds: usize,
}

const CHUNK: usize = 256 * 1024;

/// Prints `{"throughput": {"1": B/s, "2": B/s}, "best_bytes_per_s", "rtt_seconds": {p50, min}}`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let one = throughput(args.bytes, 1)?;
    let two = throughput(args.bytes, 2)?;
    let mut rtts = round_trips(args.rounds)?;
    rtts.sort();
    let p50 = rtts[rtts.len() / 2].as_secs_f64();
    let min = rtts[0].as_secs_f64();
    println!(
        "{}",
        json!({
            "throughput": {"1": one, "2": two},
            "best_bytes_per_s": one.max(two),
            "rtt_seconds": {"p50": p50, "min": min},
            "bytes": args.bytes,
            "rounds": args.rounds,
        })
    );
    Ok(())
}

/// Bytes per second moved through `streams` connections at once.
fn throughput(bytes: u64, streams: usize) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let per_stream = bytes / streams as u64;
    let started = Instant::now();
    // Connect first, then accept: the listener's backlog holds the connections meanwhile.
    let senders: Vec<_> = (0..streams)
        .map(|_| {
            let mut conn = TcpStream::connect(addr)?;
            Ok::<_, std::io::Error>(thread::spawn(move || -> std::io::Result<()> {
                let chunk = vec![7u8; CHUNK];
                let mut left = per_stream;
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    conn.write_all(&chunk[..n])?;
                    left -= n as u64;
                }
                Ok(())
            }))
        })
        .collect::<Result<_, _>>()?;
    let receivers: Vec<_> = (0..streams)
        .map(|_| {
            let (mut conn, _) = listener.accept()?;
            Ok::<_, std::io::Error>(thread::spawn(move || -> std::io::Result<u64> {
                let mut buf = vec![0u8; CHUNK];
                let mut got = 0u64;
                loop {
                    let n = conn.read(&mut buf)?;
                    if n == 0 {
                        return Ok(got);
                    }
                    got += n as u64;
                }
            }))
        })
        .collect::<Result<_, _>>()?;
    for s in senders {
        s.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
    }
    let mut total = 0;
    for r in receivers {
        total += r.join().map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// One-byte ping-pongs over one connection with Nagle off.
fn round_trips(rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut conn = TcpStream::connect(listener.local_addr()?)?;
    let (mut peer, _) = listener.accept()?;
    conn.set_nodelay(true)?;
    peer.set_nodelay(true)?;
    let echo = thread::spawn(move || -> std::io::Result<()> {
        let mut b = [0u8; 1];
        while peer.read(&mut b)? == 1 {
            peer.write_all(&b)?;
        }
        Ok(())
    });
    let mut times = Vec::with_capacity(rounds);
    let mut b = [0u8; 1];
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        conn.write_all(&b)?;
        conn.read_exact(&mut b)?;
        times.push(t.elapsed());
    }
    drop(conn);
    echo.join().map_err(|_| anyhow::anyhow!("echo panicked"))??;
    Ok(times)
}
