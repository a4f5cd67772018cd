//! A raw WebSocket client for the snapshot push tests, written against RFC 6455 directly.
//!
//! The real data plane speaks the protocol correctly; the push tests also need clients that do
//! not: one that sends no token, an oversized or unmasked frame, a binary frame or garbage, one
//! that stops reading, and a thousand cheap ones in one process. A library client refuses to
//! produce most of those, so this one writes frames byte by byte: [`RawWs::send_frame`] sends any
//! opcode, masked as a client must, and [`RawWs::send_raw`] sends anything at all.
//!
//! What it does not do: extensions, TLS, and checking `Sec-WebSocket-Accept` (the tests check
//! the status code; a server that answers 101 wrongly would fail at the first frame anyway).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
/// Text frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub const OP_PING: u8 = 0x9;
/// Pong frame.
pub const OP_PONG: u8 = 0xA;

/// Close code: protocol error.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Close code: policy violation.
pub const CLOSE_POLICY: u16 = 1008;
/// Close code: message too big.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// The RFC 6455 sample key; any 16 bytes in base64 will do for a client.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Largest frame payload [`RawWs::recv`] accepts, so a confused server cannot make a test
/// allocate without bound.
const MAX_RECEIVE: u64 = 64 * 1024 * 1024;

/// One message or control frame from the server (continuations already joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A ping.
    Ping(Vec<u8>),
    /// A pong.
    Pong(Vec<u8>),
    /// A close frame: its code (if any) and reason.
    Close(Option<u16>, String),
}

/// An HTTP answer to the upgrade request other than `101 Switching Protocols`.
#[derive(Debug, Clone)]
pub struct Refused {
    /// Status code.
    pub status: u16,
    /// Status line and headers, as text.
    pub head: String,
    /// The body (read by `content-length`).
    pub body: Vec<u8>,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.head, String::from_utf8_lossy(&self.body))
    }
}

/// What became of an upgrade request.
#[derive(Debug)]
pub enum Upgrade {
    /// `101`: the socket now speaks WebSocket.
    Accepted(RawWs),
    /// Anything else.
    Refused(Refused),
}

impl Upgrade {
    /// The WebSocket, or a panic naming what the server answered instead.
    ///
    /// # Panics
    ///
    /// When the upgrade was refused.
    pub fn expect_accepted(self) -> RawWs {
        match self {
            Upgrade::Accepted(ws) => ws,
            Upgrade::Refused(refused) => panic!("the upgrade was refused: {refused}"),
        }
    }
}

/// A client WebSocket over a plain TCP stream.
#[derive(Debug)]
pub struct RawWs {
    io: BufReader<TcpStream>,
    /// Bytes of a fragmented message received so far, and its opcode.
    partial: Option<(u8, Vec<u8>)>,
}

/// Connects to `addr` and asks to upgrade `path`, sending `authorization` as the
/// `Authorization` header when given.
///
/// # Errors
///
/// When the TCP connection or the HTTP exchange fails.
pub async fn connect(addr: SocketAddr, path: &str, authorization: Option<&str>) -> io::Result<Upgrade> {
    let stream = TcpStream::connect(addr).await?;
    upgrade(stream, addr, path, authorization).await
}

/// Asks to upgrade `path` over an already connected `stream` (for sockets with special
/// options, such as a tiny receive buffer).
///
/// # Errors
///
/// When the HTTP exchange fails.
pub async fn upgrade(
    stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> io::Result<Upgrade> {
    stream.set_nodelay(true)?;
    let mut io = BufReader::new(stream);
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(value) = authorization {
        request.push_str(&format!("Authorization: {value}\r\n"));
    }
    request.push_str("\r\n");
    io.get_mut().write_all(request.as_bytes()).await?;

    let (status, head, content_length) = read_head(&mut io).await?;
    if status == 101 {
        return Ok(Upgrade::Accepted(RawWs { io, partial: None }));
    }
    let mut body = vec![0; content_length.unwrap_or(0)];
    io.read_exact(&mut body).await?;
    Ok(Upgrade::Refused(Refused { status, head, body }))
}

/// Reads an HTTP response head: status, the head as text, and `content-length`.
async fn read_head(io: &mut BufReader<TcpStream>) -> io::Result<(u16, String, Option<usize>)> {
    let mut head = String::new();
    let mut content_length = None;
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed in the response head: {head:?}"),
            ));
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().ok();
        }
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line: {head:?}")))?;
    Ok((status, head, content_length))
}

