//! The proxy's own responses: short JSON bodies that say which placement failed and how.
//!
//! A 502 (the cell could not be reached or broke the connection) and a 504 (the cell did not
//! answer in time) are different failures for an operator, so they are different statuses; and
//! every one of them is counted as the proxy's own (`cellroute_proxy_errors_total`), apart from
//! the statuses cells send.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{Either, Full};
use serde_json::json;

use super::ProxyBody;

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// No routing table is active yet.
pub fn no_table() -> Response<ProxyBody> {
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": "no routing table", "detail": "no valid routing configuration has been applied yet; see GET /admin/config on the admin port"}),
    )
}

/// The upstream could not be reached or failed before sending a response.
pub fn unreachable(placement: &str, detail: String) -> Response<ProxyBody> {
    json_response(
        StatusCode::BAD_GATEWAY,
        json!({"error": "upstream unreachable", "placement": placement, "detail": detail}),
    )
}

/// The upstream did not send response headers in time.
pub fn timeout(placement: &str, timeout_ms: u128) -> Response<ProxyBody> {
    json_response(
        StatusCode::GATEWAY_TIMEOUT,
        json!({"error": "upstream timeout", "placement": placement, "timeout_ms": timeout_ms}),
    )
}

/// The request cannot be forwarded as given.
pub fn bad_request(detail: String) -> Response<ProxyBody> {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"error": "bad request", "detail": detail}),
    )
}

/// `CONNECT`: a reverse proxy to cells opens no tunnels to arbitrary addresses.
pub fn connect_refused() -> Response<ProxyBody> {
    let mut resp = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        json!({"error": "method not allowed", "detail": "CONNECT is not proxied: requests are routed to cells by customer, not to an address the client names"}),
    );
    resp.headers_mut().insert(
        header::ALLOW,
        header::HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE"),
    );
    resp
}
