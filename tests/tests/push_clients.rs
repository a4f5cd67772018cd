//! The control plane against clients other than the well-behaved data plane: bad ones (no
//! token, oversized and garbage messages), a stalled one that stops reading, and a fleet of a
//! thousand lightweight ones that reconnect together after a restart.
//!
//! The clients are [`cellroute_tests::ws`]'s raw WebSocket client, which can send what a
//! correct client library refuses to.

#![forbid(unsafe_code)]

use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cellroute_tests::fixture::Cells;
use cellroute_tests::push::{
    DP_TOKEN, FileControlPlane, SUBSCRIBE_PATH, Scene, Table, hello, hello_with, wait_fleet,
};
use cellroute_tests::wait::SOON;
use cellroute_tests::ws::{
    self, CLOSE_POLICY, CLOSE_PROTOCOL, CLOSE_TOO_BIG, Frame, OP_BINARY, OP_PING, OP_PONG, OP_TEXT, RawWs,
    Upgrade,
};
use serde_json::{Value, json};
use tokio::task::JoinSet;

const CELLS: [&str; 3] = ["cell-a", "cell-b", "cell-c"];

fn routes(cells: &Cells) -> Table {
    Table::new(cells, &CELLS, "cell-c")
}

fn bearer() -> String {
    format!("Bearer {DP_TOKEN}")
}

/// How long a misbehaving client may wait for the control plane to end its session.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// A misbehaving session: what it is, a message sent first (a valid hello) if any, the
/// offending frame's opcode and payload, and what the control plane's close must say.
type Garbage = (&'static str, Option<String>, u8, Vec<u8>, &'static str);

/// Opens an authenticated WebSocket.
async fn open(addr: SocketAddr) -> RawWs {
    ws::connect(addr, SUBSCRIBE_PATH, Some(&bearer()))
        .await
        .expect("connect to the control plane")
        .expect_accepted()
}

