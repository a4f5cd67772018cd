//! The admin server: health and readiness, the authenticated reload and rollback endpoints,
//! history with diffs, the config view and the metrics.

#![forbid(unsafe_code)]

use cellroute_tests::config::{Routes, write_replace};
use cellroute_tests::fixture::{Cells, Harness};
use cellroute_tests::wait::{SOON, eventually};
use serde_json::{Value, json};

/// acme → tier1 (cell-a), globex → tier2 (cell-b), default tier3 (cell-c).
fn three_tiers(cells: &Cells) -> Routes {
    Routes::new("tier3")
        .customer("acme", "tier1")
        .customer("globex", "tier2")
        .placement("tier1", &cells.url("cell-a"))
        .placement("tier2", &cells.url("cell-b"))
        .placement("tier3", &cells.url("cell-c"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_with_an_active_table() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    let routes = three_tiers(&cells);
    let h = Harness::start(cells, &routes, &[]).await;

    let health = h.admin.healthz().await;
    assert_eq!(health.status, 200, "{health}");
    assert_eq!(health.text.trim(), "ok", "{health}");
    let ready = h.admin.readyz().await;
    assert_eq!(ready.status, 200, "{ready}");
    assert_eq!(ready.json["ready"], true, "{ready}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_config_file_it_is_unready_and_answers_503_until_the_file_appears() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    let routes = three_tiers(&cells);
    let dir = tempfile::tempdir().expect("temporary directory");
    let config_path = dir.path().join("routing.yaml");
    let h = Harness::start_at(cells, dir, config_path.clone(), &["--reload-debounce", "50ms"]).await;

    // Alive, but not ready, and saying why.
    assert_eq!(h.admin.healthz().await.status, 200);
    let ready = h.admin.readyz().await;
    assert_eq!(ready.status, 503, "{ready}");
    assert_eq!(ready.json["ready"], false, "{ready}");
    assert!(
        !ready.str("reason").is_empty(),
        "readiness should say why: {ready}"
    );

    let config = h.admin.config().await;
    assert_eq!(config.status, 503, "{config}");
    assert_eq!(config.u64("config_generation"), Some(0), "{config}");
    assert!(config.json["spec"].is_null(), "{config}");

    let reply = h.proxy.get("/", Some("acme")).await;
    assert_eq!(reply.status, 503, "{reply}");
    assert_eq!(reply.str("error"), "no routing table", "{reply}");
    assert!(reply.json.get("detail").is_some(), "{reply}");

    // The watcher watches the directory, so creating the file is enough.
    write_replace(&config_path, routes.render().as_bytes()).expect("create the config file");
    eventually("readiness once the file exists", SOON, || async {
        match h.admin.readyz().await {
            r if r.status == 200 => Ok(()),
            r => Err(r.to_string()),
        }
    })
    .await;
    h.proxy.assert_cell(Some("acme"), "cell-a").await;
    assert_eq!(h.admin.generation().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_with_an_invalid_file_is_unready_until_the_file_is_fixed() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    let routes = three_tiers(&cells);
    let broken = Routes::new("tier7").placement("tier1", &cells.url("cell-a"));
    let h = Harness::start(cells, &broken, &["--reload-debounce", "50ms"]).await;

    let ready = h.admin.readyz().await;
    assert_eq!(ready.status, 503, "{ready}");
    assert!(
        ready.str("reason").contains("defaultPlacement"),
        "the reason should carry the error: {ready}"
    );
    let config = h.admin.config().await;
    assert_eq!(config.status, 503, "{config}");
    let error = config.json["last_error"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("defaultPlacement"), "{config}");
    assert_eq!(h.proxy.get("/", Some("acme")).await.status, 503);
    assert_eq!(h.admin.counter("config_reload_failure_total", &[]).await, 1.0);

    h.write_config(&routes);
    h.proxy.wait_for_cell(Some("acme"), "cell-a", SOON).await;
    assert_eq!(h.admin.readyz().await.status, 200);
    let history = h.admin.history().await;
    assert_eq!(history.json["entries"][0]["generation"], 1, "{history}");
    assert!(history.json["entries"][0]["diff"].is_null(), "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_file_the_admin_post_endpoints_are_closed() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let config_path = dir.path().join("routing.yaml");
    write_replace(&config_path, three_tiers(&cells).render().as_bytes()).expect("write config");
    let dp = cellroute_tests::process::DataPlane::start(&config_path, None, &["--no-watch"]).await;
    let admin = cellroute_tests::admin::AdminClient::new(dp.admin_addr(), "");

    for auth in [None, Some("Bearer "), Some("Bearer anything")] {
        for path in ["/admin/reload", "/admin/rollback"] {
            let reply = admin.post_as(path, auth).await;
            assert_eq!(reply.status, 401, "POST {path} with {auth:?}: {reply}");
            assert!(
                reply.str("message").starts_with("Authentication required"),
                "{reply}"
            );
        }
    }
    // Read-only endpoints stay open.
    assert_eq!(admin.config().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_and_rollback_require_the_token() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    let routes = three_tiers(&cells);
    let moved = routes.clone().customer("acme", "tier2");
    let h = Harness::start(cells, &routes, &["--no-watch"]).await;
    // A pending change, so that a reload that wrongly succeeded would show.
    h.write_config(&moved);

    let refused = [
        None,
        Some("Bearer wrong-token".to_owned()),
        Some(format!("Bearer {}x", cellroute_tests::fixture::TOKEN)),
        Some(format!("Basic {}", cellroute_tests::fixture::TOKEN)),
        Some(cellroute_tests::fixture::TOKEN.to_owned()),
        Some("Bearer ".to_owned()),
    ];
    for path in ["/admin/reload", "/admin/rollback", "/admin/rollback?generation=1"] {
        for auth in &refused {
            let reply = h.admin.post_as(path, auth.as_deref()).await;
            assert_eq!(reply.status, 401, "POST {path} with {auth:?}: {reply}");
            assert_eq!(reply.str("status"), "error", "{reply}");
            assert!(
                reply.str("message").starts_with("Authentication required"),
                "POST {path} with {auth:?}: {reply}"
            );
        }
    }
    assert_eq!(
        h.admin.generation().await,
        1,
        "a refused request changed the table"
    );
    h.proxy.assert_cell(Some("acme"), "cell-a").await;

    let reply = h.admin.reload().await;
    assert_eq!(reply.status, 200, "{reply}");
    assert_eq!(reply.str("status"), "success", "{reply}");
    assert_eq!(
        reply.str("message"),
        "Configuration reloaded successfully",
        "{reply}"
    );
    assert_eq!(reply.u64("config_generation"), Some(2), "{reply}");
    assert_eq!(reply.json["changed"], true, "{reply}");
    assert!(
        reply.json["timestamp"].as_f64().is_some_and(|t| t > 1.6e9),
        "{reply}"
    );
    // The reply comes after the swap: the very next request sees the new table.
    h.proxy.assert_cell(Some("acme"), "cell-b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_file_is_reread_so_the_token_can_rotate() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    let routes = three_tiers(&cells);
    let h = Harness::start(cells, &routes, &["--no-watch"]).await;

    std::fs::write(h.dir().join("admin-token"), "rotated-token\n").expect("rotate the token");
    let old = h.admin.reload().await;
    assert_eq!(old.status, 401, "the old token still works after rotation: {old}");
    let new = h
        .admin
        .post_as("/admin/reload", Some("Bearer rotated-token"))
        .await;
    assert_eq!(new.status, 200, "{new}");

    // An emptied token file must close the endpoints, never open them to an empty token.
    std::fs::write(h.dir().join("admin-token"), "\n").expect("empty the token file");
    for auth in [None, Some("Bearer "), Some("Bearer rotated-token")] {
        let reply = h.admin.post_as("/admin/reload", auth).await;
        assert_eq!(
            reply.status, 401,
            "with {auth:?} and an empty token file: {reply}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_content_is_a_no_op_and_a_change_is_counted() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    let routes = three_tiers(&cells);
    let h = Harness::start(cells, &routes, &["--no-watch"]).await;
    let successes = h.admin.counter("config_reload_success_total", &[]).await;
    let failures = h.admin.counter("config_reload_failure_total", &[]).await;
    assert_eq!(h.admin.metric("config_generation", &[]).await, Some(1.0));

    // Same bytes, then the same spec as JSON: both are the same table.
    for bytes in [routes.render(), routes.render_json()] {
        h.write_bytes(bytes.as_bytes());
        let reply = h.admin.reload().await;
        assert_eq!(reply.status, 200, "{reply}");
        assert_eq!(reply.json["changed"], false, "{reply}");
        assert_eq!(reply.u64("config_generation"), Some(1), "{reply}");
    }
    assert_eq!(
        h.admin.counter("config_reload_success_total", &[]).await,
        successes
    );
    assert_eq!(
        h.admin.counter("config_reload_failure_total", &[]).await,
        failures
    );
    assert_eq!(h.admin.metric("config_generation", &[]).await, Some(1.0));
    let history = h.admin.history().await;
    assert_eq!(
        history.json["entries"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );

    h.write_config(&routes.clone().customer("acme", "tier3"));
    let reply = h.admin.reload().await;
    assert_eq!(reply.json["changed"], true, "{reply}");
    assert_eq!(
        h.admin.counter("config_reload_success_total", &[]).await,
        successes + 1.0
    );
    assert_eq!(h.admin.metric("config_generation", &[]).await, Some(2.0));
    let applied_at = h
        .admin
        .metric("config_last_reload_success_timestamp_seconds", &[])
        .await;
    assert!(applied_at.is_some_and(|t| t > 1.6e9), "{applied_at:?}");
}

/// What the POST endpoints read is parsed only after the token check; a body or query that does
/// not parse is refused with 400 naming the field, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_and_queries_are_refused_naming_the_field() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    let first = three_tiers(&cells);
    let second = first.clone().customer("acme", "tier2");
    let h = Harness::start(cells, &first, &["--no-watch"]).await;
    h.write_config(&second);
    assert_eq!(h.admin.reload().await.u64("config_generation"), Some(2));

    for (path, body) in [("/admin/rollback?generation=abc", ""), ("/admin/source", "{")] {
        let reply = h.admin.post_body_as(path, None, body).await;
        assert_eq!(
            reply.status, 401,
            "POST {path} {body:?} without the token: {reply}"
        );
    }

    let bearer = h.admin.bearer();
    let rollback = "Configuration rollback failed";
    let source = "Source switch failed";
    let cases = [
        ("/admin/rollback?generation=abc", "", rollback, "`generation`"),
        ("/admin/rollback?generation=0", "", rollback, "`generation`"),
        (
            "/admin/rollback?generation=1&generation=2",
            "",
            rollback,
            "`generation`",
        ),
        ("/admin/rollback?gen=1", "", rollback, "`gen`"),
        ("/admin/source", "", source, "not JSON"),
        ("/admin/source", r#"["file"]"#, source, "JSON object"),
        ("/admin/source", "{}", source, "`source` is missing"),
        ("/admin/source", r#"{"source":"File"}"#, source, "`source`"),
        (
            "/admin/source",
            r#"{"source":"file","force":true}"#,
            source,
            "`force`",
        ),
        (
            "/admin/source",
            r#"{"source":"file","source":"control-plane"}"#,
            source,
            "`source` is given more than once",
        ),
    ];
    for (path, body, message, names) in cases {
        let reply = h.admin.post_body_as(path, Some(&bearer), body).await;
        assert_eq!(reply.status, 400, "POST {path} {body:?}: {reply}");
        assert_eq!(reply.str("status"), "error", "{reply}");
        assert_eq!(reply.str("message"), message, "{reply}");
        assert!(
            reply.str("error").contains(names),
            "POST {path} {body:?}: the error should name {names}: {reply}"
        );
    }
    assert_eq!(
        h.admin.generation().await,
        2,
        "a refused request changed the table"
    );
    assert_eq!(h.admin.config().await.str("mode"), "local");
    h.proxy.assert_cell(Some("acme"), "cell-b").await;

    // The parser that refused those reads a good query.
    let back = h.admin.rollback(Some(1)).await;
    assert_eq!(back.status, 200, "{back}");
    assert_eq!(back.u64("rolled_back_to"), Some(1), "{back}");
    h.proxy.assert_cell(Some("acme"), "cell-a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_the_previous_or_a_named_generation() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    let first = three_tiers(&cells);
    let second = first.clone().customer("acme", "tier2");
    let h = Harness::start(cells, &first, &["--no-watch"]).await;

    let nothing = h.admin.rollback(None).await;
    assert_eq!(nothing.status, 400, "nothing to roll back to yet: {nothing}");
    assert_eq!(
        nothing.str("message"),
        "Configuration rollback failed",
        "{nothing}"
    );
    assert!(!nothing.str("error").is_empty(), "{nothing}");
    assert_eq!(h.admin.generation().await, 1);

    h.write_config(&second);
    assert_eq!(h.admin.reload().await.u64("config_generation"), Some(2));
    h.proxy.assert_cell(Some("acme"), "cell-b").await;

    let back = h.admin.rollback(None).await;
    assert_eq!(back.status, 200, "{back}");
    assert_eq!(back.str("status"), "success", "{back}");
    assert_eq!(back.str("message"), "Configuration rolled back", "{back}");
    assert_eq!(
        back.u64("config_generation"),
        Some(3),
        "a rollback is a new generation: {back}"
    );
    assert_eq!(back.u64("rolled_back_to"), Some(1), "{back}");
    h.proxy.assert_cell(Some("acme"), "cell-a").await;

    let named = h.admin.rollback(Some(2)).await;
    assert_eq!(named.status, 200, "{named}");
    assert_eq!(named.u64("config_generation"), Some(4), "{named}");
    assert_eq!(named.u64("rolled_back_to"), Some(2), "{named}");
    h.proxy.assert_cell(Some("acme"), "cell-b").await;

    let missing = h.admin.rollback(Some(999)).await;
    assert_eq!(missing.status, 400, "{missing}");
    assert_eq!(
        missing.str("message"),
        "Configuration rollback failed",
        "{missing}"
    );
    assert!(
        missing.str("error").contains("999"),
        "the error should name the generation: {missing}"
    );
    assert_eq!(h.admin.generation().await, 4);
    h.proxy.assert_cell(Some("acme"), "cell-b").await;

    let history = h.admin.history().await;
    let entries = history.json["entries"].as_array().cloned().unwrap_or_default();
    let generations: Vec<_> = entries.iter().map(|e| e["generation"].as_u64()).collect();
    assert_eq!(generations, [Some(4), Some(3), Some(2), Some(1)], "{history}");
    assert_eq!(entries[0]["source"], "rollback", "{history}");
    assert_eq!(entries[0]["rolled_back_to"], 2, "{history}");
    assert_eq!(entries[1]["rolled_back_to"], 1, "{history}");
    assert_eq!(entries[2]["source"], "file", "{history}");
    assert_eq!(entries[2]["trigger"], "admin-reload", "{history}");
    assert_eq!(entries[3]["trigger"], "startup", "{history}");
    // A rollback re-applies the old content exactly.
    assert_eq!(entries[1]["hash"], entries[3]["hash"], "{history}");
    assert_eq!(entries[0]["hash"], entries[2]["hash"], "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_newest_first_with_a_diff_summary() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    let first = three_tiers(&cells);
    let spare = cells.url("cell-a");
    // acme moves, globex leaves, initech arrives; tier4 is new and tier3 moves to cell-b.
    let second = first
        .clone()
        .customer("acme", "tier2")
        .without_customer("globex")
        .customer("initech", "tier4")
        .placement("tier4", &spare)
        .placement("tier3", &cells.url("cell-b"));
    // globex returns, tier1 and tier3 go, and tier4 becomes the default.
    let third = Routes::new("tier4")
        .customer("acme", "tier2")
        .customer("initech", "tier4")
        .customer("globex", "tier2")
        .placement("tier2", &cells.url("cell-b"))
        .placement("tier4", &spare);
    let h = Harness::start(cells, &first, &["--no-watch"]).await;
    h.write_config(&second);
    assert_eq!(h.admin.reload().await.u64("config_generation"), Some(2));
    h.write_config(&third);
    assert_eq!(h.admin.reload().await.u64("config_generation"), Some(3));

    let history = h.admin.history().await;
    assert_eq!(history.status, 200, "{history}");
    let entries = history.json["entries"].as_array().cloned().unwrap_or_default();
    let generations: Vec<_> = entries.iter().map(|e| e["generation"].as_u64()).collect();
    assert_eq!(generations, [Some(3), Some(2), Some(1)], "{history}");

    let startup = &entries[2];
    assert!(
        startup["diff"].is_null(),
        "the first version has nothing to diff against: {startup}"
    );
    assert_eq!(startup["trigger"], "startup", "{startup}");
    assert_eq!(startup["customers"], 2, "{startup}");

    let diff = &entries[1]["diff"];
    assert_eq!(entries[1]["customers"], 2, "{}", entries[1]);
    assert_eq!(diff["customers_moved"]["count"], 1, "{diff}");
    assert_eq!(
        diff["customers_moved"]["sample"],
        json!([{"customer": "acme", "from": "tier1", "to": "tier2"}]),
        "{diff}"
    );
    assert_eq!(diff["customers_added"]["count"], 1, "{diff}");
    assert_eq!(
        diff["customers_added"]["sample"],
        json!([["initech", "tier4"]]),
        "{diff}"
    );
    assert_eq!(diff["customers_removed"]["count"], 1, "{diff}");
    assert_eq!(
        diff["customers_removed"]["sample"],
        json!([["globex", "tier2"]]),
        "{diff}"
    );
    assert_eq!(diff["placements_added"]["sample"], json!(["tier4"]), "{diff}");
    assert_eq!(diff["placements_removed"]["count"], 0, "{diff}");
    assert_eq!(diff["endpoints_changed"]["count"], 1, "{diff}");
    assert_eq!(
        diff["endpoints_changed"]["sample"][0]["placement"], "tier3",
        "{diff}"
    );
    assert!(diff.get("default_placement").is_none_or(Value::is_null), "{diff}");

    let diff = &entries[0]["diff"];
    assert_eq!(
        diff["default_placement"],
        json!({"from": "tier3", "to": "tier4"}),
        "{diff}"
    );
    let removed = diff["placements_removed"]["sample"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        removed.contains(&json!("tier1")) && removed.contains(&json!("tier3")),
        "{diff}"
    );
    assert_eq!(
        diff["customers_added"]["sample"],
        json!([["globex", "tier2"]]),
        "{diff}"
    );

    // The newest entry describes the active table.
    let config = h.admin.config().await;
    assert_eq!(entries[0]["hash"], config.json["hash"], "{config}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_the_last_ten_versions() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    let routes = three_tiers(&cells);
    let h = Harness::start(cells, &routes, &["--no-watch"]).await;
    for i in 0..12 {
        h.write_config(&routes.clone().customer(&format!("customer-{i}"), "tier1"));
        assert_eq!(h.admin.reload().await.u64("config_generation"), Some(i + 2));
    }
    let history = h.admin.history().await;
    let generations: Vec<u64> = history.json["entries"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["generation"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(generations, (4..=13).rev().collect::<Vec<_>>(), "{history}");
    // Anything older than the history cannot be rolled back to.
    assert_eq!(h.admin.rollback(Some(2)).await.status, 400);
    assert_eq!(h.admin.rollback(Some(4)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_view_describes_the_active_table() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    // tier9 is used by nobody: legal, but worth a warning.
    let routes = three_tiers(&cells)
        .header("X-Customer-ID")
        .placement("tier9", &cells.url("cell-a"));
    let h = Harness::start(cells, &routes, &[]).await;

    let config = h.admin.config().await;
    assert_eq!(config.status, 200, "{config}");
    let body = &config.json;
    assert_eq!(body["config_generation"], 1, "{config}");
    assert!(
        body["hash"]
            .as_str()
            .is_some_and(|h| h.starts_with("table-sha256:")),
        "{config}"
    );
    assert_eq!(body["source"], "file", "{config}");
    assert_eq!(
        body["source_detail"],
        h.config_path.display().to_string(),
        "{config}"
    );
    assert!(body["applied_at"].as_f64().is_some_and(|t| t > 1.6e9), "{config}");
    assert_eq!(body["customers"], 2, "{config}");
    assert_eq!(body["placements"], 4, "{config}");
    assert!(body["last_error"].is_null(), "{config}");
    let warnings = body["warnings"].to_string();
    assert!(
        warnings.contains("tier9"),
        "the unused placement should be warned about: {config}"
    );
    let spec = &body["spec"];
    assert_eq!(spec["customerHeader"], "x-customer-id", "{config}");
    assert_eq!(spec["defaultPlacement"], "tier3", "{config}");
    assert_eq!(
        spec["customerToPlacement"],
        json!({"acme": "tier1", "globex": "tier2"}),
        "{config}"
    );
    assert_eq!(
        spec["placementToEndpoint"]["tier2"],
        h.cells.url("cell-b"),
        "{config}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_placement_and_status_class() {
    let cells = Cells::start(&["cell-a", "cell-b", "cell-c"]).await;
    let routes = three_tiers(&cells);
    let h = Harness::start(cells, &routes, &[]).await;

    for _ in 0..3 {
        assert_eq!(h.proxy.get("/", Some("acme")).await.status, 200);
    }
    assert_eq!(h.proxy.get("/status/404", Some("acme")).await.status, 404);
    assert_eq!(h.proxy.get("/", Some("globex")).await.status, 200);

    let text = h.admin.metrics().await;
    let get = |name: &str, labels: &[(&str, &str)]| cellroute_tests::admin::metric_value(&text, name, labels);
    let tier1 = |class| [("placement", "tier1"), ("status_class", class)];
    assert_eq!(
        get("cellroute_requests_total", &tier1("2xx")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        get("cellroute_requests_total", &tier1("4xx")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        get(
            "cellroute_requests_total",
            &[("placement", "tier2"), ("status_class", "2xx")]
        ),
        Some(1.0),
        "{text}"
    );
    let latency = [("placement", "tier1")];
    assert_eq!(
        get("cellroute_upstream_request_duration_seconds_count", &latency),
        Some(4.0),
        "{text}"
    );
    let inf = [("placement", "tier1"), ("le", "+Inf")];
    assert_eq!(
        get("cellroute_upstream_request_duration_seconds_bucket", &inf),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        get("config_active_source", &[("source", "file")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(get("config_generation", &[]), Some(1.0), "{text}");
    assert_eq!(get("config_reload_failure_total", &[]), Some(0.0), "{text}");
    assert!(get("config_reload_success_total", &[]).is_some(), "{text}");
    assert_eq!(
        text.lines().last(),
        Some("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
}
