//! A placement's endpoint URL, parsed the one way every binary parses it.
//!
//! Validation and the data plane's upstream construction both go through [`Endpoint::parse`], so
//! an endpoint the control plane accepts is one every data plane can forward to: there is no
//! second URL parser with its own opinion (the WHATWG parser behind `url` accepts
//! `http://bücher.example`, `http://h\path` and `HTTP://H`; the `http` crate's request URIs do
//! not). Endpoints are therefore plain ASCII, written the way they are sent: an internationalised
//! host is refused with its punycode form as the suggested fix, rather than silently rewritten.
//!
//! The scheme also says which protocol the proxy speaks to the cell ([`Protocol`]): `http` is
//! HTTP/1.1, `h2c` is HTTP/2 over cleartext TCP with prior knowledge (gRPC servers and other
//! HTTP/2-only cells), and `https` is TLS whose ALPN offers `h2` and `http/1.1` so the cell
//! chooses. A scheme rather than a separate field keeps every existing manifest meaning what it
//! meant, and keeps the protocol next to the address it applies to.

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};

/// Longest accepted endpoint URL, in bytes.
pub const MAX_ENDPOINT_BYTES: usize = 2048;

/// How the proxy speaks to a cell, chosen by the endpoint URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `http://`: HTTP/1.1 over TCP, on pooled keep-alive connections.
    Http1,
    /// `h2c://`: HTTP/2 over TCP with prior knowledge (RFC 9113 section 3.3), multiplexed on one
    /// connection. Requests that upgrade the connection (WebSocket) go over HTTP/1.1 to the same
    /// address, since HTTP/2 has no `Upgrade`.
    H2c,
    /// `https://`: TLS; ALPN offers `h2` and `http/1.1` and the cell picks one. Upgrade requests
    /// offer only `http/1.1`.
    Https,
}

impl Protocol {
    /// The scheme as written in an endpoint URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http",
            Protocol::H2c => "h2c",
            Protocol::Https => "https",
        }
    }

    /// Default port when the endpoint names none.
    pub fn default_port(self) -> u16 {
        match self {
            Protocol::Http1 | Protocol::H2c => 80,
            Protocol::Https => 443,
        }
    }
}

/// An endpoint as the proxy uses it: protocol, scheme, authority, base path and the `Host` header
/// value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// What the proxy speaks to the cell.
    pub protocol: Protocol,
    /// The scheme of the forwarded request's URI (`:scheme` in HTTP/2): `http` for `http` and
    /// `h2c` endpoints, `https` for `https` ones.
    pub scheme: Scheme,
    /// Host and optional port.
    pub authority: Authority,
    /// The endpoint's path without a trailing slash; empty for `http://host:port`.
    pub base_path: String,
    /// The `Host` header sent upstream (the authority).
    pub host_header: HeaderValue,
}

