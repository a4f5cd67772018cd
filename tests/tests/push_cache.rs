//! The last-known-good cache under faults: damaged files are refused by checksum, `kill -9`
//! while persisting never leaves a torn file, and a full disk never stops the serving.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use cellroute_tests::fixture::Cells;
use cellroute_tests::push::{Scene, Table, read_cache_file};
use cellroute_tests::wait::{SOON, eventually};

const CELLS: [&str; 3] = ["cell-a", "cell-b", "cell-c"];
const ID: &str = "dp-1";

fn routes(cells: &Cells) -> Table {
    Table::new(cells, &CELLS, "cell-c")
}

/// Starts `ID` with the control plane down and checks it fell back to its file because of the
/// damaged cache, saying why.
async fn assert_falls_back(scene: &Scene, damage: &str, why: &str) {
    let dp = scene.follower(ID, None, &[]).await;
    dp.assert_routes(&[("acme", "cell-b")]).await;
    let config = dp.config().await;
    assert_eq!(config["source"], "file", "{damage}: {config}");
    assert_eq!(config["mode"], "local", "{damage}: {config}");
    assert_eq!(config["snapshot"], serde_json::Value::Null, "{damage}: {config}");
    assert_eq!(dp.admin.readyz().await.status, 200, "{damage}");
    assert_eq!(
        dp.counter("cellroute_cache_load_failures_total").await,
        1.0,
        "{damage}"
    );
    let logged = dp
        .dp
        .wait_for_log(&format!("why the cache was refused ({damage})"), SOON, |r| {
            r["level"] == "WARN" && r["error"].as_str().is_some_and(|e| e.contains(why))
        })
        .await;
    eprintln!("{damage}: {}", logged["error"]);
    dp.kill_9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_cache_is_refused_and_the_file_serves() {
    let cells = Scene::cells(&CELLS).await;
    let pushed = routes(&cells).customer("acme", "cell-a");
    let local = routes(&cells).customer("acme", "cell-b");
    let mut scene = Scene::start(cells, &pushed, &[]).await;
    let v1 = scene.cp.wait_served(&pushed).await;
    let dp = scene.follower(ID, Some(&local), &[]).await;
    scene.cp.wait_state(&[ID], "SYNCED", Some(v1), SOON).await;
    dp.wait_counter("cellroute_cache_writes_total", 1.0, SOON).await;
    dp.kill_9().await;
    scene.cp.kill_9().await;

    let path = scene.cache_file(ID);
    let good = std::fs::read(&path).expect("the cache file");
    let cached = read_cache_file(&path).expect("the data plane wrote a well-formed cache");
    assert_eq!(cached.version, v1);
    assert_eq!(cached.hash, pushed.hash());

    let mut flipped_payload = good.clone();
    let middle = good.len() - (good.len() - header_len(&good)) / 2;
    flipped_payload[middle] ^= 0x01;
    let mut flipped_header = good.clone();
    // A hex digit of the checksum itself.
    flipped_header[header_len(&good) - 10] ^= 0x01;
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "truncated by 7 bytes",
            &good[..good.len() - 7],
            "checksum mismatch",
        ),
        ("a flipped payload byte", &flipped_payload, "checksum mismatch"),
        ("a flipped checksum digit", &flipped_header, "checksum mismatch"),
        ("truncated to nothing", b"", "no header line"),
    ];
    for (damage, bytes, why) in cases {
        std::fs::write(&path, bytes).expect("damage the cache");
        assert!(
            read_cache_file(&path).is_err(),
            "{damage}: the damage is not detectable"
        );
        assert_falls_back(&scene, damage, why).await;
    }

    // The same file undamaged is used: the cases above differ from it only by the damage.
    std::fs::write(&path, &good).expect("restore the cache");
    let dp = scene.follower(ID, None, &[]).await;
    dp.assert_routes(&[("acme", "cell-a")]).await;
    assert_eq!(dp.config().await["source"], "cache");
    assert_eq!(dp.counter("cellroute_cache_load_failures_total").await, 0.0);
}

