//! The file watch under a steady stream of edits, and the size error of a large file, for both
//! binaries that hot-reload a file: the data plane's `--config` and the control plane's
//! `--from-file`.
//!
//! A file replaced by rename every 50 ms never leaves a quiet period of `--reload-debounce`;
//! `--reload-max-wait` bounds how long that can delay a reload, so the newest file keeps being
//! applied while the writer never stops.

#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cellroute_tests::config::{Routes, write_replace};
use cellroute_tests::fixture::{Cells, Harness};
use cellroute_tests::process::run_to_completion;
use cellroute_tests::push::{OBJECT, Scene, Table};
use cellroute_tests::wait::{SOON, eventually};

/// How often the writer replaces the file: faster than the debounce below.
const EVERY: Duration = Duration::from_millis(50);
const DEBOUNCE: &str = "100ms";
const MAX_WAIT: &str = "500ms";
/// How many distinct versions must be applied while the writer runs.
const APPLIES: usize = 4;
/// Longest the writer runs; a working max wait needs about `APPLIES` × 0.5 s.
const WRITER_LIMIT: Duration = Duration::from_secs(20);

/// Replaces `path` every [`EVERY`] with `render(n)` for n = 1, 2, ... until stopped (or
/// [`WRITER_LIMIT`]); `written` is the last n written.
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(path: std::path::PathBuf, render: impl Fn(u64) -> String + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let task = {
            let (stop, written) = (stop.clone(), written.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) && started.elapsed() < WRITER_LIMIT {
                    n += 1;
                    write_replace(&path, render(n).as_bytes()).expect("replace the file");
                    written.store(n, Ordering::SeqCst);
                    tokio::time::sleep(EVERY).await;
                }
            })
        };
        Self { stop, written, task }
    }

    fn running(&self) -> bool {
        !self.task.is_finished()
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the writer");
        self.written.load(Ordering::SeqCst)
    }
}

