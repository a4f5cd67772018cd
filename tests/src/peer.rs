//! A data plane driven by hand over [`crate::ws`]'s raw client, for the tests that play an
//! attacker with a valid token: it sends exactly the hello, ACK, NACK or garbage a test asks
//! for, and reads what the control plane answers (answering pings on the way).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::ws::{self, Frame, OP_PONG, RawWs, Refused, Upgrade};

/// How long a peer waits for the control plane's next message or its close.
pub const PEER_WAIT: Duration = Duration::from_secs(10);

/// A hand-driven WebSocket session with the control plane.
#[derive(Debug)]
pub struct Peer {
    ws: RawWs,
    what: String,
}

impl Peer {
    /// Connects to `addr`'s subscribe path with `Authorization: Bearer <token>`.
    ///
    /// # Errors
    ///
    /// The refusal, when the control plane does not upgrade.
    ///
    /// # Panics
    ///
    /// When the TCP connection or the HTTP exchange fails.
    pub async fn connect(addr: SocketAddr, token: &str, what: &str) -> Result<Self, Refused> {
        let bearer = format!("Bearer {token}");
        match ws::connect(addr, routing_model::protocol::SUBSCRIBE_PATH, Some(&bearer))
            .await
            .unwrap_or_else(|e| panic!("{what}: connect to the control plane: {e}"))
        {
            Upgrade::Accepted(ws) => Ok(Self {
                ws,
                what: what.to_owned(),
            }),
            Upgrade::Refused(refused) => Err(refused),
        }
    }

    /// [`Peer::connect`] that must be accepted.
    ///
    /// # Panics
    ///
    /// When the upgrade is refused.
    pub async fn open(addr: SocketAddr, token: &str, what: &str) -> Self {
        Self::connect(addr, token, what)
            .await
            .unwrap_or_else(|refused| panic!("{what}: the upgrade was refused: {refused}"))
    }

    /// Sends a text message.
    ///
    /// # Panics
    ///
    /// When the socket write fails.
    pub async fn send(&mut self, text: &str) {
        self.ws
            .send_text(text)
            .await
            .unwrap_or_else(|e| panic!("{}: send: {e}", self.what));
    }

    /// Sends bytes as they are (a frame built beforehand with [`crate::ws::encode_frame`]),
    /// returning a failure (the control plane may already have closed).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.ws.send_raw(bytes).await
    }

    /// Sends a text message, ignoring a failure (the control plane may already have closed).
    pub async fn try_send(&mut self, text: &str) -> io::Result<()> {
        self.ws.send_text(text).await
    }

    /// Sends `{"type":"ack","snapshot":snapshot}`.
    pub async fn ack(&mut self, snapshot: &Value) {
        self.send(&json!({"type": "ack", "snapshot": snapshot}).to_string())
            .await;
    }

    /// Sends `{"type":"nack","snapshot":snapshot,"error":error}`.
    pub async fn nack(&mut self, snapshot: &Value, error: &str) {
        self.send(&json!({"type": "nack", "snapshot": snapshot, "error": error}).to_string())
            .await;
    }

    /// The next text message as JSON.
    ///
    /// # Panics
    ///
    /// When none comes within [`PEER_WAIT`], the session ends, or it is not JSON text.
    pub async fn next(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(PEER_WAIT, self.ws.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: no message within {PEER_WAIT:?}", self.what))
                .unwrap_or_else(|e| panic!("{}: {e}", self.what))
                .unwrap_or_else(|| panic!("{}: the connection ended", self.what));
            match frame {
                Frame::Ping(payload) => {
                    let _ = self.ws.send_frame(true, OP_PONG, &payload).await;
                }
                Frame::Pong(_) => {}
                Frame::Text(text) => {
                    return serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("{}: {e}: {text}", self.what));
                }
                other => panic!("{}: expected a text message, got {other:?}", self.what),
            }
        }
    }

    /// The next message, which must be of `kind` (`welcome`, `snapshot`, `too_large`, ...).
    ///
    /// # Panics
    ///
    /// When it is another kind.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let message = self.next().await;
        assert_eq!(message["type"], kind, "{}: {message}", self.what);
        message
    }

    /// The next message, which must carry a new version: a `snapshot`, or a `delta` (the peer
    /// offered `delta`; both name the version in their `snapshot` field).
    ///
    /// # Panics
    ///
    /// When it is another kind.
    pub async fn expect_version(&mut self) -> Value {
        let message = self.next().await;
        assert!(
            message["type"] == "snapshot" || message["type"] == "delta",
            "{}: expected a snapshot or a delta: {message}",
            self.what
        );
        message
    }

    /// Sends `hello`, and reads the welcome and, unless the welcome says up to date, the
    /// snapshot that follows; returns the snapshot's `snapshot` field (`null` when up to date).
    pub async fn subscribe(&mut self, hello: &str) -> Value {
        self.send(hello).await;
        let welcome = self.expect("welcome").await;
        if welcome["up_to_date"] == true {
            return Value::Null;
        }
        self.expect("snapshot").await["snapshot"].clone()
    }

    /// Reads until the control plane closes: its close code and reason (`None` when the
    /// connection ended without a close frame).
    ///
    /// # Panics
    ///
    /// When it does not close within [`PEER_WAIT`].
    pub async fn closed(&mut self) -> Option<(Option<u16>, String)> {
        tokio::time::timeout(PEER_WAIT, self.ws.until_closed())
            .await
            .unwrap_or_else(|_| panic!("{}: not closed within {PEER_WAIT:?}", self.what))
            .unwrap_or_else(|e| panic!("{}: {e}", self.what))
    }

    /// Reads until the control plane closes; returns the `error` message it sent before its
    /// close (if any) and the close frame.
    pub async fn refused(&mut self) -> (Option<String>, Option<(Option<u16>, String)>) {
        let mut error = None;
        loop {
            let frame = tokio::time::timeout(PEER_WAIT, self.ws.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: not closed within {PEER_WAIT:?}", self.what));
            match frame {
                Ok(Some(Frame::Text(text))) => {
                    let message: Value = serde_json::from_str(&text).unwrap_or_default();
                    if message["type"] == "error" {
                        error = message["message"].as_str().map(str::to_owned);
                    }
                }
                Ok(Some(Frame::Close(code, reason))) => return (error, Some((code, reason))),
                Ok(Some(_)) => {}
                Ok(None) => return (error, None),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (error, None),
                Err(e) => panic!("{}: {e}", self.what),
            }
        }
    }
}

/// A hello of data plane `id` for `routing_config`, with `applied` (a snapshot reference as
/// JSON, or `null`), the capabilities a real data plane offers but `gzip` (so every message is a
/// text frame), and `max_message_bytes` if given.
pub fn hello(id: &str, routing_config: &str, applied: &Value, max_message_bytes: Option<u64>) -> String {
    let mut hello = json!({
        "type": "hello",
        "data_plane": id,
        "routing_config": routing_config,
        "applied": applied,
        "protocol": routing_model::protocol::PROTOCOL_VERSION,
        "capabilities": [
            routing_model::protocol::CAP_FULL_SNAPSHOT,
            routing_model::protocol::CAP_DELTA,
        ],
    });
    if let Some(limit) = max_message_bytes {
        hello["max_message_bytes"] = json!(limit);
    }
    hello.to_string()
}

/// The resident set size of process `pid` in bytes, from `/proc/PID/status` (`VmRSS`).
///
/// # Panics
///
/// When the file cannot be read or has no `VmRSS` line.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{status}"));
    kib * 1024
}
