//! The snapshot push end to end: a control plane serving one RoutingConfig file
//! (`control-plane run --from-file`), data planes following it over WebSocket, and what the
//! `push_*` tests share.
//!
//! - [`Table`]: a RoutingConfig document of any size and object name, and its content hash;
//! - [`FileControlPlane`]: the control plane in file mode; it can be `kill -9`ed and restarted
//!   on the same port, as a fresh process with empty memory;
//! - [`Scene`]: echo cells, the control plane's file, the token files and the control plane;
//!   [`Scene::follower`] starts a data plane following it;
//! - [`Follower`]: one such data plane with clients for its two ports;
//! - [`Load`]: continuous requests through data planes, counting every failure;
//! - [`read_cache_file`]: the last-known-good cache format, checked without the data plane;
//! - [`kill_9`] and [`hello`]: small tools for the fault tests.
//!
//! The control plane's debug endpoints are what an operator would look at, so the tests read
//! them rather than internal state: `/debug/dataplanes` for SYNCED / STALE / REJECTED /
//! DISCONNECTED, `/debug/snapshots` for the served version.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::task::JoinSet;

use crate::admin::AdminClient;
use crate::config::write_replace;
use crate::cp_http::CpHttp;
use crate::fixture::{Cells, TOKEN as ADMIN_TOKEN};
use crate::process::{DataPlane, Launch, Logs, Process, bin_path, scrub_env};
use crate::proxy::ProxyClient;
use crate::wait::{SOON, eventually, eventually_every};

/// The RoutingConfig every push test serves.
pub const OBJECT: &str = "default/routes";
/// The bearer token data planes present; the control plane's static token file accepts it, on
/// line [`DP_TOKEN_LINE`].
pub const DP_TOKEN: &str = "dp-token-7f3a";
/// The line of [`DP_TOKEN`] in the control plane's static token file: who its holders are.
pub const DP_TOKEN_LINE: usize = 2;
/// Another accepted token (line [`OTHER_TOKEN_LINE`]): another identity, for the tests that play
/// a pod trying to pass for another.
pub const OTHER_TOKEN: &str = "dp-token-other-91c2";
/// The line of [`OTHER_TOKEN`] in the control plane's static token file.
pub const OTHER_TOKEN_LINE: usize = 3;
/// The WebSocket path of the push.
pub const SUBSCRIBE_PATH: &str = routing_model::protocol::SUBSCRIBE_PATH;
/// The header of the cache file, before the hex digest.
pub const CACHE_MAGIC: &str = "cellroute-snapshot v1 sha256:";

/// A RoutingConfig document; placements are named after the echo cells they point at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    name: String,
    default_placement: String,
    customers: BTreeMap<String, String>,
    placements: BTreeMap<String, String>,
}

impl Table {
    /// A table with one placement per cell of `cells` (named like the cell), sending unlisted
    /// customers to `default_cell`.
    pub fn new(cells: &Cells, names: &[&str], default_cell: &str) -> Self {
        Self {
            name: "routes".to_owned(),
            default_placement: default_cell.to_owned(),
            customers: BTreeMap::new(),
            placements: names.iter().map(|n| ((*n).to_owned(), cells.url(n))).collect(),
        }
    }

    /// Routes `customer` to the placement of `cell`.
    pub fn customer(mut self, customer: &str, cell: &str) -> Self {
        self.customers.insert(customer.to_owned(), cell.to_owned());
        self
    }

    /// Adds `count` customers `filler-00000`... routed to `cell`, to make the table (and every
    /// snapshot message) large.
    pub fn filler(mut self, count: usize, cell: &str) -> Self {
        for i in 0..count {
            self.customers.insert(format!("filler-{i:05}"), cell.to_owned());
        }
        self
    }

    /// The same table under another `metadata.name` (another object, as far as the control
    /// plane is concerned).
    pub fn named(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }

    /// Number of customers.
    pub fn customers(&self) -> usize {
        self.customers.len()
    }

    /// The cell `customer` is routed to.
    pub fn cell_of(&self, customer: &str) -> &str {
        self.customers.get(customer).unwrap_or(&self.default_placement)
    }

    /// The document, as JSON (which the control plane and the data plane read like YAML).
    pub fn render(&self) -> String {
        json!({
            "apiVersion": crate::config::API_VERSION,
            "kind": "RoutingConfig",
            "metadata": {"name": self.name, "namespace": "default"},
            "spec": {
                "defaultPlacement": self.default_placement,
                "customerToPlacement": self.customers,
                "placementToEndpoint": self.placements,
            },
        })
        .to_string()
    }

