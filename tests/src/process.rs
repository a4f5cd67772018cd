//! The workspace's real binaries as child processes.
//!
//! [`Process`] runs one binary and keeps every line it writes (stderr and stdout) in memory: a
//! thread drains each pipe so the child can never block on a full pipe, tests can wait for a log
//! line, and a failing test prints the logs. It learns the ports the child bound from its
//! `"message":"listening"` log lines, so every server can listen on port 0. The child is killed
//! when the [`Process`] is dropped.
//!
//! [`DataPlane::start`] runs `data-plane run` on ephemeral loopback ports this way; the control
//! plane's twin is [`crate::control_plane::ControlPlane`].
//!
//! Binaries are found in the cargo target directory next to the test executable
//! (`<target>/<profile>/deps/<test>-<hash>` → `<target>/<profile>/data-plane`), or in
//! `CELLROUTE_BIN_DIR` when that is set. Without `CELLROUTE_BIN_DIR`, the first use of a binary in
//! a test process runs `cargo build -p <its package> --bins` so that `cargo test` alone never
//! tests a stale binary: cargo only builds the tested package's own binaries for its integration
//! tests.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::wait::POLL_INTERVAL;

/// How long a child may take to log the addresses of all its listeners.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The environment variable that points at prebuilt binaries (and disables the build step).
pub const BIN_DIR_ENV: &str = "CELLROUTE_BIN_DIR";

/// Lines of log printed when a test fails while a child is running.
const LOG_LINES_ON_FAILURE: usize = 300;

/// The directory holding the workspace's binaries (`CELLROUTE_BIN_DIR`, or the profile
/// directory of the running test executable). Nothing is built; see [`bin_path`].
pub fn bin_dir() -> PathBuf {
    std::env::var_os(BIN_DIR_ENV).map_or_else(profile_dir, PathBuf::from)
}

/// The full path of the workspace binary `name`, built first when needed.
///
/// # Panics
///
/// When the build fails: every test that needs the binary would fail anyway, and the cargo
/// output explains why.
pub fn bin_path(name: &str) -> PathBuf {
    if std::env::var_os(BIN_DIR_ENV).is_none() {
        ensure_built(package_of(name));
    }
    bin_dir().join(name)
}

/// The workspace package that builds the binary `name`.
fn package_of(name: &str) -> &'static str {
    match name {
        "control-plane" | "crdgen" => "control-plane",
        "echo-cell" => "cellroute-tests",
        _ => "data-plane",
    }
}

/// Builds `package`'s binaries once per test process.
fn ensure_built(package: &'static str) {
    static BUILT: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    // Held during the build, so concurrent starts in one process wait for one build.
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if built.insert(package) {
        build_binaries(package, &profile_dir());
    }
}

/// `<target>/<profile>`: the grandparent of the running test executable.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| {
            panic!(
                "test executable {} is not in <target>/<profile>/deps",
                exe.display()
            )
        })
        .to_owned()
}

/// Builds `package`'s binaries into the target directory and profile this test was built with.
fn build_binaries(package: &str, profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    // One package at a time: building several (or `--workspace`) at once would unify features
    // across them and relink each binary differently from `cargo build -p <package>`.
    cmd.args(["build", "--quiet", "-p", package, "--bins"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if let Some(target_dir) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    match profile_dir.file_name().and_then(OsStr::to_str) {
        Some("debug") | None => {}
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed with {status}");
}

/// Runs a workspace binary to completion (for one-shot commands such as `data-plane validate`).
///
/// # Panics
///
/// When the binary cannot be started.
pub fn run_to_completion(name: &str, args: &[&OsStr]) -> Output {
    let path = bin_path(name);
    Command::new(&path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()))
}

/// Every line a child has written so far, shared with the threads that drain its pipes.
#[derive(Debug, Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    /// A copy of all lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().expect("log buffer poisoned").clone()
    }

    /// All lines so far that are JSON objects (the structured log records).
    pub fn records(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// How many structured records so far satisfy `pred`.
    pub fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.records().iter().filter(|r| pred(r)).count()
    }

    /// The last `n` lines joined, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn push(&self, line: String) {
        self.0.lock().expect("log buffer poisoned").push(line);
    }

    /// Drains `pipe` line by line on a thread until it closes.
    fn drain(&self, pipe: impl Read + Send + 'static) {
        let logs = self.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&buf);
                logs.push(line.trim_end_matches(['\n', '\r']).to_owned());
                buf.clear();
            }
        });
    }
}

/// A string field of a log record, looked up at the top level and then under `fields` (in case
/// a formatter does not flatten event fields).
pub fn field<'v>(record: &'v Value, name: &str) -> Option<&'v str> {
    record
        .get(name)
        .or_else(|| record.get("fields").and_then(|f| f.get(name)))
        .and_then(Value::as_str)
}

