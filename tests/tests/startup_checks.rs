//! What the data plane checks before it runs, so that a mistake fails at once with a message
//! naming the flag rather than on every connect or every reload:
//!
//! - `--id` (or `POD_NAME`) must be a Kubernetes object name, as the control plane requires;
//!   the default id, the host name, is not the operator's choice and is made into one;
//! - `data-plane validate` runs the checks a reload runs, this data plane's `--max-customers`
//!   included.

#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::process::{Command, Stdio};

use cellroute_tests::config::Routes;
use cellroute_tests::fixture::{Cells, Harness};
use cellroute_tests::process::{DataPlane, Launch, bin_path, field, scrub_env};
use cellroute_tests::push::{OBJECT, Scene, Table};
use cellroute_tests::wait::SOON;

/// Runs `data-plane run` with `args` (and `env`) and returns its exit code and stderr; it must
/// exit by itself.
fn run_refused(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin_path("data-plane"));
    cmd.arg("run")
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--control-plane", "ws://127.0.0.1:9", "--routing-config", OBJECT])
        .args(args)
        .stdin(Stdio::null());
    scrub_env(&mut cmd);
    cmd.env_remove("POD_NAME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the data plane");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_id_is_refused_at_start_naming_the_flag() {
    let long = format!("dp-{}", "x".repeat(300));
    for (id, why) in [
        ("DP_1", "Kubernetes object name"),
        ("-dp", "Kubernetes object name"),
        ("dp 1", "Kubernetes object name"),
        ("bücher", "Kubernetes object name"),
        (long.as_str(), "253"),
    ] {
        for via_env in [false, true] {
            let (code, stderr) = if via_env {
                run_refused(&[], &[("POD_NAME", id)])
            } else {
                // `--id=VALUE`, so that an id starting with `-` is a value, not a flag.
                run_refused(&[&format!("--id={id}")], &[])
            };
            assert_eq!(
                code,
                Some(2),
                "--id {id:?} (env: {via_env}) was not refused: {stderr}"
            );
            assert!(stderr.contains("--id"), "the error does not name --id: {stderr}");
            assert!(stderr.contains(why), "--id {id:?}: {stderr}");
            // A long id is quoted only in part: the error stays readable.
            assert!(stderr.len() < 1000, "{} bytes of error: {stderr}", stderr.len());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_name_becomes_a_valid_id() {
    let cells = Scene::cells(&["cell-a"]).await;
    let table = Table::new(&cells, &["cell-a"], "cell-a");
    let scene = Scene::start(cells, &table, &[]).await;
    let v1 = scene.cp.wait_served(&table).await;
    // A UTS namespace of its own, with a host name that is not a Kubernetes name.
    let wrapper = [
        "unshare",
        "--uts",
        "sh",
        "-c",
        r#"echo '_Build_Box.EXAMPLE_' > /proc/sys/kernel/hostname && exec "$0" "$@""#,
    ];
    let token = scene.dir().join("dp-token");
    let dp = DataPlane::launch(
        Launch {
            wrapper: wrapper.iter().map(Into::into).collect(),
            ..Launch::default()
        }
        .args(&[
            OsStr::new("--control-plane"),
            OsStr::new(&scene.cp.url()),
            OsStr::new("--routing-config"),
            OsStr::new(OBJECT),
            OsStr::new("--token-file"),
            token.as_os_str(),
        ]),
    )
    .await;
    let id = "build-box.example";
    let record = dp
        .wait_for_log("the id it follows as", SOON, |r| {
            field(r, "message") == Some("following the control plane as this data plane id")
        })
        .await;
    assert_eq!(field(&record, "id"), Some(id), "{record}");
    // The control plane accepts it: the data plane is listed under it, and in sync.
    scene.cp.wait_state(&[id], "SYNCED", Some(v1), SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_applies_max_customers_like_a_reload() {
    let cells = Cells::start(&["cell-a"]).await;
    let two = Routes::new("tier-a")
        .customer("acme", "tier-a")
        .customer("globex", "tier-a")
        .placement("tier-a", &cells.url("cell-a"));
    let three = two.clone().customer("initech", "tier-a");
    let limit = ["--max-customers", "2"];
    let mut args = vec!["--no-watch"];
    args.extend(limit);
    let h = Harness::start(cells, &two, &args).await;
    let file = h.dir().join("candidate.yaml");
    let validate = |extra: &[&str], env: Option<&str>| {
        let mut all: Vec<&OsStr> = vec![OsStr::new("validate"), file.as_os_str()];
        all.extend(extra.iter().map(OsStr::new));
        let mut cmd = Command::new(bin_path("data-plane"));
        cmd.args(&all).stdin(Stdio::null());
        scrub_env(&mut cmd);
        if let Some(value) = env {
            cmd.env("CELLROUTE_MAX_CUSTOMERS", value);
        }
        cmd.output().expect("run validate")
    };

    // Three customers: the reload refuses them, and so does validate, with the same words.
    std::fs::write(&file, three.render()).expect("write the candidate");
    h.write_config(&three);
    let reload = h.admin.reload().await;
    assert_eq!(reload.status, 400, "{reload}");
    let error = reload.str("error").to_owned();
    assert!(error.contains("--max-customers 2"), "{error}");
    for (extra, env) in [(&limit[..], None), (&[][..], Some("2"))] {
        let out = validate(extra, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "validate accepted what a reload refuses: {stderr}"
        );
        assert!(
            stderr.contains(&error),
            "validate said {stderr:?}, the reload {error:?}"
        );
    }
    // Without the limit, both accept it.
    let out = validate(&[], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // At the limit, both accept it.
    std::fs::write(&file, two.render()).expect("write the candidate");
    let out = validate(&limit, None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.write_config(&two);
    assert_eq!(h.admin.reload().await.status, 200);
}