/// Reads until the control plane closes the session; returns its close frame, if it sent one.
async fn closed(ws: &mut RawWs, what: &str) -> Option<(Option<u16>, String)> {
    tokio::time::timeout(CLOSE_WITHIN, ws.until_closed())
        .await
        .unwrap_or_else(|_| {
            panic!("{what}: the control plane did not end the session within {CLOSE_WITHIN:?}")
        })
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Asserts that the session was closed with `code` and a reason containing `reason`.
fn assert_close(got: Option<(Option<u16>, String)>, code: u16, reason: &str, what: &str) {
    match got {
        Some((Some(c), r)) if c == code && r.contains(reason) => eprintln!("{what}: closed {c} {r:?}"),
        other => panic!("{what}: expected close {code} with {reason:?}, got {other:?}"),
    }
}

/// The next message (text or binary), answering pings on the way.
async fn next_message(ws: &mut RawWs, what: &str) -> Frame {
    loop {
        let frame = tokio::time::timeout(CLOSE_WITHIN, ws.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: no message within {CLOSE_WITHIN:?}"))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .unwrap_or_else(|| panic!("{what}: the connection ended"));
        match frame {
            Frame::Ping(payload) => ws.send_frame(true, OP_PONG, &payload).await.expect("pong"),
            Frame::Pong(_) => {}
            other => return other,
        }
    }
}

fn json_text(frame: Frame, what: &str) -> Value {
    match frame {
        Frame::Text(text) => serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}")),
        other => panic!("{what}: expected a text message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_compressed_only_for_data_planes_that_offer_gzip() {
    use routing_model::protocol::{CAP_FULL_SNAPSHOT, CAP_GZIP};
    let cells = Scene::cells(&CELLS).await;
    let first = routes(&cells).customer("acme", "cell-a").filler(2000, "cell-b");
    let scene = Scene::start(cells, &first, &[]).await;
    scene.cp.wait_served(&first).await;
    let addr = scene.cp.addr();

    let mut plain = open(addr).await;
    plain
        .send_text(&hello_with("plain", None, &[CAP_FULL_SNAPSHOT]))
        .await
        .expect("hello");
    let mut packed = open(addr).await;
    packed
        .send_text(&hello_with(
            "packed",
            None,
            &[CAP_FULL_SNAPSHOT, "delta-from-the-future", CAP_GZIP],
        ))
        .await
        .expect("hello");

    let welcome = json_text(next_message(&mut plain, "plain").await, "plain welcome");
    assert_eq!(welcome["capabilities"], json!([CAP_FULL_SNAPSHOT]), "{welcome}");
    let welcome = json_text(next_message(&mut packed, "packed").await, "packed welcome");
    assert_eq!(
        welcome["capabilities"],
        json!([CAP_FULL_SNAPSHOT, CAP_GZIP]),
        "only known capabilities the client offered: {welcome}"
    );

    // Every version: text for one, the gzip of the very same text for the other.
    let second = first.clone().customer("acme", "cell-c");
    for (round, table) in [(1, None), (2, Some(&second))] {
        if let Some(table) = table {
            scene.publish(table).await;
        }
        let Frame::Text(text) = next_message(&mut plain, "plain").await else {
            panic!("round {round}: the client without gzip got a non-text snapshot");
        };
        let Frame::Binary(bytes) = next_message(&mut packed, "packed").await else {
            panic!("round {round}: the client with gzip got a text snapshot");
        };
        let unpacked = routing_model::compression::gunzip(&bytes, 16 << 20).expect("valid gzip");
        assert_eq!(
            unpacked, text,
            "round {round}: the compressed snapshot differs from the text one"
        );
        assert!(
            bytes.len() * 3 < text.len(),
            "round {round}: {} compressed bytes for {} bytes of text",
            bytes.len(),
            text.len()
        );
        let message: Value = serde_json::from_str(&text).expect("snapshot JSON");
        assert_eq!(message["type"], "snapshot");
        let customers = message["spec"]["customerToPlacement"]
            .as_object()
            .expect("customers");
        assert_eq!(customers.len(), first.customers(), "round {round}");
        let want = if round == 1 { "cell-a" } else { "cell-c" };
        assert_eq!(
            message["spec"]["customerToPlacement"]["acme"], want,
            "round {round}"
        );
        for (ws, id) in [(&mut plain, "plain"), (&mut packed, "packed")] {
            let ack = json!({"type": "ack", "snapshot": message["snapshot"]}).to_string();
            ws.send_text(&ack).await.unwrap_or_else(|e| panic!("{id}: {e}"));
        }
    }
    let synced = scene
        .cp
        .wait_state(&["plain", "packed"], "SYNCED", None, SOON)
        .await;
    assert_eq!(synced.len(), 2);
    // Both ends of convergence are on the control plane's clock: the ACK arrived after the
    // version was accepted (the benchmark's interval).
    let accepted = scene.cp.served().await["accepted_at"]
        .as_f64()
        .expect("served.accepted_at");
    for entry in &synced {
        let acked = entry["record"]["acked_at"].as_f64().expect("record.acked_at");
        assert!(
            acked >= accepted,
            "ACK at {acked} before acceptance at {accepted}: {entry}"
        );
        assert!(acked - accepted < 60.0, "{entry}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_are_refused_and_the_control_plane_keeps_serving() {
    const MAX_MESSAGE: usize = 64 * 1024;
    let cells = Scene::cells(&CELLS).await;
    let first = routes(&cells).customer("acme", "cell-a");
    let mut scene = Scene::start(cells, &first, &["--max-message-bytes", &MAX_MESSAGE.to_string()]).await;
    let v1 = scene.cp.wait_served(&first).await;
    let dp = scene.follower("dp-1", Some(&routes(&scene.cells)), &[]).await;
    let synced = scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v1), SOON).await;
    let session_started = synced[0]["record"]["connected_since"].clone();
    let addr = scene.cp.addr();

    // Close codes that differ from RFC 6455's, collected so that the rest still runs.
    let mut wrong_codes = Vec::new();

    // 401 before the upgrade, and not one byte of config.
    let secrets = [
        scene.cells.url("cell-a"),
        "placementToEndpoint".to_owned(),
        "acme".to_owned(),
    ];
    for (what, authorization) in [
        ("no token", None),
        ("a wrong token", Some("Bearer not-the-token".to_owned())),
        ("an empty bearer", Some("Bearer ".to_owned())),
        ("basic auth", Some("Basic ZHA6dG9rZW4=".to_owned())),
        ("the token without a scheme", Some(DP_TOKEN.to_owned())),
    ] {
        match ws::connect(addr, SUBSCRIBE_PATH, authorization.as_deref())
            .await
            .expect("connect")
        {
            Upgrade::Accepted(_) => panic!("{what}: upgraded"),
            Upgrade::Refused(refused) => {
                assert_eq!(refused.status, 401, "{what}: {refused}");
                let text = refused.to_string();
                for secret in &secrets {
                    assert!(
                        !text.contains(secret.as_str()),
                        "{what}: the refusal leaks {secret}: {text}"
                    );
                }
                assert!(
                    text.to_ascii_lowercase().contains("www-authenticate: bearer"),
                    "{what}: {text}"
                );
            }
        }
    }
    assert_eq!(
        scene
            .cp
            .metric(
                "cellroute_refused_connections_total",
                &[("reason", "unauthenticated")]
            )
            .await,
        5.0
    );

    // Oversized, as the first message and after a good hello: a close with a clear reason
    // (1009, "message too big", is the code RFC 6455 has for it). The frame header alone
    // announces the size, and the control plane refuses it from the header: sending no payload
    // leaves nothing unread on its side, so its close frame is not lost to a TCP reset.
    let oversized = MAX_MESSAGE as u64 + 26;
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&oversized.to_be_bytes());
    header.extend_from_slice(&[7, 7, 7, 7]);
    for (what, before) in [
        ("an oversized first message", None),
        ("an oversized later message", Some(hello("oversized-later", None))),
    ] {
        let mut ws = open(addr).await;
        if let Some(text) = before {
            ws.send_text(&text).await.expect("hello");
        }
        ws.send_raw(&header).await.expect("send the frame header");
        let got = closed(&mut ws, what).await;
        eprintln!("{what}: {got:?}");
        let Some((code, reason)) = got else {
            panic!("{what}: the connection ended without a close frame");
        };
        assert!(
            reason.contains("too long") || reason.contains("too big"),
            "{what}: unclear reason {reason:?}"
        );
        if code != Some(CLOSE_TOO_BIG) {
            wrong_codes.push(format!(
                "{what}: close code {code:?}, not {CLOSE_TOO_BIG} ({reason:?})"
            ));
        }
    }
    // The whole oversized message: the client may see the close or a reset (the control plane
    // closes with the payload unread), but the control plane says why in its log.
    let mut ws = open(addr).await;
    ws.send_text(&hello("oversized-whole", None))
        .await
        .expect("hello");
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_MESSAGE));
    let _ = ws.send_text(&big).await;
    let got = tokio::time::timeout(CLOSE_WITHIN, ws.until_closed()).await;
    eprintln!("a whole oversized message: {got:?}");
    assert!(got.is_ok(), "a whole oversized message: the session did not end");
    scene
        .cp
        .running_process_log("the oversized session's end", |r| {
            r["message"] == "data plane session ended"
                && r["data_plane"] == "oversized-whole"
                && r["reason"].as_str().is_some_and(|m| m.contains("too long"))
        })
        .await;

    // Garbage the protocol layer sees: a protocol-error close naming the problem.
    let garbage: [Garbage; 6] = [
        (
            "invalid JSON first",
            None,
            OP_TEXT,
            b"{not json".to_vec(),
            "unreadable message",
        ),
        (
            "a binary first message",
            None,
            OP_BINARY,
            vec![0, 1, 2, 3],
            "binary",
        ),
        (
            "an ack first",
            None,
            OP_TEXT,
            json!({"type": "ack", "snapshot": {"lineage": "x", "version": 1, "hash": first.hash()}})
                .to_string()
                .into_bytes(),
            "must be a hello",
        ),
        (
            "an unknown protocol version",
            None,
            OP_TEXT,
            hello("future", None)
                .replace("\"protocol\":1", "\"protocol\":99")
                .into_bytes(),
            "protocol version 99",
        ),
        (
            "invalid JSON after hello",
            Some(hello("garbage-later", None)),
            OP_TEXT,
            b"not json at all".to_vec(),
            "unreadable message",
        ),
        (
            "a second hello",
            Some(hello("hello-twice", None)),
            OP_TEXT,
            hello("hello-twice", None).into_bytes(),
            "hello sent twice",
        ),
    ];
    for (what, before, opcode, payload, reason) in garbage {
        let mut ws = open(addr).await;
        if let Some(text) = before {
            ws.send_text(&text).await.expect("hello");
        }
        ws.send_frame(true, opcode, &payload).await.expect("send garbage");
        assert_close(closed(&mut ws, what).await, CLOSE_PROTOCOL, reason, what);
    }

    // A subscription that names no valid object: refused by policy.
    let mut ws = open(addr).await;
    ws.send_text(&hello("bad-object", None).replace("default/routes", "Not An Object"))
        .await
        .expect("hello");
    assert_close(
        closed(&mut ws, "a bad object").await,
        CLOSE_POLICY,
        "NAMESPACE/NAME",
        "a bad object",
    );

    // Garbage below the protocol: illegal frames and bytes. The session must end (with or
    // without a close frame, since the framing itself is broken); the process must not.
    let framing: [(&str, Vec<u8>); 4] = [
        (
            "an unmasked client frame",
            ws::encode_frame(true, OP_TEXT, b"{}", None),
        ),
        (
            "a reserved opcode",
            ws::encode_frame(true, 0x3, b"{}", Some([1, 2, 3, 4])),
        ),
        (
            "a fragmented ping",
            ws::encode_frame(false, OP_PING, b"", Some([1, 2, 3, 4])),
        ),
        ("random bytes", (0..64u8).map(|b| b.wrapping_mul(37)).collect()),
    ];
    for (what, bytes) in framing {
        let mut ws = open(addr).await;
        ws.send_raw(&bytes).await.expect("send raw bytes");
        let got = closed(&mut ws, what).await;
        eprintln!("{what}: {got:?}");
        // If the control plane still sends a close, it should say "protocol error".
        if let Some((code, reason)) = got
            && code != Some(CLOSE_PROTOCOL)
        {
            wrong_codes.push(format!(
                "{what}: close code {code:?}, not {CLOSE_PROTOCOL} ({reason:?})"
            ));
        }
    }
    // Not even HTTP.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"\x16\x03\x01garbage\r\n\r\n")
            .await
            .expect("send garbage");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(CLOSE_WITHIN, stream.read_to_end(&mut answer)).await;
        eprintln!("not HTTP: {:?}", String::from_utf8_lossy(&answer));
    }

    // The control plane is fine, and so is the real data plane's session.
    assert!(scene.cp.is_running(), "the control plane exited");
    assert_eq!(scene.cp.get("/healthz").await.status, 200);
    let entry = scene.cp.dataplane("dp-1").await.expect("dp-1 listed");
    assert_eq!(
        entry["record"]["connected_since"], session_started,
        "the real session was disturbed: {entry}"
    );
    let second = routes(&scene.cells).customer("acme", "cell-b");
    let v2 = scene.publish(&second).await;
    dp.wait_routes(&[("acme", "cell-b")], SOON).await;
    scene.cp.wait_state(&["dp-1"], "SYNCED", Some(v2), SOON).await;
    let panics = scene
        .cp
        .logs()
        .count(|r| r["message"].as_str().is_some_and(|m| m.contains("panicked")));
    assert_eq!(panics, 0, "the control plane logged a panic");
    assert!(
        wrong_codes.is_empty(),
        "sessions ended by socket-level errors close with the wrong code:\n{}",
        wrong_codes.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_data_plane_does_not_delay_the_others() {
    // The control plane's kernel send buffer grows to 4 MiB (tcp_wmem) before a send to a
    // client that does not read can block: snapshots of ~600 KiB fill it in a few versions.
    const FILLER: usize = 25_000;
    const MAX_EDITS: usize = 40;
    const SEND_TIMEOUT: Duration = Duration::from_secs(20);
    // Each of the others must converge well within this, while the stalled one's send blocks
    // for the whole --send-timeout. An edit converges in about 1 s on an idle machine and took up
    // to 4.4 s with the machine's two cores shared by a full test run and a fuzzer: the margin is
    // to the send timeout the others would wait for if they were delayed, not to the speed.
    const BOUND: Duration = Duration::from_secs(10);
    let cells = Scene::cells(&CELLS).await;
    let tables: Vec<Table> = (0..=MAX_EDITS)
        .map(|i| {
            routes(&cells)
                .filler(FILLER, "cell-c")
                .customer("acme", CELLS[i % 3])
                .customer(&format!("edit-{i}"), "cell-a")
        })
        .collect();
    let send_timeout = format!("{}s", SEND_TIMEOUT.as_secs());
    let scene = Scene::start(
        cells,
        &tables[0],
        &["--send-timeout", &send_timeout, "--reload-debounce", "20ms"],
    )
    .await;
    let v0 = scene.cp.wait_served(&tables[0]).await;
    let others = [
        scene.follower("dp-1", Some(&routes(&scene.cells)), &[]).await,
        scene.follower("dp-2", Some(&routes(&scene.cells)), &[]).await,
    ];
    scene
        .cp
        .wait_state(&["dp-1", "dp-2"], "SYNCED", Some(v0), SOON)
        .await;

    // The stalled one: a tiny receive buffer, a hello, then it never reads again. It keeps
    // pinging, so only its not reading can get it dropped, not silence.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(scene.cp.addr()).await.expect("connect");
    let mut stalled = ws::upgrade(stream, scene.cp.addr(), SUBSCRIBE_PATH, Some(&bearer()))
        .await
        .expect("upgrade")
        .expect_accepted();
    // Without `delta`, so every version is the whole table and its socket fills.
    stalled
        .send_text(&hello_with(
            "stalled",
            None,
            &[routing_model::protocol::CAP_FULL_SNAPSHOT],
        ))
        .await
        .expect("hello");
    let pinger = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            if stalled.send_frame(true, OP_PING, b"still here").await.is_err() {
                return;
            }
        }
    });
    scene.cp.wait_state(&["stalled"], "STALE", None, SOON).await;

    // Edit until the stalled one is dropped: first its socket fills, then its send blocks for
    // the whole send timeout, and all along the others must converge on every edit.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut edits = 0;
    let mut previous = v0;
    for (i, table) in tables.iter().enumerate().skip(1) {
        if scene
            .cp
            .dataplane("stalled")
            .await
            .is_some_and(|d| d["state"] == "DISCONNECTED")
        {
            break;
        }
        let edited = Instant::now();
        scene.write(table);
        for dp in &others {
            dp.wait_routes(
                &[("acme", table.cell_of("acme")), (&format!("edit-{i}"), "cell-a")],
                BOUND,
            )
            .await;
        }
        // Hashing a table this size in the test costs more than the push itself: go by the
        // version instead (one write, one new version; the routes above prove the content).
        let version = scene.cp.wait_served_after(previous).await;
        scene
            .cp
            .wait_state(&["dp-1", "dp-2"], "SYNCED", Some(version), BOUND)
            .await;
        previous = version;
        let took = edited.elapsed();
        eprintln!(
            "edit {i} at {:?}: both data planes SYNCED after {took:?}",
            started.elapsed()
        );
        assert!(took < BOUND, "edit {i} took {took:?} to converge on the others");
        slowest = slowest.max(took);
        edits = i;
    }

    // The stalled one was dropped, for not reading.
    let dropped = scene
        .cp
        .wait_state(&["stalled"], "DISCONNECTED", None, SOON)
        .await;
    let ended = scene
        .cp
        .logs()
        .records()
        .into_iter()
        .find(|r| r["message"] == "data plane session ended" && r["data_plane"] == "stalled")
        .expect("the control plane logs the stalled session's end");
    assert!(
        ended["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not reading")),
        "dropped for another reason: {ended}"
    );
    eprintln!(
        "{edits} edits, slowest convergence {slowest:?}; stalled session dropped after {:?}: {}",
        started.elapsed(),
        ended["reason"]
    );
    assert!(
        edits as f64 >= SEND_TIMEOUT.as_secs_f64() / BOUND.as_secs_f64(),
        "too few edits ({edits}) overlapped the blocked send: {}",
        dropped[0]
    );
    pinger.abort();
    scene.cp.wait_state(&["dp-1", "dp-2"], "SYNCED", None, SOON).await;
}

