//! Helpers for the user journey test (`tests/tests/user_journey.rs`): waiting for a fully synced
//! status, and a control plane that restarts on the same address, as a Service address stays
//! the same across restarts.

use routing_model::crd::RoutingConfig;

use crate::control_plane::{self, Options};
use crate::cp_http::CpHttp;
use crate::k8s::{K8S_SOON, RoutingConfigs, condition};
use crate::process::Process;

/// Waits until the status of `name` describes `generation` with `Accepted` = `accepted`, serves
/// `version`, and says all `n` data planes applied it (`dataPlanes` n/n). `Synced` is `True` for
/// `generation` when it was accepted; a rejected generation is never synced, so then it is
/// `False` (`GenerationRejected`) for `generation`, whatever the data planes run.
pub async fn wait_synced(
    rtc: &RoutingConfigs,
    name: &str,
    generation: i64,
    accepted: &str,
    version: i64,
    n: i64,
) -> RoutingConfig {
    rtc.wait_for(
        name,
        &format!("Accepted={accepted} at generation {generation}, Synced {n}/{n} at version {version}"),
        |obj| {
            let status = obj.status.as_ref().ok_or("no status")?;
            if status.observed_generation != Some(generation) {
                return Err("observedGeneration".to_owned());
            }
            match condition(status, "Accepted") {
                Some(c) if c.status == accepted && c.observed_generation == Some(generation) => {}
                other => return Err(format!("Accepted: {other:?}")),
            }
            let (synced, reason) = if accepted == "True" {
                ("True", "AllDataPlanesSynced")
            } else {
                ("False", "GenerationRejected")
            };
            match condition(status, "Synced") {
                Some(c)
                    if c.status == synced
                        && c.reason == reason
                        && c.observed_generation == Some(generation) => {}
                other => return Err(format!("Synced: {other:?}")),
            }
            if status.snapshot.as_ref().map(|s| s.version) != Some(version) {
                return Err("snapshot.version".to_owned());
            }
            match &status.data_planes {
                Some(d)
                    if d.connected == n
                        && d.synced == n
                        && d.rejected == 0
                        && d.summary == format!("{n}/{n}")
                        && d.last_rejection.is_none() => {}
                other => Err(format!("dataPlanes: {other:?}"))?,
            }
            Ok(())
        },
    )
    .await
}

/// `control-plane run` in cluster mode (TokenReview for data planes) that can be stopped and
/// started again on the same address, as a Service address stays the same across restarts.
#[derive(Debug)]
pub struct RestartableControlPlane {
    options: Options,
    process: Option<Process>,
    http: CpHttp,
}

/// `GET`s, metrics and `/debug/dataplanes` of the shared client.
impl std::ops::Deref for RestartableControlPlane {
    type Target = CpHttp;

    fn deref(&self) -> &CpHttp {
        &self.http
    }
}

impl RestartableControlPlane {
    /// Starts it on a free loopback port and waits until it is ready (first list done).
    pub async fn start(options: Options) -> Self {
        let (process, addr) = control_plane::spawn(&options, "127.0.0.1:0", &[]).await;
        let http = CpHttp::new(addr, &options.identity);
        let cp = Self {
            options,
            process: Some(process),
            http,
        };
        cp.wait_ready(K8S_SOON).await;
        cp
    }

    /// Stops it (SIGKILL, as a node loss would) and waits until it is gone.
    pub fn stop(&mut self) {
        drop(self.process.take().expect("stop a running control plane"));
    }

    /// Starts a fresh process (empty memory) with the same options on the same address, and
    /// waits until it is ready.
    pub async fn restart(&mut self) {
        assert!(self.process.is_none(), "restart a control plane that was stopped");
        let (process, addr) = control_plane::spawn(&self.options, &self.addr().to_string(), &[]).await;
        assert_eq!(addr, self.addr(), "restarted on another address");
        self.process = Some(process);
        self.wait_ready(K8S_SOON).await;
    }
}