/// True for an audit record (`"target":"audit"`) whose message is `message`.
pub fn is_audit(record: &Value, message: &str) -> bool {
    field(record, "target") == Some("audit") && field(record, "message") == Some(message)
}

/// Removes the variables that would change what a child binary does behind the test's back.
///
/// Every flag of both binaries can also come from a `CELLROUTE_*` variable, and a developer's
/// shell (or `scripts/test`, which exports the test cluster's `CELLROUTE_*` settings) must not
/// change what a test runs: `CELLROUTE_NO_WATCH` would silently disable the watcher.
pub fn scrub_env(cmd: &mut Command) {
    cmd.env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CELLROUTE_") {
            cmd.env_remove(name);
        }
    }
}

/// A running child process whose output is collected line by line.
#[derive(Debug)]
pub struct Process {
    /// What the process is, for messages ("data plane", "control plane cp-a").
    name: String,
    command: String,
    child: Child,
    logs: Logs,
    exit: Option<ExitStatus>,
}

impl Process {
    /// Spawns `cmd` with stdin closed and stdout and stderr collected.
    ///
    /// # Panics
    ///
    /// When the binary cannot be started.
    pub fn spawn(name: &str, cmd: &mut Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let logs = Logs::default();
        logs.drain(child.stderr.take().expect("piped stderr"));
        logs.drain(child.stdout.take().expect("piped stdout"));
        Self {
            name: name.to_owned(),
            command: format!("{cmd:?}"),
            child,
            logs,
            exit: None,
        }
    }

    /// Waits until the process has logged a `"message":"listening"` record for each of
    /// `listeners`, and returns their addresses in the same order.
    ///
    /// # Panics
    ///
    /// When the process exits first, or [`STARTUP_TIMEOUT`] passes; the message includes its
    /// logs.
    pub async fn wait_listening(&mut self, listeners: &[&str]) -> Vec<SocketAddr> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let records = self.logs.records();
            let addrs: Option<Vec<SocketAddr>> = listeners
                .iter()
                .map(|listener| listening_addr(&records, listener))
                .collect();
            if let Some(addrs) = addrs {
                return addrs;
            }
            if let Some(status) = self.poll_exit() {
                // Give the drain threads a moment to collect the last words.
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!(
                    "{} ({}) exited with {status} before listening; logs:\n{}",
                    self.name,
                    self.command,
                    self.logs.tail(LOG_LINES_ON_FAILURE)
                );
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} ({}) did not log listening addresses for {listeners:?} within {STARTUP_TIMEOUT:?}; logs:\n{}",
                    self.name,
                    self.command,
                    self.logs.tail(LOG_LINES_ON_FAILURE)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The logs collected so far.
    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// Sends `signal` to the process.
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal)
            .unwrap_or_else(|e| panic!("cannot send {signal:?} to {} {}: {e}", self.name, self.pid()));
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("poll the child's status");
        }
        self.exit
    }

    /// Waits up to `timeout` for the process to exit, returning its status if it did.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits up to `timeout` for a structured log record satisfying `pred`, and returns it.
    ///
    /// # Panics
    ///
    /// When no such record appears in time; the message includes the recent logs.
    pub async fn wait_for_log(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(record) = self.logs.records().into_iter().find(|r| pred(r)) {
                return record;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no log record for {what} within {timeout:?}; logs of {}:\n{}",
                    self.name,
                    self.logs.tail(LOG_LINES_ON_FAILURE)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.poll_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- {} (pid {}) logs, last {LOG_LINES_ON_FAILURE} lines ----\n{}\n---- end of {} logs ----",
                self.name,
                self.child.id(),
                self.logs.tail(LOG_LINES_ON_FAILURE),
                self.name
            );
        }
    }
}

/// A running `data-plane run`.
#[derive(Debug)]
pub struct DataPlane {
    process: Process,
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    others: Vec<(String, SocketAddr)>,
}

/// How to start a data plane when [`DataPlane::start`] is not enough: under another command
/// (`strace`, `ip netns exec`), without `--config`, on another admin address, or with more
/// listeners to wait for.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The command and arguments the binary runs under, if any (`["strace", "-f", ...]`).
    pub wrapper: Vec<OsString>,
    /// `--config`, or none to start without one.
    pub config: Option<PathBuf>,
    /// `--admin-token-file`.
    pub token_file: Option<PathBuf>,
    /// `--admin-listen`.
    pub admin_listen: String,
    /// Further arguments.
    pub args: Vec<OsString>,
    /// Listeners to wait for besides `proxy` and `admin` (for example `health`).
    pub more_listeners: Vec<String>,
}

impl Default for Launch {
    fn default() -> Self {
        Self {
            wrapper: Vec::new(),
            config: None,
            token_file: None,
            admin_listen: "127.0.0.1:0".to_owned(),
            args: Vec::new(),
            more_listeners: Vec::new(),
        }
    }
}