    /// The content hash the control plane will serve this table under (`table-sha256:<hex>`),
    /// computed with the shared validation code.
    ///
    /// # Panics
    ///
    /// When the table is not valid, a mistake in the test.
    pub fn hash(&self) -> String {
        let config = routing_model::load(self.render().as_bytes(), routing_model::ParseLimits::default())
            .unwrap_or_else(|e| panic!("the test's table is invalid: {e}"));
        config.hash().to_string()
    }
}

/// `control-plane run --from-file FILE --static-token-file FILE --listen ADDR --log-format json`.
#[derive(Debug)]
pub struct FileControlPlane {
    process: Option<Process>,
    args: Vec<String>,
    http: CpHttp,
    /// Processes killed before the current one, kept so that a failing test prints their logs
    /// too (a restarted control plane is a new process).
    earlier: Vec<Process>,
}

/// `GET`s, metrics and `/debug/dataplanes` of the shared client.
impl std::ops::Deref for FileControlPlane {
    type Target = CpHttp;

    fn deref(&self) -> &CpHttp {
        &self.http
    }
}

impl FileControlPlane {
    /// Starts the control plane on an ephemeral port with `args` (the file, the tokens and any
    /// tuning flags) and waits until it listens.
    pub async fn start(args: Vec<String>) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("address"), args).await
    }

    /// [`FileControlPlane::start`] with `--listen listen` (such as `0.0.0.0:0`, to be reached
    /// from a non-loopback address).
    pub async fn start_on(listen: SocketAddr, args: Vec<String>) -> Self {
        let (process, addr) = spawn_control_plane(&args, listen).await;
        Self {
            process: Some(process),
            args,
            http: CpHttp::new(addr, "(file mode)"),
            earlier: Vec::new(),
        }
    }

    /// The logs of the running process.
    ///
    /// # Panics
    ///
    /// When the control plane is not running.
    pub fn logs(&self) -> &Logs {
        self.running().logs()
    }

    /// The process id of the running process.
    ///
    /// # Panics
    ///
    /// When the control plane is not running.
    pub fn pid(&self) -> u32 {
        self.running().pid()
    }

    fn running(&self) -> &Process {
        self.process.as_ref().expect("the control plane is not running")
    }

    /// True while the current process runs.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Process::is_running)
    }

    /// `kill -9`, and waits for the process to be gone.
    ///
    /// # Panics
    ///
    /// When it is not running or does not die.
    pub async fn kill_9(&mut self) {
        let mut process = self.process.take().expect("the control plane is not running");
        process.signal(rustix::process::Signal::KILL);
        process
            .wait_for_exit(Duration::from_secs(10))
            .await
            .expect("the control plane did not die of SIGKILL");
        self.earlier.push(process);
    }

    /// Starts a fresh process (empty memory) with the same flags on the same port.
    ///
    /// # Panics
    ///
    /// When one is still running, or the new one does not listen.
    pub async fn restart(&mut self) {
        self.restart_with_env(&[]).await;
    }

    /// [`FileControlPlane::restart`] with extra environment variables (such as
    /// [`crate::faketime::stepped`]'s, to start it with its clock stepped back).
    ///
    /// # Panics
    ///
    /// When one is still running, or the new one does not listen.
    pub async fn restart_with_env(&mut self, env: &[(String, String)]) {
        assert!(self.process.is_none(), "restart a control plane that was stopped");
        let (process, addr) = spawn_control_plane_with_env(&self.args, self.addr(), env).await;
        assert_eq!(addr, self.addr(), "restarted on another address");
        self.process = Some(process);
    }

    /// What `/debug/snapshots` serves for [`OBJECT`] (`null` when nothing).
    pub async fn served(&self) -> Value {
        let reply = self.get("/debug/snapshots").await;
        reply.json["snapshots"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["object"] == OBJECT))
            .map_or(Value::Null, |s| s["served"].clone())
    }

    /// Waits until [`OBJECT`] is served with `table`'s content, and returns the version.
    pub async fn wait_served(&self, table: &Table) -> i64 {
        let hash = table.hash();
        eventually("the control plane to serve the table", SOON, || async {
            let served = self.served().await;
            match served["version"].as_i64() {
                Some(version) if served["hash"] == hash.as_str() => Ok(version),
                _ => Err(format!("serving {served}, want hash {hash}")),
            }
        })
        .await
    }

    /// Waits until [`OBJECT`] is served at a version above `previous`, and returns it.
    pub async fn wait_served_after(&self, previous: i64) -> i64 {
        eventually(&format!("a version after {previous}"), SOON, || async {
            let served = self.served().await;
            match served["version"].as_i64() {
                Some(version) if version > previous => Ok(version),
                _ => Err(format!("serving {served}")),
            }
        })
        .await
    }

    /// Waits for a log record of the running process satisfying `pred`.
    pub async fn running_process_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.running().wait_for_log(what, SOON, pred).await
    }
}

