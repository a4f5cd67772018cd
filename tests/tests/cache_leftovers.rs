//! No temp file outlives a failed or interrupted cache persist.
//!
//! Each persist writes a temp file beside the cache file, fsyncs it and renames it over the
//! cache file. The faults are real system calls failing in the real binary (`strace -e
//! inject=...`): an fsync that fails with EIO, a rename that fails with ENOSPC, and a `kill -9`
//! while the data plane sits in the fsync of a fully written temp file. After each, the cache
//! directory holds the previous cache file and nothing else: a failed persist removes its temp
//! file at once, and one a crash interrupted is removed when the data plane starts again.

#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use cellroute_tests::fault::{child_pid, strace_delay, strace_inject};
use cellroute_tests::fixture::Cells;
use cellroute_tests::push::{Follower, Scene, Table, kill_9, read_cache_file};
use cellroute_tests::wait::{SOON, eventually};

const CELLS: [&str; 3] = ["cell-a", "cell-b", "cell-c"];
const ID: &str = "dp-1";

fn routes(cells: &Cells, acme: &str) -> Table {
    Table::new(cells, &CELLS, "cell-c").customer("acme", acme)
}

/// Files in the cache file's directory other than the cache file.
fn other_files(cache: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache.parent().expect("cache dir"))
        .expect("read the cache dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| Some(name.as_str()) != cache.file_name().and_then(|n| n.to_str()))
        .collect();
    names.sort();
    names
}

/// A data plane running under `strace`: dropping it kills the data plane itself, because a
/// killed `strace` would only detach from it and leave it running.
struct Traced {
    follower: Option<Follower>,
    pid: u32,
}

impl Traced {
    async fn start(scene: &Scene, wrapper: &[String]) -> Self {
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let follower = scene.follower_under(ID, &wrapper, None, &[]).await;
        let pid = child_pid(follower.dp.pid());
        Self {
            follower: Some(follower),
            pid,
        }
    }

    fn dp(&self) -> &Follower {
        self.follower.as_ref().expect("running")
    }

    /// `kill -9` of the data plane, then of strace (which may be waiting out an injected
    /// delay before it notices), and waits until both are gone.
    async fn kill_9(mut self) {
        kill_9(self.pid);
        let mut follower = self.follower.take().expect("running");
        kill_9(follower.dp.pid());
        follower.dp.wait_for_exit(SOON).await.expect("strace to exit");
        let status = format!("/proc/{}/status", self.pid);
        eventually("the traced data plane to be gone", SOON, || async {
            match std::fs::read_to_string(&status) {
                Err(_) => Ok(()),
                Ok(text) if text.contains("State:\tZ") => Ok(()),
                Ok(_) => Err(format!("{} still runs", self.pid)),
            }
        })
        .await;
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if self.follower.is_some() {
            // Never panics: this may run while a failed test unwinds.
            let _ = std::process::Command::new("kill")
                .args(["-9", &self.pid.to_string()])
                .status();
        }
    }
}

/// Starts a scene whose data plane persisted version 1 and stopped; publishes version 2.
async fn scene_with_cached_v1() -> (Scene, i64, Table) {
    let cells = Scene::cells(&CELLS).await;
    let first = routes(&cells, "cell-a");
    let scene = Scene::start(cells, &first, &[]).await;
    let v1 = scene.cp.wait_served(&first).await;
    let dp = scene.follower(ID, None, &[]).await;
    scene.cp.wait_state(&[ID], "SYNCED", Some(v1), SOON).await;
    dp.wait_counter("cellroute_cache_writes_total", 1.0, SOON).await;
    dp.kill_9().await;
    assert_eq!(
        read_cache_file(&scene.cache_file(ID)).expect("cached").version,
        v1
    );
    let second = routes(&scene.cells, "cell-b");
    scene.publish(&second).await;
    (scene, v1, second)
}

