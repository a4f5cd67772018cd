//! Header rewriting between client and cell.
//!
//! Hop-by-hop headers (RFC 9110 section 7.6.1) are dropped in both directions, except what a
//! proxy re-creates for the next hop itself: `te: trailers` when the client accepts trailers
//! (gRPC needs it on HTTP/2), and `connection: upgrade` with the client's `upgrade` on a request
//! that upgrades. `trailer` is end-to-end (RFC 9110 section 6.6.2) and is kept: hyper sends
//! HTTP/1.1 trailers only for the fields it names.
//!
//! The forwarding headers avoid allocating per request where they can: the usual
//! `x-forwarded-for` (the client alone) is made once per client connection ([`Peer`]).

use std::io::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");
const TRAILERS: HeaderValue = HeaderValue::from_static("trailers");
const HTTP: HeaderValue = HeaderValue::from_static("http");

/// The client end of one connection: what the forwarding headers say about it.
#[derive(Debug)]
pub struct Peer {
    /// `x-forwarded-for` when the request carries none: the client's address alone.
    xff_alone: HeaderValue,
}

impl Peer {
    /// The peer at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let mut buf = Vec::with_capacity(48);
        // Writing into a Vec cannot fail.
        let _ = write!(buf, "{}", addr.ip());
        let xff_alone = HeaderValue::from_maybe_shared(Bytes::from(buf))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { xff_alone }
    }
}

/// Whether a header value, a comma-separated list, contains `token` (case-insensitively).
fn lists(values: header::GetAll<'_, HeaderValue>, token: &str) -> bool {
    values.iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` plus `Upgrade`),
/// if the proxy tunnels it. `h2c` is never tunnelled: it would take every later request on the
/// connection past the routing (RFC 9113 also deprecates it).
pub fn upgrade_protocol(headers: &HeaderMap, version: Version) -> Option<HeaderValue> {
    if version != Version::HTTP_11 || !lists(headers.get_all(header::CONNECTION), "upgrade") {
        return None;
    }
    let upgrade = headers.get(header::UPGRADE)?;
    if lists(headers.get_all(header::UPGRADE), "h2c") {
        return None;
    }
    Some(upgrade.clone())
}

/// The hop-by-hop headers every message loses.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Removes hop-by-hop headers (RFC 9110 section 7.6.1), including any the `Connection` header
/// names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the few names present is cheaper than a hash
    // lookup per hop-by-hop name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    let present: Vec<HeaderName> = headers.keys().filter(|k| is_hop_by_hop(k)).cloned().collect();
    for name in present {
        headers.remove(name);
    }
}

/// Rewrites a client's request headers for the cell: hop-by-hop headers out, `Host` set to the
/// cell, the forwarding headers added, and `te: trailers` and the upgrade re-created where the
/// client asked for them.
///
/// `original_host` is the client's `Host` (or HTTP/2 `:authority`), for `x-forwarded-host`.
pub fn prepare_request(
    headers: &mut HeaderMap,
    peer: &Peer,
    original_host: Option<HeaderValue>,
    host: &HeaderValue,
    upgrade: Option<HeaderValue>,
) {
    let trailers = lists(headers.get_all(header::TE), "trailers");
    strip_hop_by_hop(headers);
    add_forwarded(headers, peer, original_host);
    headers.insert(header::HOST, host.clone());
    if trailers {
        headers.insert(header::TE, TRAILERS);
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, UPGRADE_TOKEN);
        headers.insert(header::UPGRADE, protocol);
    }
}

/// Rewrites a cell's response headers for the client: hop-by-hop headers out, except the
/// `Upgrade` of a 101 that the tunnel needs.
pub fn prepare_response(headers: &mut HeaderMap, switching: bool) {
    let upgrade = if switching {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    strip_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, UPGRADE_TOKEN);
        headers.insert(header::UPGRADE, protocol);
    }
}

/// Adds `x-forwarded-for` (appending the client), `x-forwarded-proto` and `x-forwarded-host`.
pub fn add_forwarded(headers: &mut HeaderMap, peer: &Peer, original_host: Option<HeaderValue>) {
    // Several `x-forwarded-for` lines form one list (RFC 9110 section 5.3): keep every hop.
    let xff = if headers.contains_key(&X_FORWARDED_FOR) {
        let mut xff = Vec::with_capacity(64);
        for prior in headers.get_all(&X_FORWARDED_FOR) {
            let prior = prior.as_bytes().trim_ascii();
            if !prior.is_empty() {
                xff.extend_from_slice(prior);
                xff.extend_from_slice(b", ");
            }
        }
        xff.extend_from_slice(peer.xff_alone.as_bytes());
        HeaderValue::from_maybe_shared(Bytes::from(xff)).unwrap_or_else(|_| peer.xff_alone.clone())
    } else {
        peer.xff_alone.clone()
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    headers.insert(X_FORWARDED_PROTO.clone(), HTTP);
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_listed_and_standard_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("x-foo, close"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-keep"]);
    }

    #[test]
    fn appends_to_existing_forwarded_for() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(
            &mut h,
            &Peer::new("127.0.0.1:5".parse().unwrap()),
            Some(HeaderValue::from_static("svc")),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "svc");
    }

    #[test]
    fn keeps_every_forwarded_for_line() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2, 10.0.0.3"));
        add_forwarded(&mut h, &Peer::new("127.0.0.1:5".parse().unwrap()), None);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1");
    }

    #[test]
    fn trailers_and_upgrades_are_recreated_only_when_asked_for() {
        let peer = Peer::new("[::1]:5".parse().unwrap());
        let host = HeaderValue::from_static("cell:1");
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip, Trailers"));
        h.insert(header::TRAILER, HeaderValue::from_static("grpc-status"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::HOST, HeaderValue::from_static("front"));
        let upgrade = upgrade_protocol(&h, Version::HTTP_11);
        assert_eq!(upgrade.as_ref().map(|v| v.as_bytes()), Some(&b"websocket"[..]));
        assert_eq!(upgrade_protocol(&h, Version::HTTP_10), None);
        assert_eq!(upgrade_protocol(&h, Version::HTTP_2), None);
        let front = h.get(header::HOST).cloned();
        prepare_request(&mut h, &peer, front, &host, upgrade);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["trailer"], "grpc-status");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["host"], "cell:1");
        assert_eq!(h["x-forwarded-host"], "front");
        assert_eq!(h["x-forwarded-for"], "::1");

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        // `upgrade` without `connection: upgrade` is not a request to upgrade.
        assert_eq!(upgrade_protocol(&h, Version::HTTP_11), None);
        prepare_request(&mut h, &peer, None, &host, None);
        assert!(!h.contains_key("te") && !h.contains_key("upgrade") && !h.contains_key("connection"));
    }

    #[test]
    fn h2c_upgrades_are_not_tunnelled() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("upgrade, http2-settings"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert_eq!(upgrade_protocol(&h, Version::HTTP_11), None);
    }

    #[test]
    fn a_101_keeps_its_upgrade_and_other_responses_lose_theirs() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let mut other = h.clone();
        prepare_response(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        prepare_response(&mut other, false);
        assert!(other.is_empty());
    }
}