async fn spawn_control_plane(args: &[String], listen: SocketAddr) -> (Process, SocketAddr) {
    spawn_control_plane_with_env(args, listen, &[]).await
}

async fn spawn_control_plane_with_env(
    args: &[String],
    listen: SocketAddr,
    env: &[(String, String)],
) -> (Process, SocketAddr) {
    let bin = tokio::task::spawn_blocking(|| bin_path("control-plane"))
        .await
        .expect("binary build task");
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .args(["--listen", &listen.to_string(), "--log-format", "json"])
        .args(args);
    scrub_env(&mut cmd);
    cmd.env_remove("KUBECONFIG");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let mut process = Process::spawn("control plane (file mode)", &mut cmd);
    let addr = process.wait_listening(&["http"]).await[0];
    (process, addr)
}

/// Echo cells, a temporary directory and a control plane serving `DIR/cp/routing.json`.
pub struct Scene {
    /// The echo cells.
    pub cells: Cells,
    /// The control plane.
    pub cp: FileControlPlane,
    cp_file: PathBuf,
    // Last: the directory outlives the processes that use it.
    dir: TempDir,
}

impl Scene {
    /// Starts cells called `names`.
    pub async fn cells(names: &[&str]) -> Cells {
        Cells::start(names).await
    }

    /// Writes `table` as the control plane's file and starts the control plane with
    /// `--static-token-file` (accepting [`DP_TOKEN`]), `--state-dir` in the scene (unless `extra`
    /// has one) and `extra` flags.
    pub async fn start(cells: Cells, table: &Table, extra: &[&str]) -> Self {
        Self::start_on(cells, table, extra, "127.0.0.1:0".parse().expect("address")).await
    }

    /// [`Scene::start`] with the control plane listening on `listen`.
    pub async fn start_on(cells: Cells, table: &Table, extra: &[&str], listen: SocketAddr) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        // Its own directory: the control plane watches the file's directory.
        std::fs::create_dir(dir.path().join("cp")).expect("create the control plane's directory");
        let cp_file = dir.path().join("cp").join("routing.json");
        write_replace(&cp_file, table.render().as_bytes()).expect("write the control plane's file");
        let tokens = dir.path().join("cp-tokens");
        std::fs::write(
            &tokens,
            format!("# accepted data-plane tokens\n{DP_TOKEN}\n{OTHER_TOKEN}\n"),
        )
        .expect("write tokens");
        std::fs::write(dir.path().join("dp-token"), format!("{DP_TOKEN}\n")).expect("write dp token");
        std::fs::write(dir.path().join("admin-token"), format!("{ADMIN_TOKEN}\n"))
            .expect("write admin token");
        let mut args = vec![
            "--from-file".to_owned(),
            cp_file.display().to_string(),
            "--static-token-file".to_owned(),
            tokens.display().to_string(),
        ];
        // Its versions are recorded in the scene, never in the home directory.
        if !extra.contains(&"--state-dir") {
            args.extend([
                "--state-dir".to_owned(),
                dir.path().join("cp-state").display().to_string(),
            ]);
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let cp = FileControlPlane::start_on(listen, args).await;
        Self {
            cells,
            cp,
            cp_file,
            dir,
        }
    }