/// A persist that fails at `syscalls` with `errno` leaves the cache as it was, and no temp file,
/// however often it fails.
async fn a_failed_persist_leaves_nothing_behind(syscalls: &[&str], errno: &str, step: &str, says: &str) {
    let (scene, v1, second) = scene_with_cached_v1().await;
    let cache = scene.cache_file(ID);
    let traced = Traced::start(&scene, &strace_inject(syscalls, errno)).await;
    let dp = traced.dp();
    let v2 = scene.cp.wait_served(&second).await;
    scene.cp.wait_state(&[ID], "SYNCED", Some(v2), SOON).await;
    dp.wait_routes(&[("acme", "cell-b")], SOON).await;
    for (failures, table) in [(1.0, None), (2.0, Some(routes(&scene.cells, "cell-a")))] {
        if let Some(table) = &table {
            let v = scene.publish(table).await;
            scene.cp.wait_state(&[ID], "SYNCED", Some(v), SOON).await;
        }
        dp.wait_counter("cellroute_cache_write_failures_total", failures, SOON)
            .await;
        eventually("no temp file beside the cache", SOON, || async {
            match other_files(&cache) {
                left if left.is_empty() => Ok(()),
                left => Err(format!("{errno} at {step}: left {left:?}")),
            }
        })
        .await;
        let kept = read_cache_file(&cache).expect("the previous cache file is intact");
        assert_eq!(kept.version, v1, "{errno} at {step}: the cache changed");
    }
    let logged = dp
        .dp
        .wait_for_log("the persist failure", SOON, |r| {
            r["message"]
                == "cannot persist the snapshot; still serving it from memory, the previous cache file is intact"
        })
        .await;
    let error = logged["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("({step})")) && error.contains(says),
        "{error}"
    );
    assert_eq!(dp.counter("cellroute_cache_writes_total").await, 0.0);
    assert_eq!(dp.admin.readyz().await.status, 200);
    traced.kill_9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fsync_that_fails_with_eio_leaves_no_temp_file() {
    a_failed_persist_leaves_nothing_behind(&["fsync", "fdatasync"], "EIO", "fsync", "Input/output error")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_that_fails_with_enospc_leaves_no_temp_file() {
    a_failed_persist_leaves_nothing_behind(
        &["rename", "renameat", "renameat2"],
        "ENOSPC",
        "rename",
        "No space left on device",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temp_file_left_by_kill_9_mid_persist_is_removed_at_the_next_start() {
    let (scene, v1, second) = scene_with_cached_v1().await;
    let cache = scene.cache_file(ID);
    // Every fsync takes a minute: the data plane writes its temp file, then sits in the fsync.
    let traced = Traced::start(
        &scene,
        &strace_delay(&["fsync", "fdatasync"], Duration::from_secs(60)),
    )
    .await;
    traced.dp().wait_routes(&[("acme", "cell-b")], SOON).await;
    let temp = eventually("a temp file of the persist", SOON, || async {
        match other_files(&cache).as_slice() {
            [one] => Ok(one.clone()),
            other => Err(format!("files beside the cache: {other:?}")),
        }
    })
    .await;
    traced.kill_9().await;
    assert_eq!(
        other_files(&cache),
        vec![temp.clone()],
        "the kill left the temp file"
    );
    assert_eq!(read_cache_file(&cache).expect("the cache is intact").version, v1);

    // The next start removes it, and says so.
    let dp = scene.follower(ID, None, &[]).await;
    let logged = dp
        .dp
        .wait_for_log("the removal of the leftover", SOON, |r| {
            r["message"] == "removed temp files of cache writes an earlier run did not finish"
        })
        .await;
    assert!(logged["removed"].to_string().contains(&temp), "{logged}");
    let v2 = scene.cp.wait_served(&second).await;
    scene.cp.wait_state(&[ID], "SYNCED", Some(v2), SOON).await;
    dp.wait_counter("cellroute_cache_writes_total", 1.0, SOON).await;
    assert_eq!(other_files(&cache), Vec::<String>::new());
    assert_eq!(read_cache_file(&cache).expect("cached").version, v2);
}