impl Launch {
    /// Adds arguments.
    pub fn args<S: AsRef<OsStr>>(mut self, args: &[S]) -> Self {
        self.args.extend(args.iter().map(|a| a.as_ref().to_owned()));
        self
    }
}

impl DataPlane {
    /// Starts `data-plane run --listen 127.0.0.1:0 --log-format json` as `launch` says and waits
    /// until its listeners listen.
    ///
    /// # Panics
    ///
    /// As [`DataPlane::start`].
    pub async fn launch(launch: Launch) -> Self {
        let bin = tokio::task::spawn_blocking(|| bin_path("data-plane"))
            .await
            .expect("binary build task");
        let mut cmd = match launch.wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(&bin);
                cmd
            }
            None => Command::new(&bin),
        };
        cmd.arg("run")
            .args(["--listen", "127.0.0.1:0", "--admin-listen", &launch.admin_listen])
            .args(["--log-format", "json"]);
        if let Some(config) = &launch.config {
            cmd.arg("--config").arg(config);
        }
        if let Some(token_file) = &launch.token_file {
            cmd.arg("--admin-token-file").arg(token_file);
        }
        cmd.args(&launch.args);
        scrub_env(&mut cmd);
        let mut process = Process::spawn("data plane", &mut cmd);
        let mut names = vec!["proxy", "admin"];
        names.extend(launch.more_listeners.iter().map(String::as_str));
        let addrs = process.wait_listening(&names).await;
        Self {
            process,
            proxy_addr: addrs[0],
            admin_addr: addrs[1],
            others: names[2..]
                .iter()
                .zip(&addrs[2..])
                .map(|(n, a)| ((*n).to_owned(), *a))
                .collect(),
        }
    }

    /// The address of a listener named in [`Launch::more_listeners`].
    ///
    /// # Panics
    ///
    /// When it was not asked for.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.others
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no listener {name} was waited for"))
    }

    /// Starts `data-plane run --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log-format json
    /// --config CONFIG [--admin-token-file TOKEN] ARGS...` and waits until both servers listen.
    ///
    /// # Panics
    ///
    /// When the binary cannot be built or started, or has not logged both listening addresses
    /// within [`STARTUP_TIMEOUT`]; the panic message includes its logs.
    pub async fn start(config: &Path, token_file: Option<&Path>, args: &[&str]) -> Self {
        Self::launch(
            Launch {
                config: Some(config.to_owned()),
                token_file: token_file.map(Path::to_owned),
                ..Launch::default()
            }
            .args(args),
        )
        .await
    }

    /// The proxy listener's address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The logs collected so far.
    pub fn logs(&self) -> &Logs {
        self.process.logs()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Sends SIGHUP (reload the config).
    pub fn sighup(&self) {
        self.process.signal(rustix::process::Signal::HUP);
    }

    /// Sends SIGTERM (drain and exit).
    pub fn sigterm(&self) {
        self.process.signal(rustix::process::Signal::TERM);
    }

    /// The process, for signals and exit status.
    pub fn process_mut(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Waits up to `timeout` for the process to exit, returning its status if it did.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_for_exit(timeout).await
    }

    /// Waits up to `timeout` for a structured log record satisfying `pred`, and returns it.
    ///
    /// # Panics
    ///
    /// When no such record appears in time; the message includes the recent logs.
    pub async fn wait_for_log(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        self.process.wait_for_log(what, timeout, pred).await
    }
}

/// The address in the `"message":"listening"` record of `listener`, if logged yet.
fn listening_addr(records: &[Value], listener: &str) -> Option<SocketAddr> {
    records
        .iter()
        .filter(|r| field(r, "message") == Some("listening") && field(r, "listener") == Some(listener))
        .find_map(|r| field(r, "addr")?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listening_addresses_in_flat_or_nested_records() {
        let records: Vec<Value> = [
            r#"{"level":"INFO","message":"starting"}"#,
            r#"{"message":"listening","listener":"proxy","addr":"127.0.0.1:40123","target":"data_plane"}"#,
            r#"{"fields":{"message":"listening","listener":"admin","addr":"127.0.0.1:40124"}}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        assert_eq!(
            listening_addr(&records, "proxy"),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(
            listening_addr(&records, "admin"),
            Some("127.0.0.1:40124".parse().unwrap())
        );
        assert_eq!(listening_addr(&records, "metrics"), None);
    }

    #[test]
    fn audit_records_are_recognised() {
        let record: Value =
            serde_json::from_str(r#"{"target":"audit","message":"config rejected"}"#).unwrap();
        assert!(is_audit(&record, "config rejected"));
        assert!(!is_audit(&record, "config applied"));
    }
}
