//! One data plane's session.
//!
//! 1. The first message must be a `hello` (within the heartbeat timeout), naming a RoutingConfig
//!    the data plane may subscribe to.
//! 2. The control plane answers `welcome`, then the served snapshot only if the data plane does
//!    not already have it, then every newly published version (latest-wins).
//! 3. ACK/NACK update the registry. Pings flow both ways; silence past the timeout, a send that
//!    does not finish in time, an oversized or garbage frame end the session, never the process.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use futures::{SinkExt, StreamExt};
use routing_model::protocol::{
    CAP_FULL_SNAPSHOT, CAP_GZIP, ClientMessage, Hello, PROTOCOL_VERSION, ServerMessage, Welcome,
    check_object_ref,
};

use super::PushState;
use super::auth::Identity;
use super::publisher::Published;
use crate::snapshot::ObjectKey;

/// Why a session ended, for the log.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("the control plane is shutting down")]
    Shutdown,
    #[error("the data plane closed the session")]
    ClosedByPeer,
    #[error("no message for {0:?} (heartbeat timeout)")]
    Silent(std::time::Duration),
    #[error("a send did not complete within {0:?}: the data plane is not reading")]
    Stuck(std::time::Duration),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("socket error: {0}")]
    Socket(#[from] axum::Error),
}

/// Runs a session to its end.
pub async fn run(socket: WebSocket, remote: SocketAddr, identity: Identity, s: PushState) {
    let (mut sink, mut stream) = socket.split();
    let hello = match first_hello(&mut stream, &s).await {
        Ok(hello) => hello,
        Err(end) => {
            tracing::info!(%remote, reason = %end, "data plane session refused before hello");
            s.metrics.refused("bad-hello");
            let _ = sink.send(close(&end)).await;
            return;
        }
    };
    if let Err(why) =
        check_object_ref(&hello.routing_config).and_then(|()| identity.may_subscribe(&hello.routing_config))
    {
        s.metrics.refused("forbidden");
        tracing::warn!(%remote, data_plane = %hello.data_plane, user = %identity.user, %why, "subscription refused");
        let error = ServerMessage::Error { message: why.clone() };
        let _ = sink.send(text(&error)).await;
        let _ = sink.send(close(&End::Refused(why))).await;
        return;
    }
    let key = ObjectKey::parse(&hello.routing_config);
    let session = s.registry.connect(
        &hello.data_plane,
        &hello.routing_config,
        &identity.user,
        &remote.to_string(),
    );
    s.registry
        .applied(&hello.data_plane, session, hello.applied.clone());
    s.metrics.connected_data_planes.inc();
    tracing::info!(%remote, data_plane = %hello.data_plane, routing_config = %hello.routing_config, user = %identity.user, "data plane connected");

    let end = serve(&mut sink, &mut stream, &hello, session, &key, &s).await;
    s.registry.disconnect(&hello.data_plane, session);
    s.metrics.connected_data_planes.dec();
    tracing::info!(%remote, data_plane = %hello.data_plane, reason = %end, "data plane session ended");
    let _ = tokio::time::timeout(s.settings.send_timeout, sink.send(close(&end))).await;
}

type Sink = futures::stream::SplitSink<WebSocket, Message>;
type Stream = futures::stream::SplitStream<WebSocket>;

