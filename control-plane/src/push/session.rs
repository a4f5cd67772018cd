//! One data plane's session, in stages the types make explicit:
//!
//! 1. [`Authenticated`]: the upgrade's credentials said who the peer is (see [`super::auth`]).
//! 2. [`Greeted`]: its first message was a `hello` (within the heartbeat timeout) in a protocol
//!    version this build speaks, with an id its identity may use, naming a RoutingConfig it may
//!    subscribe to. Anything else refuses the session before it is recorded anywhere.
//! 3. [`Subscribed`]: recorded in the registry under its identity and id. The [`Registration`]
//!    it holds marks the record disconnected when dropped, so however the session ends (a
//!    return, an error, a panic unwinding through it) the record never stays "connected".
//!    The control plane answers `welcome`, then the served snapshot only if the data plane does
//!    not already have it, then every newly published version (latest-wins). ACK/NACK are
//!    checked against what the session was sent (see [`super::ledger`]) before they touch the
//!    registry. Pings flow both ways.
//! 4. Closed: silence past the timeout, a send that does not finish in time, an oversized or
//!    garbage frame, a newer session of the same data plane, or shutdown end the session, never
//!    the process. [`supervised`] catches a panic at the session boundary and counts it.
//!
//! Nothing a peer sent is logged or stored unbounded: ids are checked before they are used,
//! other fields are cut (see [`routing_model::protocol::truncate`]).

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use futures::{FutureExt, SinkExt, StreamExt};
use routing_model::protocol::{
    CAP_DELTA, CAP_FULL_SNAPSHOT, CAP_GZIP, CAP_HEALTH, CAP_TOO_LARGE, ClientMessage, Hello,
    PROTOCOL_VERSION, ServerMessage, SnapshotRef, Welcome, check_object_ref, truncate,
};

use super::PushState;
use super::auth::Identity;
use super::publisher::{Encoded, Full, Published};
use super::registry::{Arrival, DataPlaneKey, Registry, Session};
use super::updates::Updates;
use crate::metrics::Metrics;
use crate::snapshot::ObjectKey;
use routing_model::hash::HashScheme;
use routing_model::ledger::{Ledger, Origin, Violation};

