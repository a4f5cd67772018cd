//! A placement's endpoint URL, parsed the one way every binary parses it.
//!
//! Validation and the data plane's upstream construction both go through [`Endpoint::parse`], so
//! an endpoint the control plane accepts is one every data plane can forward to: there is no
//! second URL parser with its own opinion (the WHATWG parser behind `url` accepts
//! `http://bücher.example`, `http://h\path` and `HTTP://H`; the `http` crate's request URIs do
//! not). Endpoints are therefore plain ASCII, written the way they are sent: an internationalised
//! host is refused with its punycode form as the suggested fix, rather than silently rewritten.

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};

/// Longest accepted endpoint URL, in bytes.
pub const MAX_ENDPOINT_BYTES: usize = 2048;

/// An endpoint as the proxy uses it: scheme, authority, base path and the `Host` header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http` or `https`.
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
        match endpoint.split_once("://") {
            Some(("http" | "https", rest)) if rest.is_empty() || rest.starts_with('/') => {
                return Err(format!("endpoint `{endpoint}` has no host"));
            }
            Some(("http" | "https", _)) => {}
            Some((scheme, _)) => {
                return Err(format!(
                    "endpoint `{endpoint}` must use `http` or `https` (lowercase), not `{scheme}`"
                ));
            }
            None => {
                return Err(format!(
                    "endpoint `{endpoint}` is not an absolute URL (no scheme): write http://HOST[:PORT][/PATH]"
                ));
            }
        }
        let uri: Uri = endpoint
            .parse()
            .map_err(|e| format!("endpoint `{endpoint}` is not an absolute URL: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("endpoint `{endpoint}` is not an absolute URL (no scheme)"))?;
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
        let whatwg = url::Url::parse(endpoint)
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
