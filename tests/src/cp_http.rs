//! The HTTP side of a control plane under test, shared by every wrapper of the binary
//! ([`crate::control_plane::ControlPlane`], [`crate::push::FileControlPlane`],
//! [`crate::push_k8s::KubeControlPlane`], [`crate::journey::RestartableControlPlane`]): each
//! starts the process its own way and hands this out (through `Deref`) for `GET`s, metrics and
//! `/debug/dataplanes`, so those are written once.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::admin::metric_value;
use crate::client::{Reply, http_client};
use crate::wait::eventually;

/// Talks to one control plane's `--listen` address.
#[derive(Debug, Clone)]
pub struct CpHttp {
    addr: SocketAddr,
    name: String,
    http: reqwest::Client,
}

impl CpHttp {
    /// A client for the control plane at `addr`; `name` identifies it in failure messages.
    pub fn new(addr: SocketAddr, name: &str) -> Self {
        Self {
            addr,
            name: name.to_owned(),
            http: http_client(),
        }
    }

    /// Its HTTP address, which also serves the WebSocket push.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR`, for `data-plane run --control-plane`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `GET path`.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached at all.
    pub async fn get(&self, path: &str) -> Reply {
        let response = self
            .http
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} on control plane {}: {e}", self.name));
        Reply::read(response).await
    }

    /// Waits up to `timeout` until `GET /readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        eventually(
            &format!("control plane {} to be ready", self.name),
            timeout,
            || async {
                let reply = self.get("/readyz").await;
                if reply.status == 200 {
                    Ok(())
                } else {
                    Err(reply.to_string())
                }
            },
        )
        .await;
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text
    }

    /// The value of one metric sample, 0 when it is not exported (yet).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels).unwrap_or(0.0)
    }

    /// Every entry of `/debug/dataplanes`.
    ///
    /// # Panics
    ///
    /// When the answer is not the documented JSON.
    pub async fn dataplanes(&self) -> Vec<Value> {
        let reply = self.get("/debug/dataplanes").await;
        assert_eq!(reply.status, 200, "{reply}");
        reply.json["dataplanes"]
            .as_array()
            .unwrap_or_else(|| panic!("no dataplanes array: {reply}"))
            .clone()
    }

    /// The `/debug/dataplanes` entry of data plane `id`.
    pub async fn dataplane(&self, id: &str) -> Option<Value> {
        self.dataplanes().await.into_iter().find(|d| d["id"] == id)
    }

    /// The `/debug/dataplanes` entry of data plane `id` held by `identity` (its record's
    /// `identity`, such as `{"kind":"static-token","line":2}`).
    pub async fn dataplane_as(&self, id: &str, identity: &Value) -> Option<Value> {
        self.dataplanes()
            .await
            .into_iter()
            .find(|d| d["id"] == id && d["record"]["identity"] == *identity)
    }

    /// Waits until the record of `id` under `identity` is listed and satisfies `ready` (`what`
    /// names the wait in its timeout message), and returns it.
    pub async fn wait_dataplane_as(
        &self,
        id: &str,
        identity: &Value,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(what, timeout, || async {
            let entry = self.dataplane_as(id, identity).await.ok_or("not listed")?;
            if ready(&entry) {
                Ok(entry)
            } else {
                Err(format!("{entry}"))
            }
        })
        .await
    }

    /// Waits until every data plane of `ids` is listed in `state` (`SYNCED`, `REJECTED`,
    /// `ORPHANED`, ...), with `version` as its acked (or, when REJECTED, nacked) version when
    /// given, and returns their entries.
    pub async fn wait_state(
        &self,
        ids: &[&str],
        state: &str,
        version: Option<i64>,
        timeout: Duration,
    ) -> Vec<Value> {
        eventually(
            &format!(
                "{ids:?} to be {state} at version {version:?} on control plane {}",
                self.name
            ),
            timeout,
            || async {
                let all = self.dataplanes().await;
                let mut found = Vec::new();
                for id in ids {
                    let entry = all
                        .iter()
                        .find(|d| d["id"] == *id)
                        .ok_or_else(|| format!("{id} not listed in {all:?}"))?;
                    let reported = match state {
                        "REJECTED" => &entry["record"]["nacked"]["snapshot"]["version"],
                        _ => &entry["record"]["acked"]["version"],
                    };
                    let version_ok = version.is_none_or(|v| reported.as_i64() == Some(v));
                    if entry["state"] != state || !version_ok {
                        return Err(format!("{id}: {entry}"));
                    }
                    found.push(entry.clone());
                }
                Ok(found)
            },
        )
        .await
    }
}
