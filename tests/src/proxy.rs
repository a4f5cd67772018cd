//! A client for the data plane's proxy port.
//!
//! [`ProxyClient`] sends ordinary requests carrying a customer id and reads the echo cell's
//! answer. [`raw_request`] sends a request with exactly the headers given, over a fresh
//! HTTP/1.1 connection, for the hop-by-hop tests: a high-level client may add, merge or drop
//! headers such as `connection` and `te` on its own, which would make those tests prove nothing.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::client::{REQUEST_TIMEOUT, Reply, http_client};

/// The header that carries the customer id unless a config says otherwise.
pub const DEFAULT_CUSTOMER_HEADER: &str = "x-customer-id";

/// Client for the proxy port of one data plane.
#[derive(Debug, Clone)]
pub struct ProxyClient {
    addr: SocketAddr,
    header: String,
    http: reqwest::Client,
}

impl ProxyClient {
    /// A client for the proxy at `addr`, sending the customer id in `x-customer-id`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            header: DEFAULT_CUSTOMER_HEADER.to_owned(),
            http: http_client(),
        }
    }

    /// The same client, sending the customer id in `header` instead.
    pub fn with_header(mut self, header: &str) -> Self {
        header.clone_into(&mut self.header);
        self
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of `path_and_query` on the proxy.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    /// The underlying reqwest client, for requests the helpers do not cover.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends `method path` as `customer` (no customer header when `None`) with `body`.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        customer: Option<&str>,
        body: &str,
    ) -> Result<Reply, reqwest::Error> {
        let mut request = self.http.request(method, self.url(path_and_query));
        if let Some(id) = customer {
            request = request.header(self.header.as_str(), id);
        }
        if !body.is_empty() {
            request = request.body(body.to_owned());
        }
        Ok(Reply::read(request.send().await?).await)
    }

    /// `GET path` as `customer`.
    ///
    /// # Panics
    ///
    /// When the proxy cannot be reached at all.
    pub async fn get(&self, path_and_query: &str, customer: Option<&str>) -> Reply {
        self.send(Method::GET, path_and_query, customer, "")
            .await
            .unwrap_or_else(|e| panic!("GET {path_and_query} through the proxy: {e}"))
    }

    /// The name of the cell that answers `GET /` for `customer`, or why there is none.
    ///
    /// Meant for [`crate::wait::eventually`]: errors are strings that explain the state.
    pub async fn cell_for(&self, customer: Option<&str>) -> Result<String, String> {
        let reply = self
            .send(Method::GET, "/", customer, "")
            .await
            .map_err(|e| format!("request for {customer:?} failed: {e}"))?;
        if reply.status != 200 {
            return Err(format!("request for {customer:?} answered {reply}"));
        }
        Ok(reply.str("cell").to_owned())
    }

    /// Waits until `customer` is served by `cell`, failing after `timeout`.
    pub async fn wait_for_cell(&self, customer: Option<&str>, cell: &str, timeout: std::time::Duration) {
        crate::wait::eventually(
            &format!("customer {customer:?} to reach cell {cell}"),
            timeout,
            || async {
                match self.cell_for(customer).await? {
                    got if got == cell => Ok(()),
                    got => Err(format!("still served by {got}")),
                }
            },
        )
        .await;
    }

    /// Asserts that `customer` is served by `cell` right now.
    ///
    /// # Panics
    ///
    /// When another cell answers, or the request fails.
    pub async fn assert_cell(&self, customer: Option<&str>, cell: &str) {
        match self.cell_for(customer).await {
            Ok(got) => assert_eq!(got, cell, "customer {customer:?} routed to the wrong cell"),
            Err(e) => panic!("customer {customer:?} should reach {cell}: {e}"),
        }
    }
}

/// Sends one request over a fresh HTTP/1.1 connection with exactly `headers` (plus `host`).
///
/// # Panics
///
/// When the connection or the exchange fails, or takes longer than [`REQUEST_TIMEOUT`].
pub async fn raw_request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let exchange = async {
        let stream = TcpStream::connect(addr).await.expect("connect to the proxy");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("valid raw request");
        let response = sender.send_request(request).await.expect("send raw request");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = response
            .into_body()
            .collect()
            .await
            .expect("read raw response")
            .to_bytes();
        Reply::from_parts(status, content_type, &body)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .expect("raw request timed out")
}
