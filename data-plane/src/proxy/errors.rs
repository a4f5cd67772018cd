//! The proxy's own responses: short JSON bodies that say which placement failed and how, or,
//! for gRPC requests, the same failure as a gRPC status.
//!
//! A 502 (the cell could not be reached or broke the connection) and a 504 (the cell did not
//! answer in time) are different failures for an operator, so they are different statuses; and
//! every one of them is counted as the proxy's own (`cellroute_proxy_errors_total`), apart from
//! the statuses cells send.
//!
//! A gRPC client cannot read a JSON error: it expects `grpc-status`. So a request whose
//! `content-type` is `application/grpc…` gets a Trailers-Only response (HTTP 200, the status in
//! the headers, no body), with the codes of gRPC's HTTP mapping: UNAVAILABLE for a cell that
//! cannot be reached or no table (clients may retry), DEADLINE_EXCEEDED for the upstream
//! timeout (the cell may have acted: no blind retry), INTERNAL for a request that cannot be
//! forwarded.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use serde_json::json;

use super::ProxyBody;

/// A failure the proxy answers itself.
#[derive(Debug)]
pub enum Local<'a> {
    /// No routing table is active yet.
    NoTable,
    /// The cell could not be reached or failed before sending a response.
    Unreachable {
        /// The placement.
        placement: &'a str,
        /// What failed.
        detail: String,
    },
    /// The cell did not send response headers in time.
    Timeout {
        /// The placement.
        placement: &'a str,
        /// `--upstream-timeout`.
        timeout_ms: u128,
    },
    /// The request cannot be forwarded as given.
    BadRequest {
        /// Why.
        detail: String,
    },
    /// `CONNECT`: a reverse proxy to cells opens no tunnels to addresses a client names.
    Connect,
}

/// gRPC status codes used here.
const GRPC_DEADLINE_EXCEEDED: &str = "4";
const GRPC_INTERNAL: &str = "13";
const GRPC_UNAVAILABLE: &str = "14";

impl Local<'_> {
    fn status(&self) -> StatusCode {
        match self {
            Local::NoTable => StatusCode::SERVICE_UNAVAILABLE,
            Local::Unreachable { .. } => StatusCode::BAD_GATEWAY,
            Local::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Local::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Local::Connect => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn body(&self) -> serde_json::Value {
        match self {
            Local::NoTable => {
                json!({"error": "no routing table", "detail": "no valid routing configuration has been applied yet; see GET /admin/config on the admin port"})
            }
            Local::Unreachable { placement, detail } => {
                json!({"error": "upstream unreachable", "placement": placement, "detail": detail})
            }
            Local::Timeout {
                placement,
                timeout_ms,
            } => {
                json!({"error": "upstream timeout", "placement": placement, "timeout_ms": timeout_ms})
            }
            Local::BadRequest { detail } => json!({"error": "bad request", "detail": detail}),
            Local::Connect => {
                json!({"error": "method not allowed", "detail": "CONNECT is not proxied: requests are routed to cells by customer, not to an address the client names"})
            }
        }
    }

    fn grpc_status(&self) -> &'static str {
        match self {
            Local::NoTable | Local::Unreachable { .. } => GRPC_UNAVAILABLE,
            Local::Timeout { .. } => GRPC_DEADLINE_EXCEEDED,
            Local::BadRequest { .. } | Local::Connect => GRPC_INTERNAL,
        }
    }

    /// The response: a gRPC status for a gRPC request ([`is_grpc`]), JSON otherwise.
    pub fn respond(&self, grpc: bool) -> Response<ProxyBody> {
        if grpc { self.grpc() } else { self.json() }
    }

    fn json(&self) -> Response<ProxyBody> {
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from(self.body().to_string()))));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Local::Connect = self {
            headers.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE"),
            );
        }
        resp
    }

    fn grpc(&self) -> Response<ProxyBody> {
        let body = self.body();
        let message = match (&body["error"], &body["detail"]) {
            (serde_json::Value::String(e), serde_json::Value::String(d)) => format!("cellroute: {e}: {d}"),
            (serde_json::Value::String(e), _) => format!("cellroute: {e}"),
            _ => "cellroute: proxy error".to_owned(),
        };
        let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from_static(self.grpc_status()));
        if let Ok(v) = HeaderValue::from_str(&grpc_message(&message)) {
            headers.insert("grpc-message", v);
        }
        resp
    }
}

/// Whether a request is gRPC (or gRPC-Web), by its content type.
pub fn is_grpc(request: &HeaderMap) -> bool {
    request
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// `grpc-message` encoding: percent-encode what is not printable ASCII, and `%` itself.
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_get_a_grpc_status_and_others_json() {
        let mut grpc = HeaderMap::new();
        grpc.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        let err = Local::Timeout {
            placement: "tier1",
            timeout_ms: 300,
        };
        let resp = err.respond(is_grpc(&grpc));
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "4");
        assert_eq!(resp.headers()["grpc-message"], "cellroute: upstream timeout");
        assert!(!is_grpc(&HeaderMap::new()));
        let resp = err.respond(false);
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(grpc_message("50% naïve\n"), "50%25 na%C3%AFve%0A");
    }
}
