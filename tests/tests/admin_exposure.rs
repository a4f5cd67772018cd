//! What the admin port shows to a peer that is not on loopback.
//!
//! The data plane runs in a network namespace of its own with `--admin-listen 0.0.0.0:0`, so the
//! test's requests reach it from another address, as a request from elsewhere in the pod
//! network would. Without the admin token such a peer sees that a table is active, its
//! generation, hash and size, but not one customer id or endpoint: not in `spec` of
//! `GET /admin/config`, not in the `diff`s of `GET /admin/history`, not in the error texts of
//! `last_error` or `/readyz`. With the token (any case of the `Bearer` scheme) it sees all of it.

#![forbid(unsafe_code)]

use std::net::SocketAddr;

use cellroute_tests::admin::AdminClient;
use cellroute_tests::client::Reply;
use cellroute_tests::config::{Routes, write_replace};
use cellroute_tests::fault::NetNs;
use cellroute_tests::fixture::TOKEN;
use cellroute_tests::process::{DataPlane, Launch};

/// Names that must not leak: a customer, a placement's endpoint host, a customer only in a
/// rejected file.
const CUSTOMER: &str = "acme-confidential";
const MOVED: &str = "globex-confidential";
const HOST: &str = "cell-secret.internal";
const REJECTED_CUSTOMER: &str = "initech-confidential";

fn routes(globex: &str) -> Routes {
    Routes::new("tier-a")
        .customer(CUSTOMER, "tier-a")
        .customer(MOVED, globex)
        .placement("tier-a", &format!("http://{HOST}:9001"))
        .placement("tier-b", "http://cell-b.internal:9002")
}

fn assert_hidden(what: &str, reply: &Reply) {
    for secret in [CUSTOMER, MOVED, HOST, REJECTED_CUSTOMER] {
        assert!(
            !reply.text.contains(secret),
            "{what} shows `{secret}` to a non-loopback peer without the token: {}",
            reply.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_shown_off_loopback_only_with_the_admin_token() {
    let ns = NetNs::create();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("routing.yaml");
    write_replace(&config, routes("tier-a").render().as_bytes()).expect("write the config");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write the token");
    let dp = DataPlane::launch(Launch {
        wrapper: ns.wrapper().into_iter().map(Into::into).collect(),
        config: Some(config.clone()),
        token_file: Some(token_file),
        admin_listen: "0.0.0.0:0".to_owned(),
        args: vec!["--no-watch".into()],
        ..Launch::default()
    })
    .await;
    let admin = AdminClient::new(SocketAddr::new(ns.inside().into(), dp.admin_addr().port()), TOKEN);
    let bearer = format!("Bearer {TOKEN}");

    // A second version (so the history has a diff), then a rejected file (so there is a
    // last_error naming a customer).
    write_replace(&config, routes("tier-b").render().as_bytes()).expect("write v2");
    let reloaded = admin.post_as("/admin/reload", Some(&bearer)).await;
    assert_eq!(reloaded.status, 200, "{reloaded}");
    let bad = format!(
        "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nspec:\n  defaultPlacement: tier-a\n  customerToPlacement: {{{REJECTED_CUSTOMER}: tier-9}}\n  placementToEndpoint: {{tier-a: 'http://{HOST}:9001'}}\n"
    );
    write_replace(&config, bad.as_bytes()).expect("write the bad file");
    let rejected = admin.post_as("/admin/reload", Some(&bearer)).await;
    assert_eq!(rejected.status, 400, "{rejected}");
    assert!(rejected.text.contains(REJECTED_CUSTOMER), "{rejected}");

    for authorization in [None, Some("Bearer wrong-token"), Some("Basic czNjcmV0")] {
        let what = format!("with authorization {authorization:?}");
        let config = admin.get_as("/admin/config", authorization).await;
        assert_eq!(config.status, 200, "{what}: {config}");
        assert_hidden(&format!("GET /admin/config {what}"), &config);
        assert!(config.json["spec"].is_null(), "{what}: {config}");
        assert!(config.json["redacted"].is_string(), "{what}: {config}");
        // What is not secret is still there: monitoring off the pod keeps working.
        assert_eq!(config.u64("config_generation"), Some(2), "{what}: {config}");
        assert_eq!(config.u64("customers"), Some(2), "{what}: {config}");
        assert!(config.json["hash"].is_string(), "{what}: {config}");
        assert!(config.json["last_error"]["at"].is_number(), "{what}: {config}");

        let history = admin.get_as("/admin/history", authorization).await;
        assert_eq!(history.status, 200, "{what}: {history}");
        assert_hidden(&format!("GET /admin/history {what}"), &history);
        let entries = history.json["entries"].as_array().cloned().unwrap_or_default();
        assert_eq!(entries.len(), 2, "{what}: {history}");
        assert!(entries.iter().all(|e| e["diff"].is_null()), "{what}: {history}");
        assert_eq!(entries[0]["generation"], 2, "{what}: {history}");
    }

    // With the token, everything, whatever the case of the scheme.
    for scheme in ["Bearer", "BEARER", "bearer"] {
        let authorization = format!("{scheme} {TOKEN}");
        let config = admin.get_as("/admin/config", Some(&authorization)).await;
        assert_eq!(config.status, 200, "{scheme}: {config}");
        assert_eq!(
            config.json["spec"]["customerToPlacement"][MOVED], "tier-b",
            "{scheme}: {config}"
        );
        assert!(config.text.contains(HOST), "{scheme}: {config}");
        assert!(config.json.get("redacted").is_none(), "{scheme}: {config}");
        let error = config.json["last_error"]["error"].as_str().unwrap_or_default();
        assert!(error.contains(REJECTED_CUSTOMER), "{scheme}: {config}");

        let history = admin.get_as("/admin/history", Some(&authorization)).await;
        let diff = &history.json["entries"][0]["diff"];
        assert!(diff.to_string().contains(MOVED), "{scheme}: {history}");
    }

    // Probes need no token and say nothing secret.
    assert_eq!(admin.get("/healthz").await.status, 200);
    let ready = admin.get("/readyz").await;
    assert_eq!(ready.status, 200, "{ready}");
    assert_hidden("GET /readyz", &ready);
    let metrics = admin.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert_hidden("GET /metrics", &metrics);
}