/// One lightweight data plane: hello, ACK every snapshot, answer pings, reconnect with full
/// jitter. It records the version it last ACKed and whether it has a session.
struct Light {
    acked: AtomicI64,
    live: AtomicBool,
}

/// A uniformly random duration below `cap` (full jitter).
fn jitter(cap: Duration, seed: (usize, u64)) -> Duration {
    let random = RandomState::new().hash_one(seed);
    cap.mul_f64((random % 10_000) as f64 / 10_000.0)
}

async fn light_client(index: usize, addr: SocketAddr, me: Arc<Light>, sessions: Arc<AtomicU64>) {
    let id = format!("light-{index:04}");
    let mut applied: Option<Value> = None;
    // Arrive spread out, as pods starting would.
    tokio::time::sleep(jitter(Duration::from_millis(500), (index, 0))).await;
    let mut attempt = 0u32;
    loop {
        let result = light_session(&id, addr, &mut applied, &me, &sessions).await;
        me.live.store(false, Ordering::SeqCst);
        attempt = if result.is_ok() { 0 } else { (attempt + 1).min(5) };
        let cap = Duration::from_millis(50 * (1 << attempt)).min(Duration::from_secs(1));
        tokio::time::sleep(jitter(cap, (index, u64::from(attempt) + 1))).await;
    }
}