/// A fresh masking key per frame; clients must mask, and the value is otherwise arbitrary.
fn mask_key() -> [u8; 4] {
    static NEXT: AtomicU32 = AtomicU32::new(0x5eed_1234);
    NEXT.fetch_add(0x9e37_79b9, Ordering::Relaxed).to_be_bytes()
}

/// Encodes one frame; `mask` is `None` only to produce an illegal unmasked client frame.
pub fn encode_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

impl RawWs {
    /// Sends one masked frame.
    ///
    /// # Errors
    ///
    /// When the socket write fails.
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.send_raw(&encode_frame(fin, opcode, payload, Some(mask_key())))
            .await
    }

    /// Sends a text message in one frame.
    ///
    /// # Errors
    ///
    /// When the socket write fails.
    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send_frame(true, OP_TEXT, text.as_bytes()).await
    }

    /// Sends arbitrary bytes on the socket.
    ///
    /// # Errors
    ///
    /// When the socket write fails.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.get_mut().write_all(bytes).await
    }

    /// Receives the next message or control frame; `None` when the server closed the TCP
    /// connection at a frame boundary.
    ///
    /// # Errors
    ///
    /// When the socket fails, or the bytes are not a valid server frame.
    pub async fn recv(&mut self) -> io::Result<Option<Frame>> {
        loop {
            let first = match self.io.read_u8().await {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            };
            let second = self.io.read_u8().await?;
            let fin = first & 0x80 != 0;
            let opcode = first & 0x0f;
            let masked = second & 0x80 != 0;
            let len = match second & 0x7f {
                126 => u64::from(self.io.read_u16().await?),
                127 => self.io.read_u64().await?,
                n => u64::from(n),
            };
            if len > MAX_RECEIVE {
                return Err(invalid(format!("a {len}-byte frame from the server")));
            }
            let mut key = [0u8; 4];
            if masked {
                self.io.read_exact(&mut key).await?;
            }
            let mut payload = vec![0; len as usize];
            self.io.read_exact(&mut payload).await?;
            if masked {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= key[i % 4];
                }
            }
            let (opcode, payload) = match opcode {
                OP_CONTINUATION => {
                    let (op, mut data) = self
                        .partial
                        .take()
                        .ok_or_else(|| invalid("a continuation frame without a message".into()))?;
                    data.extend_from_slice(&payload);
                    if !fin {
                        self.partial = Some((op, data));
                        continue;
                    }
                    (op, data)
                }
                OP_TEXT | OP_BINARY if !fin => {
                    self.partial = Some((opcode, payload));
                    continue;
                }
                _ => (opcode, payload),
            };
            return Ok(Some(match opcode {
                OP_TEXT => Frame::Text(
                    String::from_utf8(payload)
                        .map_err(|e| invalid(format!("text frame is not UTF-8: {e}")))?,
                ),
                OP_BINARY => Frame::Binary(payload),
                OP_PING => Frame::Ping(payload),
                OP_PONG => Frame::Pong(payload),
                OP_CLOSE => {
                    let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
                    Frame::Close(code, reason)
                }
                other => return Err(invalid(format!("opcode {other:#x} from the server"))),
            }));
        }
    }

    /// Reads until the server closes: returns its close frame, or `None` when the connection
    /// ended without one. Pings are answered; messages are skipped.
    ///
    /// # Errors
    ///
    /// When the socket fails other than by a reset.
    pub async fn until_closed(&mut self) -> io::Result<Option<(Option<u16>, String)>> {
        loop {
            match self.recv().await {
                Ok(Some(Frame::Close(code, reason))) => return Ok(Some((code, reason))),
                Ok(Some(Frame::Ping(payload))) => {
                    // The server may already be gone; the close is what matters.
                    let _ = self.send_frame(true, OP_PONG, &payload).await;
                }
                Ok(Some(_)) => {}
                Ok(None) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_encode_with_the_three_length_forms() {
        let small = encode_frame(true, OP_TEXT, b"hi", None);
        assert_eq!(small, [0x81, 2, b'h', b'i']);
        let medium = encode_frame(true, OP_BINARY, &[0; 300], Some([1, 2, 3, 4]));
        assert_eq!(&medium[..4], &[0x82, 0x80 | 126, 1, 44]);
        assert_eq!(&medium[4..8], &[1, 2, 3, 4]);
        assert_eq!(&medium[8..12], &[1, 2, 3, 4], "zeros XOR the key");
        let large = encode_frame(false, OP_TEXT, &[0; 70_000], None);
        assert_eq!(&large[..2], &[0x01, 127]);
        assert_eq!(u64::from_be_bytes(large[2..10].try_into().unwrap()), 70_000);
    }
}