/// Length of the header line, newline included.
fn header_len(bytes: &[u8]) -> usize {
    bytes.iter().position(|b| *b == b'\n').expect("a header line") + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_persisting_never_leaves_a_torn_cache() {
    const ITERATIONS: usize = 20;
    // Big enough that each persist writes a few hundred KiB.
    const FILLER: usize = 6_000;
    let cells = Scene::cells(&CELLS).await;
    // Every version differs from the one before it; 400 are more than the test can publish.
    let tables: Vec<Table> = (0..400)
        .map(|i| {
            routes(&cells)
                .filler(FILLER, "cell-c")
                .customer("acme", if i % 2 == 0 { "cell-a" } else { "cell-b" })
                .customer(&format!("edit-{i}"), "cell-a")
        })
        .collect();
    let first = tables[0].clone();
    let scene = Arc::new(Scene::start(cells, &first, &["--reload-debounce", "10ms"]).await);
    let v1 = scene.cp.wait_served(&first).await;
    let local = routes(&scene.cells).customer("acme", "cell-b");
    let dp = scene.follower(ID, Some(&local), &[]).await;
    scene.cp.wait_state(&[ID], "SYNCED", Some(v1), SOON).await;
    dp.wait_counter("cellroute_cache_writes_total", 1.0, SOON).await;
    dp.kill_9().await;

    // Keep the control plane publishing new versions, each as soon as the last was accepted.
    let stop = Arc::new(AtomicBool::new(false));
    let editor = {
        let (scene, stop) = (scene.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut published, mut version) = (0, v1);
            for table in tables.iter().skip(1).cycle() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                // One write, one new version (hashing tables this size in the test is slow).
                scene.write(table);
                version = scene.cp.wait_served_after(version).await;
                published += 1;
            }
            published
        })
    };

    let path = scene.cache_file(ID);
    let mut last_version = v1;
    let started = Instant::now();
    for i in 0..ITERATIONS {
        let dp = scene.follower(ID, None, &[]).await;
        // Kill at a different point of the persist cycle each time: after 1, 2 or 3 writes.
        dp.wait_counter("cellroute_cache_writes_total", 1.0 + (i % 3) as f64, SOON)
            .await;
        dp.kill_9().await;
        let cached =
            read_cache_file(&path).unwrap_or_else(|e| panic!("iteration {i}: the cache is torn: {e}"));
        assert!(
            cached.version >= last_version,
            "iteration {i}: the cache went back from version {last_version} to {}",
            cached.version
        );
        last_version = cached.version;
    }
    stop.store(true, Ordering::SeqCst);
    let published = editor.await.expect("the editor task");
    let leftovers = other_files(&path);
    eprintln!(
        "{ITERATIONS} kills in {:?} while {published} versions were published; last cached version {last_version}; \
         files left beside the cache: {leftovers:?}",
        started.elapsed()
    );

    // What a restart during an outage sees: the last cached version, loaded.
    let mut scene = Arc::into_inner(scene).expect("the editor is done with the scene");
    scene.cp.kill_9().await;
    let dp = scene.follower(ID, None, &[]).await;
    let config = dp.config().await;
    assert_eq!(config["source"], "cache", "{config}");
    assert_eq!(config["snapshot"]["version"], last_version, "{config}");
    assert_eq!(dp.counter("cellroute_cache_load_failures_total").await, 0.0);
}

