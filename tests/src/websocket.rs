//! A WebSocket echo "cell" and client (tokio-tungstenite, a real implementation on both ends)
//! for the tests that tunnel WebSocket through the data plane.
//!
//! The cell answers each text message with `"<cell>: <message>"` and each binary message with
//! the same bytes, and records the `x-customer-id` of each handshake. It reads the handshake
//! with the customer header the data plane routed on, so a test sees where each session landed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A running WebSocket echo cell; stops accepting when dropped.
#[derive(Debug)]
pub struct WsCell {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl WsCell {
    /// Starts a WebSocket echo cell called `name` on an ephemeral loopback port.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind WebSocket cell");
        let addr = listener.local_addr().expect("WebSocket cell address");
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let name: Arc<str> = Arc::from(name);
        let seen = handshakes.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(echo(stream, name.clone(), seen.clone()));
            }
        });
        Self {
            addr,
            handshakes,
            task,
        }
    }

    /// Its endpoint for a RoutingConfig.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `x-customer-id` of every handshake so far.
    pub fn handshakes(&self) -> Vec<String> {
        self.handshakes.lock().expect("handshakes lock").clone()
    }
}

impl Drop for WsCell {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(stream: TcpStream, name: Arc<str>, seen: Arc<Mutex<Vec<String>>>) {
    // The callback's signature is tungstenite's, error type included.
    #[allow(clippy::result_large_err)]
    let record = |req: &Request, resp: Response| {
        let customer = req
            .headers()
            .get("x-customer-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        seen.lock().expect("handshakes lock").push(customer);
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        let reply = match message {
            Message::Text(text) => Message::text(format!("{name}: {text}")),
            Message::Binary(bytes) => Message::Binary(bytes),
            // tungstenite answers a close itself; reading on flushes that answer and ends.
            Message::Close(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        if ws.send(reply).await.is_err() {
            return;
        }
    }
}

/// A WebSocket session through the data plane.
#[derive(Debug)]
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Opens `ws://addr/path` as `customer`.
    ///
    /// # Errors
    ///
    /// The handshake's error (for example a non-101 answer).
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        customer: &str,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let mut request = format!("ws://{addr}{path}").into_client_request()?;
        request.headers_mut().insert(
            "x-customer-id",
            customer.parse().expect("customer id is a valid header value"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self { ws })
    }

    /// Sends a text message and returns the text of the reply.
    ///
    /// # Panics
    ///
    /// When the session fails or the reply is not text.
    pub async fn text(&mut self, message: &str) -> String {
        self.ws.send(Message::text(message)).await.expect("send text");
        match self.next().await {
            Message::Text(text) => text.to_string(),
            other => panic!("expected a text reply, got {other:?}"),
        }
    }

    /// Sends a binary message and returns the bytes of the reply.
    ///
    /// # Panics
    ///
    /// When the session fails or the reply is not binary.
    pub async fn binary(&mut self, payload: Vec<u8>) -> Bytes {
        self.ws
            .send(Message::Binary(payload.into()))
            .await
            .expect("send binary");
        match self.next().await {
            Message::Binary(bytes) => bytes,
            other => panic!("expected a binary reply, got {other:?}"),
        }
    }

    async fn next(&mut self) -> Message {
        tokio::time::timeout(crate::client::REQUEST_TIMEOUT, self.ws.next())
            .await
            .expect("WebSocket reply within the request timeout")
            .expect("WebSocket session open")
            .expect("WebSocket message")
    }

    /// Closes the session and waits for the cell's close frame.
    ///
    /// # Panics
    ///
    /// When the close handshake fails.
    pub async fn close(mut self) {
        self.ws.close(None).await.expect("send close");
        loop {
            match tokio::time::timeout(crate::client::REQUEST_TIMEOUT, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(_))) | None) => return,
                Ok(Some(Err(
                    tokio_tungstenite::tungstenite::Error::ConnectionClosed
                    | tokio_tungstenite::tungstenite::Error::AlreadyClosed,
                ))) => return,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("close handshake failed: {e}"),
                Err(_) => panic!("no close frame within the request timeout"),
            }
        }
    }
}