impl Endpoint {
    /// Parses and checks one endpoint URL; the error says what is wrong and, where it can, what
    /// to write instead.
    pub fn parse(endpoint: &str) -> Result<Self, String> {
        if endpoint.len() > MAX_ENDPOINT_BYTES {
            return Err(format!(
                "endpoint is {} bytes, over the limit of {MAX_ENDPOINT_BYTES}",
                endpoint.len()
            ));
        }
        if !endpoint.is_ascii() {
            let hint = url::Url::parse(endpoint)
                .map(|u| format!("; write it in ASCII, as `{}`", u.as_str().trim_end_matches('/')))
                .unwrap_or_default();
            return Err(format!(
                "endpoint `{endpoint}` contains non-ASCII characters (internationalised hosts must be written in punycode, paths percent-encoded){hint}"
            ));
        }
        let (protocol, rest) = match endpoint.split_once("://") {
            Some(("http", rest)) => (Protocol::Http1, rest),
            Some(("h2c", rest)) => (Protocol::H2c, rest),
            Some(("https", rest)) => (Protocol::Https, rest),
            Some((scheme, _)) => {
                return Err(format!(
                    "endpoint `{endpoint}` must use `http`, `h2c` (HTTP/2 without TLS) or `https` (lowercase), not `{scheme}`"
                ));
            }
            None => {
                return Err(format!(
                    "endpoint `{endpoint}` is not an absolute URL (no scheme): write http://HOST[:PORT][/PATH]"
                ));
            }
        };
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("endpoint `{endpoint}` has no host"));
        }
        // `h2c` is checked exactly as `http` is: the URL standard treats unknown schemes more
        // loosely (no host parsing), and the two differ only in the protocol spoken.
        let as_http = match protocol {
            Protocol::H2c => format!("http://{rest}"),
            Protocol::Http1 | Protocol::Https => endpoint.to_owned(),
        };
        let uri: Uri = as_http
            .parse()
            .map_err(|e| format!("endpoint `{endpoint}` is not an absolute URL: {e}"))?;
        let scheme = match protocol {
            Protocol::Http1 | Protocol::H2c => Scheme::HTTP,
            Protocol::Https => Scheme::HTTPS,
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("endpoint `{endpoint}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("endpoint `{endpoint}` must not carry credentials"));
        }
        if authority.host().is_empty() {
            return Err(format!("endpoint `{endpoint}` has no host"));
        }
        if uri.query().is_some() || endpoint.contains('#') {
            return Err(format!("endpoint `{endpoint}` must not have a query or fragment"));
        }
        // The authority must also be a valid host as the URL standard sees it (no stray
        // characters a proxy in between would read differently), with a port that fits.
        let whatwg = url::Url::parse(&as_http)
            .map_err(|e| format!("endpoint `{endpoint}` is not a valid URL: {e}"))?;
        if whatwg.host_str().is_none_or(str::is_empty) {
            return Err(format!("endpoint `{endpoint}` has no host"));
        }
        let port_ok = match authority.port() {
            None => !authority.as_str().ends_with(':'),
            Some(p) => p.as_str().len() <= 5 && p.as_u16() != 0,
        };
        if !port_ok {
            return Err(format!("endpoint `{endpoint}` has an invalid port (1-65535)"));
        }
        let host_header = HeaderValue::from_str(authority.as_str())
            .map_err(|e| format!("endpoint `{endpoint}` has a host that is not a valid header value: {e}"))?;
        Ok(Self {
            protocol,
            scheme,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            authority,
            host_header,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_endpoints() {
        for good in [
            "http://h",
            "https://h:8443/base",
            "http://[::1]:80",
            "http://10.0.0.1:9001",
            "http://cell-tier1.ns.svc.cluster.local:9001/api/",
            "http://xn--bcher-kva.example:9001",
            "h2c://grpc-cell:50051",
            "h2c://[::1]:50051/prefix",
        ] {
            let e = Endpoint::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert!(!e.base_path.ends_with('/'), "{good}: {e:?}");
        }
        let e = Endpoint::parse("https://h:8443/base/").unwrap();
        assert_eq!(
            (e.scheme.as_str(), e.authority.as_str(), e.base_path.as_str()),
            ("https", "h:8443", "/base")
        );
        assert_eq!(e.host_header, "h:8443");
        assert_eq!(e.protocol, Protocol::Https);
        let e = Endpoint::parse("http://h:1").unwrap();
        assert_eq!((e.protocol, e.scheme.as_str()), (Protocol::Http1, "http"));
    }

    #[test]
    fn h2c_is_http2_over_cleartext_with_an_http_scheme_on_the_wire() {
        let e = Endpoint::parse("h2c://grpc-cell:50051/base/").unwrap();
        assert_eq!(e.protocol, Protocol::H2c);
        assert_eq!(e.scheme, Scheme::HTTP);
        assert_eq!(e.authority.as_str(), "grpc-cell:50051");
        assert_eq!(e.base_path, "/base");
        assert_eq!(e.host_header, "grpc-cell:50051");
        // Checked as strictly as `http`.
        for (bad, why) in [
            ("h2c://", "no host"),
            ("h2c://u:p@h:1", "credentials"),
            ("h2c://h:1?q", "query"),
            ("h2c://h\\x", "not an absolute URL"),
            ("h2c://h:0", "port"),
            ("H2C://h", "lowercase"),
            ("h2://h", "`h2c`"),
        ] {
            let err = Endpoint::parse(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn refuses_what_a_proxy_could_not_use_naming_why() {
        for (bad, why) in [
            ("http://user:pw@h", "credentials"),
            ("http://h?x=1", "query"),
            ("http://h#f", "fragment"),
            ("/relative", "no scheme"),
            ("unix:///x", "http"),
            ("ftp://h", "http"),
            ("HTTP://h", "lowercase"),
            ("http://", "no host"),
            ("http:///x", "no host"),
            ("http://h:0", "port"),
            ("http://h:", "port"),
            ("http://h\\x", "not an absolute URL"),
            ("http://a b", "not an absolute URL"),
        ] {
            let err = Endpoint::parse(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn internationalised_hosts_are_refused_with_their_punycode_form() {
        let err = Endpoint::parse("http://bücher.example:9001").unwrap_err();
        assert!(err.contains("non-ASCII"), "{err}");
        assert!(err.contains("`http://xn--bcher-kva.example:9001`"), "{err}");
        let err = Endpoint::parse("http://h/päth").unwrap_err();
        assert!(err.contains("http://h/p%C3%A4th"), "{err}");
    }

    #[test]
    fn length_is_bounded() {
        let long = format!("http://h/{}", "a".repeat(MAX_ENDPOINT_BYTES));
        assert!(Endpoint::parse(&long).unwrap_err().contains("over the limit"));
    }
}