/// Files in the cache file's directory other than the cache file (temp files of interrupted
/// writes).
fn other_files(cache: &Path) -> Vec<String> {
    std::fs::read_dir(cache.parent().expect("cache dir"))
        .expect("read the cache dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| Some(name.as_str()) != cache.file_name().and_then(|n| n.to_str()))
        .collect()
}

/// A tiny tmpfs, unmounted on drop.
struct TinyDisk {
    path: PathBuf,
}

impl TinyDisk {
    /// Mounts a tmpfs of `size` at `path`; `Err` with the reason when mounting is not allowed.
    fn mount(path: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if output.status.success() {
            Ok(Self {
                path: path.to_owned(),
            })
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        // Lazy: a data plane still holding the directory must not keep the mount alive.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cache_disk_keeps_the_data_plane_serving() {
    let cells = Scene::cells(&CELLS).await;
    let small = routes(&cells).customer("acme", "cell-a");
    let scene = Scene::start(cells, &small, &[]).await;
    let v1 = scene.cp.wait_served(&small).await;

    let cache_dir = scene.dir().join("tiny-disk");
    let disk = TinyDisk::mount(&cache_dir, "16k");
    let mounted = disk.is_ok();
    if let Err(why) = &disk {
        // Without the right to mount, make the cache file's path unwritable instead: a
        // directory of that name makes every rename onto it fail.
        eprintln!(
            "cannot mount a tmpfs ({why}); a directory in place of the cache file stands in for a full disk"
        );
    }
    let cache_file = cache_dir.join("default_routes.snapshot");
    if !mounted {
        std::fs::create_dir_all(cache_file.join("occupied")).expect("block the cache path");
    }
    let cache_dir_arg = cache_dir.display().to_string();
    let dp = scene
        .follower(ID, Some(&routes(&scene.cells)), &["--cache-dir", &cache_dir_arg])
        .await;
    scene.cp.wait_state(&[ID], "SYNCED", Some(v1), SOON).await;
    dp.wait_routes(&[("acme", "cell-a")], SOON).await;
    let expected_failures = if mounted {
        dp.wait_counter("cellroute_cache_writes_total", 1.0, SOON).await;
        assert_eq!(
            read_cache_file(&cache_file)
                .expect("the small table fits")
                .version,
            v1
        );
        0.0
    } else {
        dp.wait_counter("cellroute_cache_write_failures_total", 1.0, SOON)
            .await
    };

    // A table bigger than the disk: applied and served, not persisted.
    let big = routes(&scene.cells)
        .filler(1_000, "cell-c")
        .customer("acme", "cell-b");
    let v2 = scene.publish(&big).await;
    dp.wait_routes(&[("acme", "cell-b")], SOON).await;
    scene.cp.wait_state(&[ID], "SYNCED", Some(v2), SOON).await;
    dp.wait_counter(
        "cellroute_cache_write_failures_total",
        expected_failures + 1.0,
        SOON,
    )
    .await;
    dp.dp
        .wait_for_log("the persist failure", SOON, |r| {
            r["message"]
                == "cannot persist the snapshot; still serving it from memory, the previous cache file is intact"
        })
        .await;
    assert_eq!(dp.admin.readyz().await.status, 200);
    dp.assert_routes(&[("acme", "cell-b"), ("filler-00042", "cell-c")])
        .await;
    assert_eq!(dp.config().await["snapshot"]["version"], v2);
    if mounted {
        let kept = read_cache_file(&cache_file).expect("the old cache is intact");
        assert_eq!(kept.version, v1, "the failed write must leave the previous cache");
        assert_eq!(
            other_files(&cache_file),
            Vec::<String>::new(),
            "a failed write left files behind"
        );

        // Space again (a smaller table): persisting recovers.
        let writes = dp.counter("cellroute_cache_writes_total").await;
        let third = routes(&scene.cells).customer("acme", "cell-c");
        let v3 = scene.publish(&third).await;
        dp.wait_routes(&[("acme", "cell-c")], SOON).await;
        dp.wait_counter("cellroute_cache_writes_total", writes + 1.0, SOON)
            .await;
        eventually("the cache to hold the new version", SOON, || async {
            match read_cache_file(&cache_file) {
                Ok(c) if c.version == v3 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    // The data plane first, then the mount under it.
    drop(dp);
    drop(disk);
}
