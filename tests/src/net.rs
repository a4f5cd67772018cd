//! The machine's own addresses, for tests that must reach a server from somewhere that is not
//! loopback (what a pod behind a Service looks like to the control plane).

use std::net::{IpAddr, Ipv4Addr};

use crate::client::REQUEST_TIMEOUT;

/// An IPv4 address of this machine that is not loopback, from the kernel's local routing table
/// (`/proc/net/fib_trie`, the `/32 host LOCAL` entries).
///
/// # Panics
///
/// When the machine has no such address: the test cannot tell loopback from elsewhere then, and
/// must fail rather than pass without checking.
pub fn non_loopback_ipv4() -> Ipv4Addr {
    let trie = std::fs::read_to_string("/proc/net/fib_trie")
        .unwrap_or_else(|e| panic!("cannot read /proc/net/fib_trie: {e}"));
    let mut last: Option<Ipv4Addr> = None;
    for line in trie.lines() {
        let line = line.trim();
        if let Some(addr) = line.strip_prefix("|-- ").or_else(|| line.strip_prefix("+-- ")) {
            last = addr.split('/').next().and_then(|a| a.parse().ok());
        } else if line.contains("/32 host LOCAL")
            && let Some(addr) = last
            && !addr.is_loopback()
            && !addr.is_unspecified()
        {
            return addr;
        }
    }
    panic!("this machine has no IPv4 address other than loopback:\n{trie}");
}

/// A reqwest client whose connections come from `local` (so the server sees that address as the
/// peer).
///
/// # Panics
///
/// When reqwest cannot build a client.
pub fn http_client_from(local: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(local)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("build reqwest client")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_an_address_that_is_not_loopback() {
        let addr = non_loopback_ipv4();
        assert!(!addr.is_loopback(), "{addr}");
    }
}