async fn light_session(
    id: &str,
    addr: SocketAddr,
    applied: &mut Option<Value>,
    me: &Light,
    sessions: &AtomicU64,
) -> io::Result<()> {
    let mut ws = match ws::connect(addr, SUBSCRIBE_PATH, Some(&bearer())).await? {
        Upgrade::Accepted(ws) => ws,
        Upgrade::Refused(refused) => return Err(io::Error::other(refused.to_string())),
    };
    ws.send_text(&hello(id, applied.as_ref())).await?;
    me.live.store(true, Ordering::SeqCst);
    sessions.fetch_add(1, Ordering::SeqCst);
    loop {
        match ws.recv().await? {
            Some(Frame::Text(text)) => {
                let message: Value = serde_json::from_str(&text).map_err(io::Error::other)?;
                if message["type"] == "snapshot" || message["type"] == "delta" {
                    let snapshot = message["snapshot"].clone();
                    ws.send_text(&json!({"type": "ack", "snapshot": snapshot}).to_string())
                        .await?;
                    me.acked
                        .store(snapshot["version"].as_i64().unwrap_or(-1), Ordering::SeqCst);
                    *applied = Some(snapshot);
                }
            }
            Some(Frame::Ping(payload)) => ws.send_frame(true, OP_PONG, &payload).await?,
            Some(Frame::Close(..)) | None => return Ok(()),
            Some(_) => {}
        }
    }
}