async fn first_hello(stream: &mut Stream, s: &PushState) -> Result<Hello, End> {
    let deadline = s.settings.heartbeat_timeout;
    loop {
        let frame = tokio::time::timeout(deadline, stream.next())
            .await
            .map_err(|_| End::Silent(deadline))?
            .ok_or(End::ClosedByPeer)??;
        match frame {
            Message::Text(body) => {
                return match serde_json::from_str::<ClientMessage>(body.as_str()) {
                    Ok(ClientMessage::Hello(hello)) if hello.protocol == PROTOCOL_VERSION => Ok(hello),
                    Ok(ClientMessage::Hello(hello)) => Err(End::Protocol(format!(
                        "protocol version {} is not supported (this control plane speaks {PROTOCOL_VERSION})",
                        hello.protocol
                    ))),
                    Ok(_) => Err(End::Protocol("the first message must be a hello".into())),
                    Err(e) => Err(End::Protocol(format!("unreadable message: {e}"))),
                };
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return Err(End::ClosedByPeer),
            Message::Binary(_) => {
                return Err(End::Protocol(
                    "binary messages are not part of the protocol".into(),
                ));
            }
        }
    }
}

async fn serve(
    sink: &mut Sink,
    stream: &mut Stream,
    hello: &Hello,
    session: u64,
    key: &ObjectKey,
    s: &PushState,
) -> End {
    let mut updates = s.publisher.subscribe(key);
    let current = updates.borrow_and_update().clone();
    let up_to_date =
        matches!(&current, Published::Snapshot(e) if Some(&e.reference) == hello.applied.as_ref());
    // Capabilities are only used when the data plane offered them.
    let gzip = hello.capabilities.iter().any(|c| c == CAP_GZIP);
    let mut capabilities = vec![CAP_FULL_SNAPSHOT.to_owned()];
    if gzip {
        capabilities.push(CAP_GZIP.to_owned());
    }
    let welcome = ServerMessage::Welcome(Welcome {
        protocol: PROTOCOL_VERSION,
        capabilities,
        heartbeat_ms: s.settings.heartbeat.as_millis() as u64,
        up_to_date,
    });
    if let Err(end) = send(sink, text(&welcome), s).await {
        return end;
    }
    if !up_to_date && let Err(end) = publish(sink, &current, key, gzip, s).await {
        return end;
    }
    let mut ping = tokio::time::interval(s.settings.heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    // Convergence is measured for versions accepted while this session was open; a data plane
    // that connects later is catching up, not converging.
    let session_start = SystemTime::now();
    loop {
        tokio::select! {
            () = s.shutdown.cancelled() => return End::Shutdown,
            changed = updates.changed() => {
                if changed.is_err() {
                    return End::Shutdown;
                }
                let next = updates.borrow_and_update().clone();
                if let Err(end) = publish(sink, &next, key, gzip, s).await {
                    return end;
                }
                // A large snapshot can take seconds to send to a busy fleet, and nothing is read
                // meanwhile; a send that completed shows the data plane is reading, so that time
                // is not silence.
                last_seen = Instant::now();
            }
            _ = ping.tick() => {
                if last_seen.elapsed() > s.settings.heartbeat_timeout {
                    return End::Silent(s.settings.heartbeat_timeout);
                }
                if let Err(end) = send(sink, Message::Ping(Default::default()), s).await {
                    return end;
                }
            }
            frame = stream.next() => {
                let frame = match frame {
                    None => return End::ClosedByPeer,
                    Some(Err(e)) => return End::Socket(e),
                    Some(Ok(frame)) => frame,
                };
                last_seen = Instant::now();
                match frame {
                    Message::Text(body) => match serde_json::from_str::<ClientMessage>(body.as_str()) {
                        Ok(ClientMessage::Ack { snapshot }) => {
                            s.metrics.acks.inc();
                            if let Published::Snapshot(current) = &*updates.borrow()
                                && current.reference == snapshot
                                && current.accepted_at >= session_start
                                && let Ok(age) = SystemTime::now().duration_since(current.accepted_at)
                            {
                                s.metrics.convergence.observe(age.as_secs_f64());
                            }
                            s.registry.ack(&hello.data_plane, session, snapshot);
                        }
                        Ok(ClientMessage::Nack { snapshot, error }) => {
                            s.metrics.nacks.inc();
                            tracing::warn!(data_plane = %hello.data_plane, version = snapshot.version, %error, "data plane rejected a snapshot");
                            s.registry.nack(&hello.data_plane, session, snapshot, error);
                        }
                        Ok(ClientMessage::Hello(_)) => return End::Protocol("hello sent twice".into()),
                        Err(e) => return End::Protocol(format!("unreadable message: {e}")),
                    },
                    Message::Close(_) => return End::ClosedByPeer,
                    Message::Binary(_) => return End::Protocol("binary messages are not part of the protocol".into()),
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
        }
    }
}

async fn publish(
    sink: &mut Sink,
    published: &Published,
    key: &ObjectKey,
    gzip: bool,
    s: &PushState,
) -> Result<(), End> {
    let message = match published {
        Published::Snapshot(encoded) => {
            s.metrics.pushes.inc();
            if gzip {
                Message::Binary(encoded.gzip.clone())
            } else {
                Message::Text(encoded.text.clone())
            }
        }
        Published::Missing(reason) => text(&ServerMessage::Missing {
            routing_config: key.to_string(),
            reason: *reason,
        }),
    };
    send(sink, message, s).await
}

/// Sends with a deadline: a data plane that stops reading fills its socket, and then this
/// session (and only this one) ends.
async fn send(sink: &mut Sink, message: Message, s: &PushState) -> Result<(), End> {
    match tokio::time::timeout(s.settings.send_timeout, sink.send(message)).await {
        Err(_) => Err(End::Stuck(s.settings.send_timeout)),
        Ok(Err(e)) => Err(End::Socket(e)),
        Ok(Ok(())) => Ok(()),
    }
}

/// The close code a socket-level error deserves: 1009 for an oversized message, 1002 for broken
/// framing, 1000 otherwise.
fn socket_close_code(e: &axum::Error) -> u16 {
    use std::error::Error as _;
    use tokio_tungstenite::tungstenite::Error as WsError;
    let mut source = e.source();
    while let Some(cause) = source {
        if let Some(ws) = cause.downcast_ref::<WsError>() {
            return match ws {
                WsError::Capacity(_) => close_code::SIZE,
                WsError::Protocol(_) | WsError::Utf8(_) => close_code::PROTOCOL,
                _ => close_code::NORMAL,
            };
        }
        source = cause.source();
    }
    close_code::NORMAL
}

fn text(message: &ServerMessage) -> Message {
    // Serializing these plain structs cannot fail.
    Message::Text(Utf8Bytes::from(
        serde_json::to_string(message).expect("message serializes"),
    ))
}

fn close(end: &End) -> Message {
    let code = match end {
        End::Shutdown => close_code::AWAY,
        End::Protocol(_) => close_code::PROTOCOL,
        End::Refused(_) => close_code::POLICY,
        End::Stuck(_) | End::Silent(_) => close_code::AWAY,
        End::Socket(e) => socket_close_code(e),
        End::ClosedByPeer => close_code::NORMAL,
    };
    let mut reason = end.to_string();
    // Close reasons are limited to 123 bytes.
    while reason.len() > 120 {
        reason.pop();
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
}