    /// The scene's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The control plane's `--state-dir` (unless the test passed its own).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("cp-state")
    }

    /// Replaces the control plane's file with `table` (write, then rename).
    pub fn write(&self, table: &Table) {
        self.write_bytes(table.render().as_bytes());
    }

    /// Replaces the control plane's file with `bytes`.
    pub fn write_bytes(&self, bytes: &[u8]) {
        write_replace(&self.cp_file, bytes).expect("replace the control plane's file");
    }

    /// Writes `table` and waits until the control plane serves it; returns its version.
    pub async fn publish(&self, table: &Table) -> i64 {
        self.write(table);
        self.cp.wait_served(table).await
    }

    /// The directory of data plane `id`: its `routing.json` and its `cache/`.
    pub fn follower_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join(id)
    }

    /// The cache file data plane `id` writes.
    pub fn cache_file(&self, id: &str) -> PathBuf {
        self.follower_dir(id)
            .join("cache")
            .join("default_routes.snapshot")
    }

    /// Starts data plane `id` following the control plane, with `local` as its `--config` file
    /// (when `None`, the file from an earlier start of `id` is kept), its own `--cache-dir`,
    /// `--reconnect-max 1s`, and `extra` flags.
    pub async fn follower(&self, id: &str, local: Option<&Table>, extra: &[&str]) -> Follower {
        self.follower_to(id, &self.cp.url(), local, extra).await
    }

    /// [`Scene::follower_to`] running under `wrapper` (for example `strace -f -e inject=...`).
    pub async fn follower_under(
        &self,
        id: &str,
        wrapper: &[&str],
        local: Option<&Table>,
        extra: &[&str],
    ) -> Follower {
        self.follower_launch(id, &self.cp.url(), wrapper, local, extra)
            .await
    }

    /// [`Scene::follower`] connecting to `url` instead of the control plane (a relay).
    pub async fn follower_to(&self, id: &str, url: &str, local: Option<&Table>, extra: &[&str]) -> Follower {
        self.follower_launch(id, url, &[], local, extra).await
    }

    async fn follower_launch(
        &self,
        id: &str,
        url: &str,
        wrapper: &[&str],
        local: Option<&Table>,
        extra: &[&str],
    ) -> Follower {
        let dir = self.follower_dir(id);
        std::fs::create_dir_all(&dir).expect("create the data plane's directory");
        let config_path = dir.join("routing.json");
        if let Some(table) = local {
            write_replace(&config_path, table.render().as_bytes()).expect("write the local config");
        }
        let token_file = self.dir.path().join("dp-token").display().to_string();
        let cache_dir = dir.join("cache").display().to_string();
        let mut args = vec![
            "--control-plane",
            url,
            "--routing-config",
            OBJECT,
            "--id",
            id,
            "--token-file",
            &token_file,
            // Reconnects within a second, so outage tests are quick.
            "--reconnect-max",
            "1s",
        ];
        if !extra.contains(&"--cache-dir") {
            args.extend(["--cache-dir", &cache_dir]);
        }
        args.extend(extra);
        let dp = DataPlane::launch(
            Launch {
                wrapper: wrapper.iter().map(OsString::from).collect(),
                config: Some(config_path.clone()),
                token_file: Some(self.dir.path().join("admin-token")),
                ..Launch::default()
            }
            .args(&args),
        )
        .await;
        let admin = AdminClient::new(dp.admin_addr(), ADMIN_TOKEN);
        let proxy = ProxyClient::new(dp.proxy_addr());
        Follower {
            id: id.to_owned(),
            dp,
            admin,
            proxy,
            config_path,
        }
    }
}

/// A data plane following the control plane.
#[derive(Debug)]
pub struct Follower {
    /// Its `--id`.
    pub id: String,
    /// The process.
    pub dp: DataPlane,
    /// Admin client (with the admin token).
    pub admin: AdminClient,
    /// Proxy client (`x-customer-id`).
    pub proxy: ProxyClient,
    /// Its `--config` file.
    pub config_path: PathBuf,
}

impl Follower {
    /// `GET /admin/config` as JSON.
    pub async fn config(&self) -> Value {
        self.admin.config().await.json
    }

    /// Replaces its local `--config` file with `table`.
    pub fn write_local(&self, table: &Table) {
        write_replace(&self.config_path, table.render().as_bytes()).expect("replace the local config");
    }

    /// Waits until every customer of `expect` reaches its cell through this data plane.
    pub async fn wait_routes(&self, expect: &[(&str, &str)], timeout: Duration) {
        for (customer, cell) in expect {
            self.proxy.wait_for_cell(Some(customer), cell, timeout).await;
        }
    }