/// Longest lineage accepted in a hello's `applied` (a uid, or `file:` + an absolute path + an
/// epoch; `PATH_MAX` is 4096).
pub const MAX_LINEAGE_BYTES: usize = 4096 + 64;
/// Longest `namespace/name` accepted (two Kubernetes names and the slash).
const MAX_OBJECT_REF_BYTES: usize = 253 * 2 + 1;
/// How much of a peer's text (ids, parse errors) a log line or an error message quotes.
const QUOTE_BYTES: usize = 64;
/// How much of a parse error is kept (serde quotes the offending value).
const PARSE_ERROR_BYTES: usize = 256;

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
    #[error("a newer session of the same data plane took over")]
    Superseded,
    #[error("protocol error: {1}")]
    Protocol(&'static str, String),
    #[error("refused: {1}")]
    Refused(&'static str, String),
    #[error("socket error: {0}")]
    Socket(#[from] axum::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl End {
    /// The `kind` of `cellroute_protocol_errors_total` this end counts as, if it is one.
    fn protocol_error(&self) -> Option<&'static str> {
        match self {
            End::Protocol(kind, _) => Some(kind),
            End::Socket(e) => match socket_close_code(e) {
                close_code::SIZE => Some("oversized"),
                close_code::PROTOCOL => Some("framing"),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Stage 1: who the peer is, from the upgrade's credentials.
#[derive(Debug)]
pub struct Authenticated {
    /// Its identity.
    pub identity: Identity,
    /// Its address.
    pub remote: SocketAddr,
}

/// Stage 2: the hello was read and checked.
#[derive(Debug)]
pub struct Greeted {
    identity: Identity,
    remote: SocketAddr,
    hello: Hello,
    key: ObjectKey,
}

/// Stage 3: recorded in the registry; [`Registration`] undoes it on drop.
pub struct Subscribed {
    greeted: Greeted,
    registration: Registration,
    ledger: Ledger,
    forms: Forms,
}

/// Which forms of a version this session is sent, and what the data plane has to apply a delta
/// to.
#[derive(Default)]
struct Forms {
    /// The data plane offered `delta`: deltas when it has their base, and hashes in the table
    /// scheme. Otherwise full snapshots with hashes in the JSON scheme.
    delta: bool,
    /// The snapshot the data plane will have once it has applied everything sent so far (the
    /// base for the next delta). A data plane that refused one answers the next delta asking for
    /// the full snapshot, so assuming success costs at most one resend.
    base: Option<SnapshotRef>,
    /// The last snapshot sent as a delta: only its NACK may ask for the full snapshot.
    last_delta: Option<SnapshotRef>,
    /// For a session without `delta`: the references as sent (JSON-scheme hash) and as served,
    /// to record its answers under the served one. Bounded like the ledger.
    json: std::collections::VecDeque<(SnapshotRef, SnapshotRef)>,
}

impl Forms {
    /// The served reference of `sent` (they differ only in the JSON scheme).
    fn served(&self, sent: SnapshotRef) -> SnapshotRef {
        self.json
            .iter()
            .find(|(as_sent, _)| *as_sent == sent)
            .map_or(sent, |(_, served)| served.clone())
    }

    fn sent_json(&mut self, as_sent: &SnapshotRef, served: &SnapshotRef) {
        if self.json.iter().any(|(a, _)| a == as_sent) {
            return;
        }
        if self.json.len() >= 2 * routing_model::ledger::LEDGER_ENTRIES {
            self.json.pop_front();
        }
        self.json.push_back((as_sent.clone(), served.clone()));
    }
}

/// A session's record in the registry, marked disconnected when this is dropped, whatever way
/// the session ends. Also keeps `cellroute_connected_data_planes` honest.
pub struct Registration {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    session: Session,
}

impl Registration {
    /// Records a new session under `key`.
    pub fn new(
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        key: DataPlaneKey,
        arrival: &Arrival<'_>,
    ) -> Self {
        let session = registry.connect(key, arrival);
        metrics.connected_data_planes.inc();
        Self {
            registry,
            metrics,
            session,
        }
    }

    /// The session's place in the registry.
    pub fn session(&self) -> &Session {
        &self.session
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.disconnect(&self.session);
        self.metrics.connected_data_planes.dec();
    }
}

/// Runs `session` and catches a panic at its boundary: the panic is counted
/// (`cellroute_session_panics_total`) and logged, the process and every other session carry on,
/// and the session's [`Registration`], dropped while unwinding, marks its record disconnected.
pub async fn supervised(session: impl Future<Output = ()>, metrics: &Metrics) {
    if let Err(panic) = AssertUnwindSafe(session).catch_unwind().await {
        metrics.session_panics.inc();
        tracing::error!(
            panic = %truncate(panic_message(panic.as_ref()), 512),
            "a data-plane session panicked; it was closed and its record marked disconnected"
        );
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

type Sink = futures::stream::SplitSink<WebSocket, Message>;
type Stream = futures::stream::SplitStream<WebSocket>;

/// Runs a session to its end.
pub async fn run(socket: WebSocket, peer: Authenticated, s: PushState) {
    let (mut sink, mut stream) = socket.split();
    let remote = peer.remote;
    let greeted = match peer.greet(&mut stream, &s).await {
        Ok(greeted) => greeted,
        Err(end) => {
            let reason = match &end {
                End::Refused(reason, _) => reason,
                _ => "bad-hello",
            };
            s.metrics.refused(reason);
            if let Some(kind) = end.protocol_error() {
                s.metrics.protocol_error(kind);
            }
            if let End::Refused(_, why) = &end {
                let error = ServerMessage::Error { message: why.clone() };
                let _ = sink.send(text(&error)).await;
            } else {
                tracing::info!(%remote, reason = %end, "data plane session refused before hello");
            }
            let _ = tokio::time::timeout(s.settings.send_timeout, sink.send(close(&end))).await;
            return;
        }
    };
    let mut subscribed = greeted.subscribe(&s);
    let end = subscribed.serve(&mut sink, &mut stream, &s).await;
    if let Some(kind) = end.protocol_error() {
        s.metrics.protocol_error(kind);
    }
    let id = subscribed.greeted.hello.data_plane.clone();
    // Stage 4: the record is marked disconnected before the goodbye is sent.
    drop(subscribed);
    tracing::info!(%remote, data_plane = %id, reason = %end, "data plane session ended");
    let _ = tokio::time::timeout(s.settings.send_timeout, sink.send(close(&end))).await;
}

impl Authenticated {
    /// Reads and checks the hello.
    async fn greet(self, stream: &mut Stream, s: &PushState) -> Result<Greeted, End> {
        let hello = first_hello(stream, s).await?;
        if let Some(applied) = &hello.applied
            && applied.lineage.len() > MAX_LINEAGE_BYTES
        {
            return Err(End::Protocol(
                "oversized-field",
                format!(
                    "the hello's applied lineage is {} bytes, over {MAX_LINEAGE_BYTES}",
                    applied.lineage.len()
                ),
            ));
        }
        if let Err(refused) = self.check(&hello) {
            if let End::Refused(_, why) = &refused {
                tracing::warn!(
                    remote = %self.remote,
                    data_plane = %truncate(&hello.data_plane, QUOTE_BYTES),
                    user = %self.identity.user,
                    identity = %self.identity.principal,
                    %why,
                    "subscription refused"
                );
            }
            return Err(refused);
        }
        let key = ObjectKey::parse(&hello.routing_config);
        Ok(Greeted {
            identity: self.identity,
            remote: self.remote,
            hello,
            key,
        })
    }

    /// Whether this identity may use the hello's id and subscribe to its object.
    fn check(&self, hello: &Hello) -> Result<(), End> {
        self.identity
            .may_use_id(&hello.data_plane)
            .map_err(|why| End::Refused("bad-id", why))?;
        let object = &hello.routing_config;
        if object.len() > MAX_OBJECT_REF_BYTES {
            return Err(End::Refused(
                "forbidden",
                format!(
                    "routing_config {:?} ({} bytes) must be NAMESPACE/NAME of Kubernetes names",
                    truncate(object, QUOTE_BYTES),
                    object.len()
                ),
            ));
        }
        check_object_ref(object)
            .and_then(|()| self.identity.may_subscribe(object))
            .map_err(|why| End::Refused("forbidden", why))
    }
}

impl Greeted {
    /// Records the session in the registry.
    fn subscribe(self, s: &PushState) -> Subscribed {
        let key = DataPlaneKey {
            principal: self.identity.principal.clone(),
            id: self.hello.data_plane.clone(),
        };
        let remote = self.remote.to_string();
        let registration = Registration::new(
            s.registry.clone(),
            s.metrics.clone(),
            key,
            &Arrival {
                routing_config: &self.hello.routing_config,
                user: &self.identity.user,
                remote: &remote,
            },
        );
        tracing::info!(
            remote = %self.remote,
            data_plane = %self.hello.data_plane,
            routing_config = %self.hello.routing_config,
            user = %self.identity.user,
            identity = %self.identity.principal,
            "data plane connected"
        );
        Subscribed {
            forms: Forms {
                delta: self.hello.capabilities.iter().any(|c| c == CAP_DELTA),
                ..Forms::default()
            },
            greeted: self,
            registration,
            ledger: Ledger::default(),
        }
    }
}

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
                    Ok(ClientMessage::Hello(hello)) => Err(End::Protocol(
                        "protocol-version",
                        format!(
                            "protocol version {} is not supported (this control plane speaks {PROTOCOL_VERSION})",
                            hello.protocol
                        ),
                    )),
                    Ok(_) => Err(End::Protocol(
                        "not-hello-first",
                        "the first message must be a hello".into(),
                    )),
                    Err(e) => Err(unreadable(&e)),
                };
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return Err(End::ClosedByPeer),
            Message::Binary(_) => {
                return Err(End::Protocol(
                    "binary",
                    "binary messages are not part of the protocol".into(),
                ));
            }
        }
    }
}

fn unreadable(e: &serde_json::Error) -> End {
    End::Protocol(
        "unreadable",
        format!(
            "unreadable message: {}",
            truncate(&e.to_string(), PARSE_ERROR_BYTES)
        ),
    )
}

impl Subscribed {
    fn session(&self) -> &Session {
        self.registration.session()
    }

    fn id(&self) -> &str {
        &self.greeted.hello.data_plane
    }

    async fn serve(&mut self, sink: &mut Sink, stream: &mut Stream, s: &PushState) -> End {
        let bucket = routing_model::rollout::cohort(self.id());
        let mut updates = Updates::new(s.publisher.subscribe(&self.greeted.key), bucket);
        let current = updates.current();
        let hello = &self.greeted.hello;
        // A data plane without `delta` knows the served snapshot by its JSON-scheme hash.
        let up_to_date = match &current {
            Published::Snapshot(e) if self.forms.delta => Some(&e.reference) == hello.applied.as_ref(),
            Published::Snapshot(e) => {
                hello
                    .applied
                    .as_ref()
                    .is_some_and(|a| a.hash.scheme() == HashScheme::Json)
                    && Some(&e.json().reference) == hello.applied.as_ref()
            }
            Published::Missing(_) => false,
        };
        let mut applied = hello.applied.clone();
        if up_to_date && let (Some(announced), Published::Snapshot(e)) = (hello.applied.clone(), &current) {
            self.ledger.record(announced.clone(), Origin::Announced);
            if !self.forms.delta {
                self.forms.sent_json(&announced, &e.reference);
            }
            applied = Some(e.reference.clone());
            self.forms.base = Some(e.reference.clone());
        }
        s.registry.applied(self.session(), applied);
        // Capabilities are only used when the data plane offered them.
        let offered = |cap: &str| hello.capabilities.iter().any(|c| c == cap);
        let mut capabilities = vec![CAP_FULL_SNAPSHOT.to_owned()];
        for cap in [CAP_GZIP, CAP_TOO_LARGE, CAP_DELTA] {
            if offered(cap) {
                capabilities.push(cap.to_owned());
            }
        }
        // Counted only on sessions that negotiated it and hash their snapshots in the table
        // scheme, as the registry does.
        let health = offered(CAP_HEALTH) && self.forms.delta;
        if health {
            capabilities.push(CAP_HEALTH.to_owned());
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
        if !up_to_date && let Err(end) = self.publish(sink, &current, s).await {
            return end;
        }
        // Waited on from one future each for the whole session: re-creating them every turn of
        // the loop locks waiter lists that every session shares.
        let superseded_token = self.session().superseded.clone();
        let superseded = superseded_token.cancelled();
        // A child token: checking it locks this session's node, not the one all sessions share.
        let shutdown_token = s.shutdown.child_token();
        let shutdown = shutdown_token.cancelled();
        tokio::pin!(superseded, shutdown);
        let mut ping = tokio::time::interval(s.settings.heartbeat);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        // Convergence is measured for versions accepted while this session was open; a data plane
        // that connects later is catching up, not converging.
        let session_start = SystemTime::now();
        // A version accepted while the data plane still has a ledger's worth of snapshots to
        // answer waits (latest wins) until it answers one; see `Ledger::may_send`.
        let mut held = false;
        loop {
            tokio::select! {
                () = &mut shutdown => return End::Shutdown,
                () = &mut superseded => return End::Superseded,
                changed = updates.changed() => {
                    let Some(next) = changed else {
                        return End::Shutdown;
                    };
                    held = matches!(next, Published::Snapshot(_)) && !self.ledger.may_send();
                    if held {
                        tracing::debug!(data_plane = %self.id(), "holding a new version until the data plane answers the ones it has");
                        continue;
                    }
                    if let Err(end) = self.publish(sink, &next, s).await {
                        return end;
                    }
                    // A large snapshot can take seconds to send to a busy fleet, and nothing is
                    // read meanwhile; a send that completed shows the data plane is reading, so
                    // that time is not silence.
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
                                let served = match updates.current() {
                                    Published::Snapshot(current) => Some(current),
                                    Published::Missing(_) => None,
                                };
                                self.ack(snapshot, served.as_deref(), session_start, s);
                                if let Err(end) = self.release(&mut held, &updates, sink, s).await {
                                    return end;
                                }
                            }
                            Ok(ClientMessage::Nack { snapshot, error, resync }) => {
                                if self.nack(snapshot, &error, resync, s) && !held {
                                    // The delta did not apply: the whole table, now.
                                    let current = updates.current();
                                    if let Err(end) = self.publish(sink, &current, s).await {
                                        return end;
                                    }
                                }
                                if let Err(end) = self.release(&mut held, &updates, sink, s).await {
                                    return end;
                                }
                            }
                            Ok(ClientMessage::Health { snapshot, placements }) if health => {
                                s.registry.health(self.session(), snapshot, placements);
                            }
                            Ok(ClientMessage::Health { .. }) => {
                                return End::Protocol("health-not-negotiated", "a health report on a session without the health capability".into());
                            }
                            Ok(ClientMessage::Hello(_)) => {
                                return End::Protocol("hello-twice", "hello sent twice".into());
                            }
                            Err(e) => return unreadable(&e),
                        },
                        Message::Close(_) => return End::ClosedByPeer,
                        Message::Binary(_) => {
                            return End::Protocol(
                                "binary",
                                "binary messages are not part of the protocol".into(),
                            );
                        }
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
            }
        }
    }

    fn ack(
        &mut self,
        snapshot: SnapshotRef,
        served: Option<&Encoded>,
        session_start: SystemTime,
        s: &PushState,
    ) {
        if let Err(violation) = self.ledger.ack(&snapshot) {
            return self.violation(violation, &snapshot, s);
        }
        let snapshot = self.forms.served(snapshot);
        s.metrics.acks.inc();
        if let Some(current) = served
            && current.reference == snapshot
            && current.accepted_at >= session_start
            && let Ok(age) = SystemTime::now().duration_since(current.accepted_at)
        {
            s.metrics.convergence.observe(age.as_secs_f64());
        }
        s.registry.ack(self.session(), snapshot);
    }

    /// Records a NACK; true when it asks for the full snapshot of a delta this session sent (the
    /// base is then forgotten, so the next send is the whole table).
    fn nack(&mut self, snapshot: SnapshotRef, error: &str, resync: bool, s: &PushState) -> bool {
        if let Err(violation) = self.ledger.nack(&snapshot) {
            self.violation(violation, &snapshot, s);
            return false;
        }
        let snapshot = self.forms.served(snapshot);
        if resync && self.forms.last_delta.as_ref() == Some(&snapshot) {
            self.forms.last_delta = None;
            self.forms.base = None;
            s.metrics.delta_resyncs.inc();
            tracing::info!(data_plane = %self.id(), version = snapshot.version, error = %truncate(error, 512), "a delta did not apply; sending the full snapshot");
            return true;
        }
        s.metrics.nacks.inc();
        let error = truncate(error, routing_model::protocol::MAX_NACK_ERROR_BYTES);
        tracing::warn!(data_plane = %self.id(), version = snapshot.version, %error, "data plane rejected a snapshot");
        s.registry.nack(self.session(), snapshot, &error);
        false
    }

    /// Sends the version held back (see `serve`) once an answer made room for it: the newest
    /// one, whatever was accepted meanwhile.
    async fn release(
        &mut self,
        held: &mut bool,
        updates: &Updates,
        sink: &mut Sink,
        s: &PushState,
    ) -> Result<(), End> {
        if !*held || !self.ledger.may_send() {
            return Ok(());
        }
        *held = false;
        let current = updates.current();
        self.publish(sink, &current, s).await
    }

    /// An answer that does not match what this session was sent: counted, logged, ignored.
    fn violation(&self, violation: Violation, snapshot: &SnapshotRef, s: &PushState) {
        s.metrics.protocol_error(violation.kind());
        tracing::warn!(
            data_plane = %self.id(),
            user = %self.greeted.identity.user,
            identity = %self.greeted.identity.principal,
            lineage = %truncate(&snapshot.lineage, QUOTE_BYTES),
            version = snapshot.version,
            %violation,
            "ignored an answer that does not match what this session was sent"
        );
    }

    async fn publish(&mut self, sink: &mut Sink, published: &Published, s: &PushState) -> Result<(), End> {
        let encoded = match published {
            Published::Snapshot(encoded) => encoded,
            Published::Missing(reason) => {
                let missing = ServerMessage::Missing {
                    routing_config: self.greeted.key.to_string(),
                    reason: *reason,
                };
                return send(sink, text(&missing), s).await;
            }
        };
        let hello = &self.greeted.hello;
        let limit = hello.max_message_bytes;
        if self.forms.delta
            && let Some(delta) = self.forms.base.as_ref().and_then(|base| encoded.delta_from(base))
            && limit.is_none_or(|l| delta.text.len() as u64 <= l)
        {
            s.metrics.pushes.inc();
            s.metrics.delta_pushes.inc();
            send(sink, Message::Text(delta.text.clone()), s).await?;
            self.ledger.record(encoded.reference.clone(), Origin::Sent);
            self.forms.base = Some(encoded.reference.clone());
            self.forms.last_delta = Some(encoded.reference.clone());
            return Ok(());
        }
        // Encoding a large table takes a while: on a blocking thread, not a worker that other
        // sessions need. The first session to need a form encodes it; others wait for that one.
        let scheme_json = !self.forms.delta;
        let ready = if scheme_json {
            encoded.has_json()
        } else {
            encoded.has_full()
        };
        if !ready {
            let encoding = encoded.clone();
            tokio::task::spawn_blocking(move || {
                if scheme_json {
                    encoding.json();
                } else {
                    encoding.full();
                }
            })
            .await
            .map_err(|e| End::Internal(format!("encoding the snapshot failed: {e}")))?;
        }
        let full = if scheme_json {
            encoded.json()
        } else {
            encoded.full()
        };
        let bytes = full.text.len() as u64;
        if let Some(limit) = limit
            && bytes > limit
        {
            return self.too_large(sink, encoded, full, limit, s).await;
        }
        s.metrics.pushes.inc();
        let message = if hello.capabilities.iter().any(|c| c == CAP_GZIP) {
            Message::Binary(full.gzip.clone())
        } else {
            Message::Text(full.text.clone())
        };
        send(sink, message, s).await?;
        self.ledger.record(full.reference.clone(), Origin::Sent);
        if !self.forms.delta {
            self.forms.sent_json(&full.reference, &encoded.reference);
        }
        self.forms.base = Some(encoded.reference.clone());
        Ok(())
    }

    /// The snapshot exceeds the limit the data plane announced: a too-large notice instead (it
    /// NACKs that), or, for a data plane that does not understand one, nothing, recorded as a
    /// rejection. Either way it is never sent a message it would have to drop the session for.
    async fn too_large(
        &mut self,
        sink: &mut Sink,
        encoded: &Encoded,
        full: &Full,
        limit: u64,
        s: &PushState,
    ) -> Result<(), End> {
        let bytes = full.text.len() as u64;
        s.metrics.too_large.inc();
        let hello = &self.greeted.hello;
        if hello.capabilities.iter().any(|c| c == CAP_TOO_LARGE) {
            let notice = ServerMessage::TooLarge {
                routing_config: self.greeted.key.to_string(),
                snapshot: full.reference.clone(),
                bytes,
                limit,
            };
            send(sink, text(&notice), s).await?;
            self.ledger.record(full.reference.clone(), Origin::TooLarge);
            if !self.forms.delta {
                self.forms.sent_json(&full.reference, &encoded.reference);
            }
            tracing::info!(data_plane = %self.id(), version = encoded.reference.version, bytes, limit, "sent a too-large notice instead of the snapshot");
        } else {
            let error = format!(
                "not sent: snapshot version {} is {bytes} bytes, over this data plane's announced limit of {limit} bytes",
                encoded.reference.version
            );
            tracing::warn!(data_plane = %self.id(), %error, "cannot deliver a snapshot");
            s.registry.nack(self.session(), encoded.reference.clone(), &error);
        }
        Ok(())
    }
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
        End::Protocol(..) => close_code::PROTOCOL,
        End::Refused(..) => close_code::POLICY,
        End::Stuck(_) | End::Silent(_) => close_code::AWAY,
        End::Socket(e) => socket_close_code(e),
        End::ClosedByPeer | End::Superseded => close_code::NORMAL,
        End::Internal(_) => close_code::ERROR,
    };
    // Close reasons are limited to 123 bytes.
    let reason = truncate(&end.to_string(), 119);
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::auth::Principal;

    #[tokio::test]
    async fn a_panicking_session_is_counted_and_leaves_no_connected_record() {
        let registry = Arc::new(Registry::default());
        let metrics = Metrics::new();
        let key = DataPlaneKey {
            principal: Principal::StaticToken { line: 1 },
            id: "dp-1".into(),
        };
        let session = {
            let (registry, metrics) = (registry.clone(), metrics.clone());
            async move {
                let registration = Registration::new(
                    registry,
                    metrics,
                    key,
                    &Arrival {
                        routing_config: "default/routes",
                        user: "static-token",
                        remote: "127.0.0.1:9",
                    },
                );
                assert!(registration.registry.list()[0].connected);
                panic!("a bug in a session");
            }
        };
        supervised(session, &metrics).await;
        assert_eq!(metrics.session_panics.get(), 1);
        assert_eq!(metrics.connected_data_planes.get(), 0);
        let records = registry.list();
        assert_eq!(records.len(), 1);
        assert!(
            !records[0].connected,
            "the record stayed connected after the panic"
        );

        // A session that ends normally is not a panic.
        supervised(async {}, &metrics).await;
        assert_eq!(metrics.session_panics.get(), 1);
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        let end = End::Protocol("unreadable", "é".repeat(500));
        let Message::Close(Some(frame)) = close(&end) else {
            panic!("not a close")
        };
        assert!(frame.reason.len() <= 123, "{} bytes", frame.reason.len());
        assert_eq!(frame.code, close_code::PROTOCOL);
    }
}
