//! The snapshot protocol between the control plane and data planes (`PROTOCOL.md` describes it
//! for humans).
//!
//! One WebSocket per data plane, JSON text messages tagged by `type`. The data plane opens with
//! [`Hello`] naming the RoutingConfig it serves and the snapshot it already has; the control plane
//! answers [`Welcome`] and then sends a [`SnapshotMessage`] only when the data plane's snapshot
//! differs from the served one (a reconnect with an up-to-date table costs no table bytes), and
//! again for every newly accepted version. The data plane answers every snapshot with an ACK
//! (applied) or a NACK (refused, with the error); a NACKed snapshot never replaces its table.
//!
//! Compatibility: both sides ignore unknown fields, and the control plane only sends message
//! kinds and encodings the data plane announced in its `capabilities` ([`CAP_GZIP`],
//! [`CAP_TOO_LARGE`], [`CAP_DELTA`]), so old data planes keep working with new control planes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::delta::SpecChanges;
use crate::hash::ContentHash;
use crate::manifest::{API_VERSION, KIND, ObjectMeta, RoutingConfigManifest, RoutingConfigSpec};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The WebSocket path on the control plane.
pub const SUBSCRIBE_PATH: &str = "/v1/subscribe";
/// Capability: full snapshots as [`SnapshotMessage`] (every data plane has it).
pub const CAP_FULL_SNAPSHOT: &str = "full-snapshot";
/// Capability: snapshots may arrive as binary messages holding the gzip-compressed bytes of the
/// same JSON text (see [`crate::compression`]). Every other message stays text.
pub const CAP_GZIP: &str = "gzip";
/// Capability: the data plane understands [`ServerMessage::TooLarge`], sent instead of a snapshot
/// that would exceed the limit it announced in [`Hello::max_message_bytes`], and NACKs it.
pub const CAP_TOO_LARGE: &str = "too-large";
/// Capability: the data plane applies [`ServerMessage::Delta`] (the changes from a base version
/// it has to the next), and every snapshot reference on the session carries a content hash in
/// the table scheme ([`crate::hash::HashScheme::Table`]). Without it a session is sent full
/// snapshots with hashes in the JSON scheme, as before delta push.
pub const CAP_DELTA: &str = "delta";
/// Capability: the data plane reports, about once a second, the requests it served and how many
/// of them failed, per placement, on the snapshot it serves ([`ClientMessage::Health`]); a
/// staged rollout judges its steps by them.
pub const CAP_HEALTH: &str = "health";
/// Most placements one [`ClientMessage::Health`] names (those with the most requests).
pub const MAX_HEALTH_PLACEMENTS: usize = 100;
/// Default bound on one control-plane message (for a compressed snapshot: its decompressed
/// size).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Bound on one data-plane message. Hello, ACK and NACK are small; nothing a data plane sends
/// needs more, so a peer cannot make the control plane buffer megabytes per connection.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest NACK error a data plane sends (it cuts longer ones, saying so).
pub const MAX_NACK_ERROR_BYTES: usize = 4096;
/// Longest data-plane id: a Kubernetes object name.
pub const MAX_DATA_PLANE_ID_BYTES: usize = 253;

/// Identity of one snapshot: which object lineage, which version, which content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRef {
    /// The object's identity across delete and re-create (its `uid`, or `file:<path>`).
    pub lineage: String,
    /// Rises with every accepted change within a lineage.
    pub version: i64,
    /// Content hash of the spec.
    pub hash: ContentHash,
}

/// Where a snapshot stands against another of the same object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    /// Same lineage and version.
    Same,
    /// Same lineage, later version.
    Newer,
    /// Same lineage, earlier version: applying it would regress.
    Older,
    /// Another lineage (the object was re-created): never "older".
    OtherLineage,
}

