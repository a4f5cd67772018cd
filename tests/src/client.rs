//! HTTP plumbing shared by the admin and proxy clients.
//!
//! Tests compare status codes and JSON bodies, so every answer is reduced to a [`Reply`] that
//! keeps both the raw text (for failure messages) and the parsed JSON (for assertions).

use std::time::Duration;

use serde_json::Value;

/// Upper bound on any one request, so a hung server fails a test instead of hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A reqwest client for loopback tests.
///
/// # Panics
///
/// When reqwest cannot build a client, which only a broken environment causes.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        // A developer's HTTP_PROXY must never capture loopback test traffic.
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("build reqwest client")
}

/// One HTTP answer, reduced to what tests assert on.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// `content-type` header, if any.
    pub content_type: Option<String>,
    /// The body as text (lossy UTF-8).
    pub text: String,
    /// The body parsed as JSON, or `Value::Null` when it is not JSON.
    pub json: Value,
}

impl Reply {
    /// Reads a whole reqwest response.
    ///
    /// # Panics
    ///
    /// When the body cannot be read, which means the connection broke mid-answer.
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let bytes = response.bytes().await.expect("read response body");
        Self::from_parts(status, content_type, &bytes)
    }

    /// Builds a reply from a status, a content type and a body.
    pub fn from_parts(status: u16, content_type: Option<String>, body: &[u8]) -> Self {
        let text = String::from_utf8_lossy(body).into_owned();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            content_type,
            text,
            json,
        }
    }

    /// A string field of the JSON body, or `""` when absent.
    pub fn str(&self, field: &str) -> &str {
        self.json.get(field).and_then(Value::as_str).unwrap_or("")
    }

    /// An integer field of the JSON body.
    pub fn u64(&self, field: &str) -> Option<u64> {
        self.json.get(field).and_then(Value::as_u64)
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}", self.status, self.text)
    }
}
