//! A client for the data plane's admin API, and a parser for its metrics text.
//!
//! Endpoints used: `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /admin/config`,
//! `GET /admin/history`, `POST /admin/reload`, `POST /admin/rollback[?generation=N]` and
//! `POST /admin/source` (with [`AdminClient::post_body_as`]). The
//! client sends the bearer token it was built with on its POST requests (its GET requests carry
//! none); the `*_as` variants take the `Authorization` header explicitly so tests can send a
//! missing, wrong or right one.

use std::net::SocketAddr;

use crate::client::{Reply, http_client};

/// Admin API client bound to one data plane.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client for the admin server at `addr` that authenticates with `token`.
    pub fn new(addr: SocketAddr, token: &str) -> Self {
        Self {
            base: format!("http://{addr}"),
            token: token.to_owned(),
            http: http_client(),
        }
    }

    /// The `Authorization` header value this client sends.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// `GET` a path on the admin server.
    ///
    /// # Panics
    ///
    /// When the admin server cannot be reached at all.
    pub async fn get(&self, path: &str) -> Reply {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on the admin server: {e}"));
        Reply::read(response).await
    }

    /// `GET` a path with an optional `Authorization` header value.
    ///
    /// # Panics
    ///
    /// When the admin server cannot be reached at all.
    pub async fn get_as(&self, path: &str, authorization: Option<&str>) -> Reply {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(value) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on the admin server: {e}"));
        Reply::read(response).await
    }

    /// `POST` a path with an optional `Authorization` header value.
    ///
    /// # Panics
    ///
    /// When the admin server cannot be reached at all.
    pub async fn post_as(&self, path: &str, authorization: Option<&str>) -> Reply {
        let mut request = self.http.post(format!("{}{path}", self.base));
        if let Some(value) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path} on the admin server: {e}"));
        Reply::read(response).await
    }

    /// `POST` a path with a body and an optional `Authorization` header value.
    ///
    /// # Panics
    ///
    /// When the admin server cannot be reached at all.
    pub async fn post_body_as(&self, path: &str, authorization: Option<&str>, body: &str) -> Reply {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .body(body.to_owned());
        if let Some(value) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path} on the admin server: {e}"));
        Reply::read(response).await
    }

    /// `GET /healthz`.
    pub async fn healthz(&self) -> Reply {
        self.get("/healthz").await
    }

    /// `GET /readyz`.
    pub async fn readyz(&self) -> Reply {
        self.get("/readyz").await
    }

    /// `GET /admin/config`.
    pub async fn config(&self) -> Reply {
        self.get("/admin/config").await
    }

    /// `GET /admin/history`.
    pub async fn history(&self) -> Reply {
        self.get("/admin/history").await
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text
    }

    /// The value of one metric sample; see [`metric_value`].
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics().await, name, labels)
    }

    /// Like [`AdminClient::metric`], reading an absent sample as 0 (a counter never
    /// incremented may not be exported yet).
    pub async fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metric(name, labels).await.unwrap_or(0.0)
    }

    /// `POST /admin/reload` with this client's token.
    pub async fn reload(&self) -> Reply {
        self.post_as("/admin/reload", Some(&self.bearer())).await
    }

    /// `POST /admin/rollback`, to the previous generation or to `generation`, with the token.
    pub async fn rollback(&self, generation: Option<u64>) -> Reply {
        let path = match generation {
            Some(n) => format!("/admin/rollback?generation={n}"),
            None => "/admin/rollback".to_owned(),
        };
        self.post_as(&path, Some(&self.bearer())).await
    }

    /// The active `config_generation` according to `GET /admin/config`.
    ///
    /// # Panics
    ///
    /// When the answer has no integer `config_generation`.
    pub async fn generation(&self) -> u64 {
        let reply = self.config().await;
        reply
            .u64("config_generation")
            .unwrap_or_else(|| panic!("no config_generation in /admin/config: {reply}"))
    }
}

/// The value of the sample `name{labels...}` in Prometheus or OpenMetrics text.
///
/// `labels` must all be present on the sample (others may be too); with no labels the first
/// sample of that name matches. Comment lines (`# TYPE`, `# EOF`, ...) are skipped.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(parse_sample)
        .find(|sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(k, v)| sample.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|sample| sample.value)
}

/// One parsed sample line.
#[derive(Debug, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses `name{a="x",b="y"} value [timestamp]`.
fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) if line[..open].find(' ').is_none() => {
            let close = open + line[open..].find('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        _ => {
            let (name, rest) = line.split_once(' ')?;
            (name, Vec::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `a="x",b="y"` (values may hold escaped quotes and commas).
fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_owned(), value));
        rest = after[end + 1..].trim_start().trim_start_matches(',').trim_start();
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP config_reload_success Reloads applied.
# TYPE config_reload_success counter
config_reload_success_total 3
config_generation 4
cellroute_requests_total{placement="tier1",status_class="2xx"} 17
cellroute_requests_total{placement="tier2",status_class="5xx"} 2
cellroute_upstream_request_duration_seconds_bucket{placement="tier1",le="+Inf"} 17
weird{msg="a \"quoted\", comma",x="y"} 1.5 1700000000
# EOF
"#;

    #[test]
    fn finds_samples_by_name_and_labels() {
        assert_eq!(metric_value(TEXT, "config_reload_success_total", &[]), Some(3.0));
        assert_eq!(metric_value(TEXT, "config_generation", &[]), Some(4.0));
        let labels = [("placement", "tier2"), ("status_class", "5xx")];
        assert_eq!(metric_value(TEXT, "cellroute_requests_total", &labels), Some(2.0));
        assert_eq!(
            metric_value(TEXT, "cellroute_requests_total", &[("placement", "tier1")]),
            Some(17.0)
        );
        let le = [("placement", "tier1"), ("le", "+Inf")];
        assert_eq!(
            metric_value(TEXT, "cellroute_upstream_request_duration_seconds_bucket", &le),
            Some(17.0)
        );
        assert_eq!(
            metric_value(TEXT, "weird", &[("msg", "a \"quoted\", comma"), ("x", "y")]),
            Some(1.5)
        );
    }

    #[test]
    fn absent_samples_are_none() {
        assert_eq!(metric_value(TEXT, "config_reload_failure_total", &[]), None);
        assert_eq!(
            metric_value(TEXT, "cellroute_requests_total", &[("placement", "tier9")]),
            None
        );
        assert_eq!(metric_value(TEXT, "config_reload_success", &[]), None);
    }
}