/// Raises the soft open-files limit to fit `need` descriptors (the control plane, spawned
/// later, inherits it); returns the limit in force.
fn ensure_open_files(need: u64) -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= need {
        return current;
    }
    let raised = limit.maximum.map_or(need, |max| max.min(need));
    setrlimit(
        Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(raised),
            maximum: limit.maximum,
        },
    )
    .expect("raise RLIMIT_NOFILE");
    raised
}

/// Whether every client ACKed `version` and the control plane lists each as SYNCED at it.
async fn converged(clients: &[Arc<Light>], cp: &FileControlPlane, version: i64) -> Result<(), String> {
    let acked = clients
        .iter()
        .filter(|c| c.acked.load(Ordering::SeqCst) == version)
        .count();
    if acked < clients.len() {
        return Err(format!(
            "{acked} of {} clients ACKed version {version}",
            clients.len()
        ));
    }
    let planes = cp.dataplanes().await;
    let synced = planes
        .iter()
        .filter(|d| d["state"] == "SYNCED" && d["record"]["acked"]["version"] == version)
        .count();
    if synced < clients.len() {
        return Err(format!(
            "{synced} of {} listed are SYNCED at {version}",
            planes.len()
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_reconnect_after_a_restart_and_converge() {
    const FLEET: usize = 1_000;
    const CONVERGE: Duration = Duration::from_secs(60);
    // Each side holds one descriptor per client, plus the servers, logs and pipes.
    let limit = ensure_open_files(FLEET as u64 + 512);
    assert!(
        limit >= FLEET as u64 + 512,
        "RLIMIT_NOFILE {limit} cannot hold {FLEET} clients"
    );

    let cells = Scene::cells(&CELLS).await;
    let first = routes(&cells).customer("acme", "cell-a");
    let mut scene = Scene::start(cells, &first, &[]).await;
    let v1 = scene.cp.wait_served(&first).await;

    let clients: Vec<Arc<Light>> = (0..FLEET)
        .map(|_| {
            Arc::new(Light {
                acked: AtomicI64::new(0),
                live: AtomicBool::new(false),
            })
        })
        .collect();
    let sessions = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for (index, me) in clients.iter().enumerate() {
        tasks.spawn(light_client(index, scene.cp.addr(), me.clone(), sessions.clone()));
    }

    let started = Instant::now();
    wait_fleet("the fleet to converge on the first version", CONVERGE, || {
        converged(&clients, &scene.cp, v1)
    })
    .await;
    eprintln!(
        "{FLEET} clients connected and converged in {:?}",
        started.elapsed()
    );
    assert_eq!(
        scene.cp.metric("cellroute_connected_data_planes", &[]).await,
        FLEET as f64
    );

    scene.cp.kill_9().await;
    wait_fleet("every client to notice", SOON, || async {
        let live = clients.iter().filter(|c| c.live.load(Ordering::SeqCst)).count();
        if live == 0 {
            Ok(())
        } else {
            Err(format!("{live} still think they are connected"))
        }
    })
    .await;
    let restarted = Instant::now();
    scene.cp.restart().await;
    let v1b = scene.cp.wait_served(&first).await;
    assert!(v1b >= v1);
    wait_fleet("the fleet to converge after the restart", CONVERGE, || {
        converged(&clients, &scene.cp, v1b)
    })
    .await;
    eprintln!(
        "{FLEET} clients reconnected and converged {:?} after the restart ({} sessions in all)",
        restarted.elapsed(),
        sessions.load(Ordering::SeqCst)
    );

    let second = routes(&scene.cells).customer("acme", "cell-b");
    let edited = Instant::now();
    let v2 = scene.publish(&second).await;
    wait_fleet("the fleet to converge on an edit", CONVERGE, || {
        converged(&clients, &scene.cp, v2)
    })
    .await;
    eprintln!("{FLEET} clients converged on an edit in {:?}", edited.elapsed());
    assert_eq!(
        scene.cp.metric("cellroute_connected_data_planes", &[]).await,
        FLEET as f64
    );
    tasks.abort_all();
}