impl SnapshotRef {
    /// How `self` relates to `other`.
    pub fn compare(&self, other: &SnapshotRef) -> Ordering {
        if self.lineage != other.lineage {
            return Ordering::OtherLineage;
        }
        match self.version.cmp(&other.version) {
            std::cmp::Ordering::Equal => Ordering::Same,
            std::cmp::Ordering::Greater => Ordering::Newer,
            std::cmp::Ordering::Less => Ordering::Older,
        }
    }
}

/// First message of a data plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The data plane's id (its pod name).
    pub data_plane: String,
    /// The RoutingConfig it serves, as `namespace/name`.
    pub routing_config: String,
    /// The control-plane snapshot it has applied, if any.
    #[serde(default)]
    pub applied: Option<SnapshotRef>,
    /// The protocol version it speaks.
    pub protocol: u32,
    /// Message kinds it understands beyond the basics.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The largest message it accepts, in bytes (its `--max-message-bytes`). A control plane
    /// never sends it a bigger one; with [`CAP_TOO_LARGE`] it says so instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<u64>,
}

/// Messages from a data plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Opens the session.
    Hello(Hello),
    /// The snapshot was applied (or was already active).
    Ack {
        /// Which snapshot.
        snapshot: SnapshotRef,
    },
    /// The snapshot was refused; the data plane keeps its table.
    Nack {
        /// Which snapshot.
        snapshot: SnapshotRef,
        /// Why, naming the offending key where there is one.
        error: String,
        /// Set when a delta could not be applied to the table the data plane has (another base,
        /// or a result that does not hash to the target): the control plane answers with the
        /// full snapshot of the version it serves.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        resync: bool,
    },
    /// Requests and failures per placement since the previous report, served with `snapshot`
    /// (only on a session that negotiated [`CAP_HEALTH`]).
    Health {
        /// The snapshot that served them (the data plane's active one).
        snapshot: SnapshotRef,
        /// Per placement, at most [`MAX_HEALTH_PLACEMENTS`].
        placements: BTreeMap<String, PlacementHealth>,
    },
}

/// One placement's requests in a [`ClientMessage::Health`] report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PlacementHealth {
    /// Requests answered (by the cell, or by the proxy for it).
    pub requests: u64,
    /// Of those, 5xx answers: the cell's, and the proxy's own 502 and 504.
    pub errors: u64,
}

/// The control plane's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version the session will use.
    pub protocol: u32,
    /// Capabilities the control plane will use on this session.
    pub capabilities: Vec<String>,
    /// How often each side must send something (a ping at least), in milliseconds.
    pub heartbeat_ms: u64,
    /// True when the data plane's snapshot is the served one (no snapshot follows).
    pub up_to_date: bool,
}

/// A full snapshot of one RoutingConfig.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMessage {
    /// `namespace/name`.
    pub routing_config: String,
    /// Its identity.
    pub snapshot: SnapshotRef,
    /// The routing rules.
    pub spec: RoutingConfigSpec,
}

impl SnapshotMessage {
    /// The manifest this snapshot stands for, for validation with the shared rules.
    pub fn to_manifest(&self) -> RoutingConfigManifest {
        let (namespace, name) = split_object(&self.routing_config);
        RoutingConfigManifest {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
            },
            spec: self.spec.clone(),
            status: None,
        }
    }
}

/// The changes from a version the data plane has to the next one (sent only with [`CAP_DELTA`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaMessage {
    /// `namespace/name`.
    pub routing_config: String,
    /// The snapshot the changes apply to; the data plane applies them only when it is the one it
    /// serves.
    pub base: SnapshotRef,
    /// The snapshot they make: the result must hash to `snapshot.hash`.
    pub snapshot: SnapshotRef,
    /// What changed: a JSON merge patch of the spec.
    pub changes: SpecChanges,
}

/// Why no snapshot is available for the subscribed RoutingConfig.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingReason {
    /// The object was deleted (data planes keep serving their last-known-good table).
    Deleted,
    /// The control plane has no valid version of it (never existed, or never valid).
    NotFound,
}

