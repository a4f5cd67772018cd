//! N lightweight data-plane sessions in one process.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use routing_model::protocol::{
    CAP_DELTA, CAP_FULL_SNAPSHOT, CAP_GZIP, ClientMessage, Hello, PROTOCOL_VERSION, SnapshotRef,
};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::fast_ref::{GzipHead, Head, head};

/// Flags of `swarm subscribe`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The control plane's push endpoint, e.g. `ws://127.0.0.1:8090/v1/subscribe`.
    #[arg(long)]
    url: String,
    /// The RoutingConfig every client subscribes to (`namespace/name`).
    #[arg(long)]
    routing_config: String,
    /// How many sessions.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// File holding the bearer token (first line).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Client ids are this prefix plus a number.
    #[arg(long, default_value = "swarm-")]
    id_prefix: String,
    /// Sessions being opened at once.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Largest message accepted, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    max_message_bytes: usize,
    /// Do not offer the `gzip` capability: snapshots arrive as JSON text.
    #[arg(long)]
    no_gzip: bool,
    /// Offer the `delta` capability: a version whose base the client has arrives as the changes
    /// from it (ACKed like a snapshot; the client keeps no table).
    #[arg(long)]
    delta: bool,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

enum Event {
    Acked { client: usize, snapshot: SnapshotRef },
    Lost { client: usize, error: String },
}

/// Runs until a session is lost (exit 1) or stdin closes / the process is killed.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        runtime.worker_threads(n);
    }
    runtime.enable_all().build()?.block_on(swarm(args))
}

async fn swarm(args: Args) -> anyhow::Result<()> {
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --token-file {}", path.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let args = Arc::new(args);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    for client in 0..args.clients {
        let (args, token, tx, gate) = (args.clone(), token.clone(), tx.clone(), gate.clone());
        tokio::spawn(async move {
            if let Err(e) = session(client, &args, token.as_deref(), &gate, &tx).await {
                let _ = tx.send(Event::Lost {
                    client,
                    error: format!("{e:#}"),
                });
            }
        });
    }
    drop(tx);

    // Which snapshot each client last ACKed, and how many clients are on each.
    let mut at: Vec<Option<SnapshotRef>> = vec![None; args.clients];
    let mut on: Vec<(SnapshotRef, usize)> = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Acked { client, snapshot } => {
                if let Some(old) = at[client].replace(snapshot.clone())
                    && let Some((_, n)) = on.iter_mut().find(|(s, _)| *s == old)
                {
                    *n -= 1;
                }
                let n = match on.iter().position(|(s, _)| *s == snapshot) {
                    Some(i) => &mut on[i].1,
                    None => {
                        on.push((snapshot.clone(), 0));
                        &mut on.last_mut().expect("just pushed").1
                    }
                };
                *n += 1;
                if *n == args.clients {
                    println!(
                        "{}",
                        json!({"event": "synced", "clients": args.clients, "snapshot": snapshot})
                    );
                }
                on.retain(|(_, n)| *n > 0);
            }
            Event::Lost { client, error } => {
                println!("{}", json!({"event": "lost", "client": client, "error": error}));
                bail!("client {client} lost its session: {error}");
            }
        }
    }
    Ok(())
}

async fn session(
    client: usize,
    args: &Args,
    token: Option<&str>,
    gate: &Semaphore,
    events: &mpsc::UnboundedSender<Event>,
) -> anyhow::Result<()> {
    let mut request = args.url.as_str().into_client_request()?;
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
    }
    // Small buffers: thousands of these share one process.
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(args.max_message_bytes))
        .max_frame_size(Some(args.max_message_bytes));
    let permit = gate.acquire().await?;
    let (socket, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .context("connecting")?;
    let (mut sink, mut stream) = socket.split();
    let hello = ClientMessage::Hello(Hello {
        data_plane: format!("{}{client}", args.id_prefix),
        routing_config: args.routing_config.clone(),
        applied: None,
        protocol: PROTOCOL_VERSION,
        capabilities: {
            let mut offered = vec![CAP_FULL_SNAPSHOT.to_owned()];
            if !args.no_gzip {
                offered.push(CAP_GZIP.to_owned());
            }
            if args.delta {
                offered.push(CAP_DELTA.to_owned());
            }
            offered
        },
        max_message_bytes: None,
    });
    sink.send(text(&hello)?).await?;
    drop(permit);
    let mut gzip = GzipHead::default();
    while let Some(frame) = stream.next().await {
        match frame? {
            Message::Text(body) => {
                if let Some(snapshot) = on_message(head(body.as_str())?)? {
                    ack(&mut sink, snapshot, client, events).await?;
                }
            }
            Message::Binary(bytes) => {
                if let Some(snapshot) = on_message(gzip.head(&bytes, args.max_message_bytes)?)? {
                    ack(&mut sink, snapshot, client, events).await?;
                }
            }
            // Pongs are queued by tungstenite and flushed by the next read or send.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            Message::Close(frame) => bail!("closed by the control plane: {frame:?}"),
        }
    }
    bail!("the connection ended")
}

fn on_message(head: Head) -> anyhow::Result<Option<SnapshotRef>> {
    match head {
        Head::Snapshot(snapshot) => Ok(Some(snapshot)),
        Head::Welcome => Ok(None),
        Head::Other(message) => bail!("unexpected message: {message}"),
    }
}

async fn ack<S>(
    sink: &mut S,
    snapshot: SnapshotRef,
    client: usize,
    events: &mpsc::UnboundedSender<Event>,
) -> anyhow::Result<()>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    sink.send(text(&ClientMessage::Ack {
        snapshot: snapshot.clone(),
    })?)
    .await?;
    let _ = events.send(Event::Acked { client, snapshot });
    Ok(())
}

fn text(message: &ClientMessage) -> anyhow::Result<Message> {
    Ok(Message::Text(Utf8Bytes::from(serde_json::to_string(message)?)))
}