/// Polls `applied` (the edit number the binary serves now, if any) while the writer runs, until
/// [`APPLIES`] distinct edits were seen; fails if the writer stopped first.
async fn wait_for_applies_while_writing<F, Fut>(writer: &Writer, mut applied: F) -> Vec<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<u64>>,
{
    let mut seen: Vec<u64> = Vec::new();
    while seen.len() < APPLIES {
        assert!(
            writer.running(),
            "the writer ran for {WRITER_LIMIT:?} (about {} edits) and only edits {seen:?} were applied meanwhile",
            writer.written.load(Ordering::SeqCst)
        );
        if let Some(n) = applied().await
            && seen.last() != Some(&n)
        {
            let written = writer.written.load(Ordering::SeqCst);
            assert!(n <= written, "applied edit {n} before it was written ({written})");
            seen.push(n);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

fn edit_number(customers: &serde_json::Value) -> Option<u64> {
    customers
        .as_object()?
        .keys()
        .find_map(|k| k.strip_prefix("edit-")?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_plane_applies_a_file_rewritten_every_50ms() {
    let cells = Cells::start(&["cell-a"]).await;
    let url = cells.url("cell-a");
    let routes = move |n: u64| {
        Routes::new("tier-a")
            .customer(&format!("edit-{n}"), "tier-a")
            .placement("tier-a", &url)
    };
    let first = routes(0);
    let h = Harness::start(
        cells,
        &first,
        &["--reload-debounce", DEBOUNCE, "--reload-max-wait", MAX_WAIT],
    )
    .await;
    let started = Instant::now();
    let writer = Writer::start(h.config_path.clone(), move |n| routes(n).render());
    let seen = wait_for_applies_while_writing(&writer, || async {
        let config = h.admin.config().await;
        edit_number(&config.json["spec"]["customerToPlacement"]).filter(|n| *n > 0)
    })
    .await;
    let elapsed = started.elapsed();
    let written = writer.stop().await;
    eprintln!("applied edits {seen:?} within {elapsed:?} while {written} edits were written");
    // And once the writer pauses, the last edit is applied.
    eventually("the last edit to be applied", SOON, || async {
        let config = h.admin.config().await;
        match edit_number(&config.json["spec"]["customerToPlacement"]) {
            Some(n) if n == written => Ok(()),
            other => Err(format!("serving edit {other:?}, last written {written}")),
        }
    })
    .await;
    assert_eq!(h.admin.counter("config_reload_failure_total", &[]).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_serves_a_file_rewritten_every_50ms() {
    let cells = Scene::cells(&["cell-a"]).await;
    let table = |cells: &Cells, n: u64| {
        Table::new(cells, &["cell-a"], "cell-a").customer(&format!("edit-{n}"), "cell-a")
    };
    let first = table(&cells, 0);
    let scene = Scene::start(
        cells,
        &first,
        &["--reload-debounce", DEBOUNCE, "--reload-max-wait", MAX_WAIT],
    )
    .await;
    scene.cp.wait_served(&first).await;
    let rendered: Vec<String> = (0..=((WRITER_LIMIT.as_millis() / EVERY.as_millis()) as u64 + 1))
        .map(|n| table(&scene.cells, n).render())
        .collect();
    let hashes: Vec<String> = (0..rendered.len() as u64)
        .map(|n| table(&scene.cells, n).hash())
        .collect();
    let path = scene.dir().join("cp").join("routing.json");
    let writer = Writer::start(path, move |n| rendered[n as usize].clone());
    let seen = wait_for_applies_while_writing(&writer, || async {
        let served = scene.cp.served().await;
        let hash = served["hash"].as_str()?.to_owned();
        hashes
            .iter()
            .position(|h| *h == hash)
            .map(|n| n as u64)
            .filter(|n| *n > 0)
    })
    .await;
    let written = writer.stop().await;
    eprintln!("{OBJECT}: served edits {seen:?} while {written} edits were written");
}

/// A RoutingConfig padded with a comment to exactly `size` bytes.
fn padded(routes: &Routes, size: usize) -> Vec<u8> {
    let mut text = routes.render();
    text.push('#');
    let pad = size - text.len() - 1;
    text.push_str(&"x".repeat(pad));
    text.push('\n');
    assert_eq!(text.len(), size);
    text.into_bytes()
}

const BIG: usize = 20_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_large_file_is_reported_with_its_real_size() {
    let cells = Cells::start(&["cell-a"]).await;
    let routes = Routes::new("tier-a").placement("tier-a", &cells.url("cell-a"));
    let h = Harness::start(cells, &routes, &["--no-watch"]).await;
    h.write_bytes(&padded(&routes, BIG));
    let reply = h.admin.reload().await;
    assert_eq!(reply.status, 400, "{reply}");
    let error = reply.str("error");
    assert!(
        error.contains(&format!("is {BIG} bytes, over the limit of 16777216 bytes")),
        "{error}"
    );
    assert!(!error.contains("16777217"), "{error}");

    // `validate` runs the same read.
    let out = run_to_completion("data-plane", &[OsStr::new("validate"), h.config_path.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("is {BIG} bytes")), "{stderr}");

    // So does the control plane's --from-file.
    let cells = Scene::cells(&["cell-a"]).await;
    let first = Table::new(&cells, &["cell-a"], "cell-a");
    let scene = Scene::start(cells, &first, &["--reload-debounce", "20ms"]).await;
    let v1 = scene.cp.wait_served(&first).await;
    let mut big = first.render().into_bytes();
    big.extend(std::iter::repeat_n(b' ', BIG - big.len()));
    scene.write_bytes(&big);
    let rejection = eventually("the control plane to reject the large file", SOON, || async {
        let reply = scene.cp.get("/debug/snapshots").await;
        let object = reply.json["snapshots"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["object"] == OBJECT).cloned())
            .unwrap_or_default();
        match object["rejection"]["error"].as_str() {
            Some(e) => Ok(e.to_owned()),
            None => Err(format!("{object}")),
        }
    })
    .await;
    assert!(
        rejection.contains(&format!("is {BIG} bytes, over the limit of 16777216 bytes")),
        "{rejection}"
    );
    assert_eq!(scene.cp.served().await["version"], v1);
}