/// Messages from the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answers [`Hello`].
    Welcome(Welcome),
    /// A new version to apply.
    Snapshot(SnapshotMessage),
    /// A new version as the changes from one the data plane has.
    Delta(DeltaMessage),
    /// No snapshot is available; keep serving the current table.
    Missing {
        /// `namespace/name`.
        routing_config: String,
        /// Why.
        reason: MissingReason,
    },
    /// The session cannot continue (protocol violation, forbidden subscription); the socket
    /// closes after this.
    Error {
        /// What went wrong.
        message: String,
    },
    /// Sent instead of a snapshot that would exceed the data plane's announced limit (only to
    /// data planes that offered [`CAP_TOO_LARGE`]). The data plane NACKs `snapshot`.
    TooLarge {
        /// `namespace/name`.
        routing_config: String,
        /// The snapshot that was not sent.
        snapshot: SnapshotRef,
        /// Its encoded size, in bytes.
        bytes: u64,
        /// The data plane's limit.
        limit: u64,
    },
}

/// A borrowed [`ServerMessage::Snapshot`]: serializes to exactly the same JSON without copying
/// the spec, so the control plane can size and encode a large table without cloning it.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "snapshot")]
pub struct SnapshotMessageRef<'a> {
    /// `namespace/name`.
    pub routing_config: &'a str,
    /// Its identity.
    pub snapshot: &'a SnapshotRef,
    /// The routing rules.
    pub spec: &'a RoutingConfigSpec,
}

impl SnapshotMessageRef<'_> {
    /// The JSON text.
    pub fn to_json(&self) -> String {
        // Serializing strings and maps of strings into a String cannot fail.
        serde_json::to_string(self).expect("snapshot serializes")
    }

    /// The length of [`Self::to_json`], computed without building the text.
    pub fn json_len(&self) -> usize {
        let mut counter = Counter(0);
        serde_json::to_writer(&mut counter, self).expect("snapshot serializes");
        counter.0
    }

    /// The length of [`Self::to_json`], from the length `base_len` of the message of `base`, a
    /// table from which this one differs in the customers of `changed` (each with its placement
    /// here, `None` when it is not in this table) and in anything else but customers. Costs the
    /// change and the rest of the table, never a pass over its customers: a one-customer change
    /// of a 1M-customer table is sized in microseconds.
    pub fn json_len_after<'c>(
        &self,
        base: &SnapshotMessageRef<'_>,
        base_len: usize,
        changed: impl IntoIterator<Item = (&'c String, Option<&'c String>)>,
    ) -> usize {
        let old = &base.spec.customer_to_placement;
        let new = &self.spec.customer_to_placement;
        // `{"k":"v","k":"v"}`: the entries, a comma between two, and the frame around them.
        let entries = |body: usize, n: usize| if n == 0 { 0 } else { body - (n - 1) };
        let body = |entries: usize, n: usize| if n == 0 { 0 } else { entries + (n - 1) };
        let mut total = entries(base_len - base.frame_len(), old.len());
        for (customer, placement) in changed {
            if let Some(was) = old.get(customer) {
                total -= entry_len(customer, was);
            }
            if let Some(now) = placement {
                total += entry_len(customer, now);
            }
        }
        self.frame_len() + body(total, new.len())
    }

    /// The length of this message with no customers.
    fn frame_len(&self) -> usize {
        let spec = RoutingConfigSpec {
            customer_to_placement: crate::manifest::CustomerMap::new(),
            ..self.spec.clone()
        };
        SnapshotMessageRef { spec: &spec, ..*self }.json_len()
    }
}

/// `"customer":"placement"` as JSON.
fn entry_len(customer: &str, placement: &str) -> usize {
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, customer).expect("a string serializes");
    serde_json::to_writer(&mut counter, placement).expect("a string serializes");
    counter.0 + 1
}

struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Checks a data-plane id: a Kubernetes object name (lowercase letters, digits, `-` and `.`,
/// starting and ending with a letter or digit, at most 253 bytes). The error quotes at most the
/// first 64 bytes of what was sent.
pub fn check_data_plane_id(id: &str) -> Result<(), String> {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = id.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_DATA_PLANE_ID_BYTES
        && bytes.iter().all(|&b| alnum(b) || b == b'-' || b == b'.')
        && alnum(bytes[0])
        && alnum(bytes[bytes.len() - 1]);
    if ok {
        return Ok(());
    }
    // Quoted with escapes, then cut: an escape can be six times the byte it stands for.
    let quoted = truncate(&format!("{:?}", truncate(id, 64)), 128);
    Err(format!(
        "data-plane id {quoted} ({} bytes) is not a Kubernetes object name: 1-{MAX_DATA_PLANE_ID_BYTES} lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit",
        id.len()
    ))
}

/// The token of an `Authorization` header value, if it uses the `Bearer` scheme. The scheme is
/// case-insensitive (RFC 9110 section 11.1); the token is what follows the spaces.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_matches(' ');
    (!token.is_empty()).then_some(token)
}

/// `text` cut to at most `max` bytes on a character boundary, with `…` appended when cut, so
/// what a peer sent can be stored and logged without growing with it.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Splits `namespace/name`; a bare name means namespace `default`.
pub fn split_object(object: &str) -> (&str, &str) {
    object.split_once('/').unwrap_or(("default", object))
}