    /// Asserts that every customer of `expect` reaches its cell right now.
    pub async fn assert_routes(&self, expect: &[(&str, &str)]) {
        for (customer, cell) in expect {
            self.proxy.assert_cell(Some(customer), cell).await;
        }
    }

    /// Waits until `/admin/config` has `control_plane.connected == connected`.
    pub async fn wait_connected(&self, connected: bool, timeout: Duration) {
        eventually(
            &format!("{} to report connected={connected}", self.id),
            timeout,
            || async {
                let config = self.config().await;
                if config["control_plane"]["connected"] == connected {
                    Ok(())
                } else {
                    Err(format!("control_plane: {}", config["control_plane"]))
                }
            },
        )
        .await;
    }

    /// A counter of its metrics (0 when absent).
    pub async fn counter(&self, name: &str) -> f64 {
        self.admin.counter(name, &[]).await
    }

    /// Waits until counter `name` reaches `at_least`.
    pub async fn wait_counter(&self, name: &str, at_least: f64, timeout: Duration) -> f64 {
        eventually(&format!("{} {name} >= {at_least}", self.id), timeout, || async {
            let value = self.counter(name).await;
            if value >= at_least {
                Ok(value)
            } else {
                Err(format!("{name} = {value}"))
            }
        })
        .await
    }

    /// `kill -9` and waits for the process to be gone.
    pub async fn kill_9(mut self) {
        kill_9(self.dp.pid());
        self.dp
            .wait_for_exit(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{} did not die of SIGKILL", self.id));
    }
}

/// Sends SIGKILL to `pid`.
///
/// # Panics
///
/// When the signal cannot be sent.
pub fn kill_9(pid: u32) {
    signal(pid, rustix::process::Signal::KILL);
}

/// Sends `signal` to `pid`.
///
/// # Panics
///
/// When the signal cannot be sent.
pub fn signal(pid: u32, signal: rustix::process::Signal) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .unwrap_or_else(|| panic!("bad pid {pid}"));
    rustix::process::kill_process(pid, signal)
        .unwrap_or_else(|e| panic!("cannot send {signal:?} to {pid:?}: {e}"));
}

/// The JSON text of a `hello` for data plane `id`, subscribing to [`OBJECT`] with `applied`
/// (a `SnapshotRef` as JSON) as its current snapshot, offering what a current data plane offers
/// but `gzip` (every message is a text frame) and `too-large`.
pub fn hello(id: &str, applied: Option<&Value>) -> String {
    hello_with(
        id,
        applied,
        &[
            routing_model::protocol::CAP_FULL_SNAPSHOT,
            routing_model::protocol::CAP_DELTA,
        ],
    )
}

/// A hello offering `capabilities`.
pub fn hello_with(id: &str, applied: Option<&Value>, capabilities: &[&str]) -> String {
    json!({
        "type": "hello",
        "data_plane": id,
        "routing_config": OBJECT,
        "applied": applied,
        "protocol": routing_model::protocol::PROTOCOL_VERSION,
        "capabilities": capabilities,
    })
    .to_string()
}

/// The `identity` of a data plane's `/debug/dataplanes` record that holds the static token on
/// `line`.
pub fn static_identity(line: usize) -> Value {
    json!({"kind": "static-token", "line": line})
}

/// A cache file, checked: its header, its checksum and its JSON payload.
#[derive(Debug, Clone)]
pub struct CachedSnapshot {
    /// `snapshot.version`.
    pub version: i64,
    /// `snapshot.hash`.
    pub hash: String,
    /// The whole payload.
    pub payload: Value,
}

/// Reads and checks a cache file independently of the data plane: the header line
/// `cellroute-snapshot v1 sha256:<hex>`, the SHA-256 of the rest, and a snapshot message whose
/// spec validates and hashes to the hash it claims.
///
/// # Errors
///
/// A description of the first thing wrong with the file.
pub fn read_cache_file(path: &Path) -> Result<CachedSnapshot, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let newline = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| format!("no header line in {} bytes", bytes.len()))?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|e| format!("header is not text: {e}"))?;
    let digest = header
        .strip_prefix(CACHE_MAGIC)
        .ok_or_else(|| format!("bad header {header:?}"))?;
    let payload = &bytes[newline + 1..];
    let actual: String = Sha256::digest(payload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if actual != digest {
        return Err(format!(
            "checksum mismatch: header says {digest}, the {}-byte payload hashes to {actual}",
            payload.len()
        ));
    }
    let message: routing_model::protocol::SnapshotMessage =
        serde_json::from_slice(payload).map_err(|e| format!("payload is not a snapshot message: {e}"))?;
    let config = routing_model::validate::validate(message.to_manifest())
        .map_err(|e| format!("the cached spec does not validate: {e}"))?;
    if config.hash() != message.snapshot.hash {
        return Err(format!(
            "the cached spec hashes to {}, not the {} it claims",
            config.hash(),
            message.snapshot.hash
        ));
    }
    Ok(CachedSnapshot {
        version: message.snapshot.version,
        hash: message.snapshot.hash.to_string(),
        payload: serde_json::from_slice(payload).map_err(|e| e.to_string())?,
    })
}

