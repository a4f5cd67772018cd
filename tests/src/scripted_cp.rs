//! A scripted control plane: the server side of the snapshot protocol, driven message by
//! message by a test, for testing the real data plane.
//!
//! The real control plane validates what it serves and keeps at most one pending snapshot per
//! session, so it can never send what some data-plane tests need: a burst of snapshots faster
//! than the data plane applies them, a snapshot the data plane must refuse with a very long
//! error, a `too_large` notice. This one accepts data-plane sessions on loopback (any token),
//! hands each to the test with its hello, and sends exactly what the test says; the test reads
//! every ACK and NACK. While a test waits for an answer the session pings, so the data plane's
//! heartbeat stays satisfied.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use routing_model::protocol::{PROTOCOL_VERSION, ServerMessage, SnapshotMessage, SnapshotRef, Welcome};
use routing_model::{ContentHash, RoutingConfigSpec};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// How often a session pings while the test waits for an answer.
const PING_EVERY: Duration = Duration::from_millis(250);

/// The listener and the sessions it accepted.
#[derive(Debug)]
pub struct ScriptedControlPlane {
    addr: SocketAddr,
    sessions: mpsc::Receiver<Session>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedControlPlane {
    /// Listens on a free loopback port.
    ///
    /// # Panics
    ///
    /// When it cannot bind.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (tx, sessions) = mpsc::channel(16);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Some(session) = Session::accept(stream).await {
                        let _ = tx.send(session).await;
                    }
                });
            }
        });
        Self { addr, sessions, task }
    }

    /// The URL to give the data plane's `--control-plane`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The next session that said hello.
    ///
    /// # Panics
    ///
    /// When none arrives within `timeout`.
    pub async fn session(&mut self, timeout: Duration) -> Session {
        tokio::time::timeout(timeout, self.sessions.recv())
            .await
            .unwrap_or_else(|_| panic!("no data plane said hello within {timeout:?}"))
            .expect("the listener is running")
    }
}

impl Drop for ScriptedControlPlane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One data plane's session.
#[derive(Debug)]
pub struct Session {
    ws: WebSocketStream<TcpStream>,
    /// The data plane's hello.
    pub hello: Value,
}

impl Session {
    async fn accept(stream: TcpStream) -> Option<Self> {
        let mut ws = tokio_tungstenite::accept_async(stream).await.ok()?;
        loop {
            match ws.next().await?.ok()? {
                Message::Text(text) => {
                    let hello: Value = serde_json::from_str(text.as_str()).ok()?;
                    return Some(Self { ws, hello });
                }
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    /// Sends `welcome` (not up to date: snapshots follow).
    ///
    /// # Panics
    ///
    /// When the data plane is gone.
    pub async fn welcome(&mut self) {
        self.send(&ServerMessage::Welcome(Welcome {
            protocol: PROTOCOL_VERSION,
            capabilities: vec![routing_model::protocol::CAP_FULL_SNAPSHOT.to_owned()],
            heartbeat_ms: PING_EVERY.as_millis() as u64,
            up_to_date: false,
        }))
        .await;
    }

    /// Sends one message as a text frame.
    ///
    /// # Panics
    ///
    /// When the data plane is gone.
    pub async fn send(&mut self, message: &ServerMessage) {
        let text = serde_json::to_string(message).expect("serialize");
        self.ws
            .send(Message::text(text))
            .await
            .expect("send to the data plane");
    }

    /// The next ACK or NACK (as JSON), pinging meanwhile.
    ///
    /// # Panics
    ///
    /// When the data plane closes the session or sends nothing within `timeout`.
    pub async fn answer(&mut self, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ping = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => panic!("no answer within {timeout:?}"),
                _ = ping.tick() => {
                    self.ws.send(Message::Ping(Default::default())).await.expect("ping");
                }
                frame = self.ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        return serde_json::from_str(text.as_str()).expect("an answer is JSON");
                    }
                    Some(Ok(Message::Close(frame))) => panic!("the data plane closed the session: {frame:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("the session failed: {e}"),
                    None => panic!("the data plane closed the connection"),
                },
            }
        }
    }
}

/// A snapshot of `spec` at `version` of lineage `lineage`, for `routing_config`, claiming the
/// spec's real content hash.
pub fn snapshot(routing_config: &str, lineage: &str, version: i64, spec: RoutingConfigSpec) -> ServerMessage {
    let hash = ContentHash::of_spec(&spec);
    ServerMessage::Snapshot(SnapshotMessage {
        routing_config: routing_config.to_owned(),
        snapshot: SnapshotRef {
            lineage: lineage.to_owned(),
            version,
            hash,
        },
        spec,
    })
}

/// A spec: `default` as the default placement, `customers` (id, placement) and `endpoints`
/// (placement, URL).
pub fn spec<'a>(
    default: &str,
    customers: impl IntoIterator<Item = (String, String)>,
    endpoints: impl IntoIterator<Item = (&'a str, String)>,
) -> RoutingConfigSpec {
    RoutingConfigSpec {
        customer_header: routing_model::manifest::DEFAULT_CUSTOMER_HEADER.to_owned(),
        default_placement: default.to_owned(),
        customer_to_placement: customers.into_iter().collect(),
        placement_to_endpoint: endpoints.into_iter().map(|(p, e)| (p.to_owned(), e)).collect(),
        rollout: None,
    }
}