/// Checks a `namespace/name` reference, naming what is wrong.
pub fn check_object_ref(object: &str) -> Result<(), String> {
    let (ns, name) = object
        .split_once('/')
        .ok_or_else(|| format!("`{object}` must be NAMESPACE/NAME"))?;
    let dns_label = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    if !dns_label(ns) || !dns_label(name) {
        return Err(format!(
            "`{object}` must be NAMESPACE/NAME with lowercase letters, digits, `-` and `.`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(lineage: &str, version: i64) -> SnapshotRef {
        SnapshotRef {
            lineage: lineage.into(),
            version,
            hash: serde_json::from_str(&format!("\"sha256:{}\"", "ab".repeat(32))).unwrap(),
        }
    }

    /// The size from a base's size and the change equals the size counted over the whole
    /// message, whatever the change: ids that JSON escapes, a table emptied or filled from none,
    /// a placement map and a version that changed too.
    #[test]
    fn a_size_from_the_change_is_the_size_of_the_whole_message() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let id = prop::sample::select(vec!["a", "b\\\"q", "c\u{e9}", "customer-00000042", "\u{1}x", "z"]);
        let placement = prop::sample::select(vec!["p", "tier\"1", "q"]);
        let table = prop::collection::btree_map(id.clone(), placement.clone(), 0..5);
        let change = prop::collection::btree_map(id, prop::option::of(placement), 0..5);
        let mut runner = TestRunner::new(Config::with_cases(2_000));
        runner
            .run(&(table, change, any::<bool>()), |(table, change, endpoints)| {
                let spec = |customers: &BTreeMap<&str, &str>, endpoint: &str| RoutingConfigSpec {
                    customer_header: "x-customer-id".into(),
                    default_placement: "p".into(),
                    customer_to_placement: customers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    placement_to_endpoint: [("p".to_owned(), endpoint.to_owned())].into(),
                    rollout: None,
                };
                let mut after = table.clone();
                let mut changed = BTreeMap::new();
                for (customer, placement) in &change {
                    match placement {
                        Some(p) => after.insert(customer, p),
                        None => after.remove(customer),
                    };
                    changed.insert((*customer).to_owned(), placement.map(str::to_owned));
                }
                let old = spec(&table, "http://a:1");
                let new = spec(&after, if endpoints { "http://b:22" } else { "http://a:1" });
                let (r1, r2) = (r("l", 9), r("l", 10));
                let base = SnapshotMessageRef {
                    routing_config: "ns/t",
                    snapshot: &r1,
                    spec: &old,
                };
                let next = SnapshotMessageRef {
                    routing_config: "ns/t",
                    snapshot: &r2,
                    spec: &new,
                };
                let len = next.json_len_after(
                    &base,
                    base.json_len(),
                    changed.iter().map(|(k, v)| (k, v.as_ref())),
                );
                prop_assert_eq!(len, next.json_len());
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn ordering_never_calls_another_lineage_older() {
        assert_eq!(r("a", 2).compare(&r("a", 1)), Ordering::Newer);
        assert_eq!(r("a", 1).compare(&r("a", 2)), Ordering::Older);
        assert_eq!(r("a", 1).compare(&r("a", 1)), Ordering::Same);
        assert_eq!(r("b", 1).compare(&r("a", 9)), Ordering::OtherLineage);
    }

    #[test]
    fn messages_round_trip_and_tolerate_unknown_fields() {
        let hello = ClientMessage::Hello(Hello {
            data_plane: "dp-1".into(),
            routing_config: "default/routes".into(),
            applied: Some(r("u", 3)),
            protocol: PROTOCOL_VERSION,
            capabilities: vec![CAP_FULL_SNAPSHOT.into()],
            max_message_bytes: Some(1 << 20),
        });
        let text = serde_json::to_string(&hello).unwrap();
        assert!(text.starts_with(r#"{"type":"hello""#), "{text}");
        assert_eq!(serde_json::from_str::<ClientMessage>(&text).unwrap(), hello);
        let newer = text.replacen('{', r#"{"future_field":1,"#, 1);
        assert_eq!(serde_json::from_str::<ClientMessage>(&newer).unwrap(), hello);
    }

    #[test]
    fn a_borrowed_snapshot_serializes_like_the_owned_one() {
        let spec: RoutingConfigSpec = serde_json::from_str(
            r#"{"defaultPlacement":"a","customerToPlacement":{"x\\y":"a","é":"a"},"placementToEndpoint":{"a":"http://a"}}"#,
        )
        .unwrap();
        let snapshot = r("u", 7);
        let owned = serde_json::to_string(&ServerMessage::Snapshot(SnapshotMessage {
            routing_config: "ns/r".into(),
            snapshot: snapshot.clone(),
            spec: spec.clone(),
        }))
        .unwrap();
        let borrowed = SnapshotMessageRef {
            routing_config: "ns/r",
            snapshot: &snapshot,
            spec: &spec,
        };
        assert_eq!(borrowed.to_json(), owned);
        assert_eq!(borrowed.json_len(), owned.len());
    }

    #[test]
    fn data_plane_ids_are_kubernetes_names() {
        for good in ["dp-1", "a", "web-7d9f8-x2k4p", "a.b-c", &"a".repeat(253)] {
            assert!(check_data_plane_id(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "Dp", "a_b", "a b", "é", &"a".repeat(254)] {
            assert!(check_data_plane_id(bad).is_err(), "{bad:?}");
        }
        let err = check_data_plane_id(&"X".repeat(1 << 20)).unwrap_err();
        assert!(
            err.len() < 400,
            "the error echoes the whole id: {} bytes",
            err.len()
        );
        // Found by the protocol_client fuzz target: DEL escapes as `\u{7f}`, six bytes for one.
        let err = check_data_plane_id(&format!("d{}", "\u{7f}".repeat(200))).unwrap_err();
        assert!(err.len() < 400, "escapes grow the error: {} bytes", err.len());
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(bearer_token("bearer   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("aéb", 2), "a…");
        assert_eq!(truncate("abcd", 2), "ab…");
    }

    #[test]
    fn object_refs_are_checked() {
        assert!(check_object_ref("default/routes").is_ok());
        assert!(check_object_ref("routes").is_err());
        assert!(check_object_ref("Default/routes").is_err());
        assert!(check_object_ref("ns/").is_err());
    }
}