/// What a [`Load`] saw.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Requests answered 200.
    pub ok: u64,
    /// Every other outcome, described.
    pub failures: Vec<String>,
}

/// Continuous requests through data planes: `workers` loops per proxy, each sending `GET /`
/// for the customers in turn, back to back, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: JoinSet<()>,
}

impl Load {
    /// Starts the load.
    pub fn start(proxies: &[ProxyClient], customers: &[&str], workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let customers: Arc<[String]> = customers.iter().map(|c| (*c).to_owned()).collect();
        let mut tasks = JoinSet::new();
        for proxy in proxies {
            for worker in 0..workers {
                let (proxy, stop, ok, failures, customers) = (
                    proxy.clone(),
                    stop.clone(),
                    ok.clone(),
                    failures.clone(),
                    customers.clone(),
                );
                tasks.spawn(async move {
                    let mut i = worker;
                    while !stop.load(Ordering::SeqCst) {
                        let customer = &customers[i % customers.len()];
                        i += 1;
                        match proxy.send(http::Method::GET, "/", Some(customer), "").await {
                            Ok(reply) if reply.status == 200 => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(reply) => failures
                                .lock()
                                .expect("failures")
                                .push(format!("{} {customer}: {reply}", proxy.addr())),
                            Err(e) => failures
                                .lock()
                                .expect("failures")
                                .push(format!("{} {customer}: {e}", proxy.addr())),
                        }
                    }
                });
            }
        }
        Self {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Failures so far.
    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().expect("failures").clone()
    }

    /// Waits until `more` further requests have succeeded (the load keeps flowing).
    pub async fn wait_for_more(&self, more: u64, timeout: Duration) {
        let target = self.ok() + more;
        eventually(&format!("{more} more successful requests"), timeout, || async {
            let ok = self.ok();
            if ok >= target {
                Ok(())
            } else {
                Err(format!(
                    "{ok} of {target}; failures so far: {:?}",
                    self.failures()
                ))
            }
        })
        .await;
    }

    /// Stops the workers, waits for their last requests, and reports.
    pub async fn stop(mut self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        while self.tasks.join_next().await.is_some() {}
        LoadReport {
            ok: self.ok(),
            failures: self.failures(),
        }
    }
}

/// Polls `/debug/dataplanes` at a gentler pace than [`eventually`], for large fleets.
pub async fn wait_fleet<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    eventually_every(what, timeout, Duration::from_millis(250), check).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_files_are_checked_independently() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.snapshot");
        let spec = json!({"defaultPlacement": "a", "placementToEndpoint": {"a": "http://127.0.0.1:1"}});
        let config = routing_model::load(
            json!({"apiVersion": crate::config::API_VERSION, "kind": "RoutingConfig", "spec": spec})
                .to_string()
                .as_bytes(),
            routing_model::ParseLimits::default(),
        )
        .unwrap();
        let payload = json!({
            "routing_config": OBJECT,
            "snapshot": {"lineage": "file:/x", "version": 7, "hash": config.hash()},
            "spec": spec,
        })
        .to_string();
        let digest: String = Sha256::digest(payload.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(&path, format!("{CACHE_MAGIC}{digest}\n{payload}")).unwrap();
        let cached = read_cache_file(&path).unwrap();
        assert_eq!(cached.version, 7);
        assert_eq!(cached.hash, config.hash().to_string());

        std::fs::write(
            &path,
            format!("{CACHE_MAGIC}{digest}\n{}", &payload[..payload.len() - 1]),
        )
        .unwrap();
        let err = read_cache_file(&path).unwrap_err();
        assert!(err.contains("checksum mismatch"), "{err}");
    }
}
