//! The emulated cluster DNS: each pod's `/etc/hosts` names every Service that has a ready
//! endpoint.
//!
//! In a cluster a Service's name resolves (through CoreDNS) to its ClusterIP, and kube-proxy
//! forwards the ClusterIP to a ready endpoint. Neither runs here, so the name resolves straight
//! to the Service's first ready endpoint address. The connection keeps its port: a Service port
//! is reached by name only where it equals its target port (cellroute's push port 8090 does;
//! its webhook port 443 → 9443 is only called by the API server, which resolves Endpoints
//! itself with `--enable-aggregator-routing`).

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Endpoints;

/// The hosts file of pod `namespace/name` at `addr`, given every Endpoints object of the
/// cluster: `localhost`, the pod's own name, and for each Service with a ready address
/// `NAME.NAMESPACE.svc.cluster.local`, `NAME.NAMESPACE.svc`, `NAME.NAMESPACE` (and `NAME` in the
/// pod's own namespace).
pub fn hosts(namespace: &str, name: &str, addr: Ipv4Addr, endpoints: &[Endpoints]) -> String {
    let mut text = format!("127.0.0.1 localhost\n{addr} {name}\n");
    let mut lines: Vec<String> = endpoints
        .iter()
        .filter_map(|e| {
            let svc = e.metadata.name.as_deref()?;
            let ns = e.metadata.namespace.as_deref()?;
            let ip = e
                .subsets
                .iter()
                .flatten()
                .flat_map(|s| s.addresses.iter().flatten())
                .map(|a| a.ip.as_str())
                .next()?;
            let mut names = format!("{ip} {svc}.{ns}.svc.cluster.local {svc}.{ns}.svc {svc}.{ns}");
            if ns == namespace {
                names.push(' ');
                names.push_str(svc);
            }
            Some(names)
        })
        .collect();
    lines.sort();
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_services_with_a_ready_address() {
        let endpoints: Vec<Endpoints> = serde_json::from_value(serde_json::json!([
            {"metadata": {"name": "cp", "namespace": "sys"},
             "subsets": [{"addresses": [{"ip": "100.64.0.2"}], "notReadyAddresses": [{"ip": "100.64.0.9"}]}]},
            {"metadata": {"name": "idle", "namespace": "sys"},
             "subsets": [{"notReadyAddresses": [{"ip": "100.64.0.3"}]}]},
            {"metadata": {"name": "kubernetes", "namespace": "default"}},
        ]))
        .unwrap();
        let text = hosts("sys", "web-1", Ipv4Addr::new(100, 64, 0, 4), &endpoints);
        assert_eq!(
            text,
            "127.0.0.1 localhost\n100.64.0.4 web-1\n100.64.0.2 cp.sys.svc.cluster.local cp.sys.svc cp.sys cp\n"
        );
    }
}
