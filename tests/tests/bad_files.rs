//! Bad config files never replace a good routing table.
//!
//! Every case is a file an operator or a broken pipeline could really produce: empty, binary,
//! not UTF-8, too large, an alias bomb, duplicate or unknown keys, and one case per validation
//! rule. For each, whether the reload comes from `POST /admin/reload` or from the file watcher,
//! the tests check that the old table keeps routing, the failure is counted, the error names
//! the offending key or problem, an audit line is written, and the process stays up.

#![forbid(unsafe_code)]

use std::ffi::OsStr;

use cellroute_tests::config::Routes;
use cellroute_tests::fixture::{Cells, Harness};
use cellroute_tests::process::{is_audit, run_to_completion};
use cellroute_tests::wait::{SOON, eventually};

/// The `--max-config-bytes` every data plane here runs with, so the size case stays small.
const MAX_BYTES: &str = "4096";

/// One bad file and what its error must mention.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    /// Each entry must occur in the error, case-insensitively; `a|b` accepts either.
    expect: &'static [&'static str],
}

impl Case {
    fn new(name: &'static str, bytes: impl Into<Vec<u8>>, expect: &'static [&'static str]) -> Self {
        Self {
            name,
            bytes: bytes.into(),
            expect,
        }
    }

    /// Whether `error` mentions everything this case expects.
    fn matches(&self, error: &str) -> bool {
        let error = error.to_lowercase();
        self.expect
            .iter()
            .all(|want| want.split('|').any(|alt| error.contains(&alt.to_lowercase())))
    }

    fn check(&self, error: &str, context: &str) {
        assert!(
            self.matches(error),
            "case `{}`: {context} should mention {:?}, got: {error}",
            self.name,
            self.expect
        );
    }
}

/// The good config every case starts from: acme → tier1 (cell-a), default tier3 (cell-c).
struct Base {
    a: String,
    c: String,
}

impl Base {
    fn new(cells: &Cells) -> Self {
        Self {
            a: cells.url("cell-a"),
            c: cells.url("cell-c"),
        }
    }

    fn routes(&self) -> Routes {
        Routes::new("tier3")
            .customer("acme", "tier1")
            .placement("tier1", &self.a)
            .placement("tier3", &self.c)
    }

    /// The same config as hand-written YAML, for cases made by editing text.
    fn yaml(&self) -> String {
        format!(
            "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nmetadata: {{name: routes, namespace: default}}\n\
             spec:\n  defaultPlacement: tier3\n  customerToPlacement:\n    acme: tier1\n  placementToEndpoint:\n    \
             tier1: \"{}\"\n    tier3: \"{}\"\n",
            self.a, self.c
        )
    }

    fn edit(&self, from: &str, to: &str) -> String {
        let yaml = self.yaml();
        assert!(yaml.contains(from), "test bug: `{from}` not in the base config");
        yaml.replace(from, to)
    }

    fn tier1_endpoint(&self, endpoint: &str) -> String {
        self.edit(
            &format!("tier1: \"{}\"", self.a),
            &format!("tier1: \"{endpoint}\""),
        )
    }
}

/// Files that cannot even be read as a RoutingConfig.
fn parse_cases(base: &Base) -> Vec<Case> {
    let mut bomb = String::from(
        "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nmetadata:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for i in 1..12 {
        let p = format!("*a{}", i - 1);
        bomb.push_str(&format!("  a{i}: &a{i} [{}]\n", [p.as_str(); 10].join(", ")));
    }
    bomb.push_str("spec: {defaultPlacement: tier3, placementToEndpoint: {tier3: 'http://127.0.0.1:1'}}\n");
    let mut not_utf8 = base.yaml().into_bytes();
    let at = not_utf8
        .windows(4)
        .position(|w| w == b"acme")
        .expect("acme in base");
    not_utf8.splice(at + 2..at + 2, [0xff, 0xfe]);
    vec![
        Case::new("empty file", "", &["empty"]),
        Case::new("only comments", "# routing config goes here\n---\n", &["empty"]),
        Case::new(
            "binary garbage",
            b"\x7fELF\x02\x01\x01\x00\x00\x00garbage\x00\x01".to_vec(),
            &["binary"],
        ),
        Case::new("invalid UTF-8", not_utf8, &["utf-8|utf8"]),
        Case::new("alias bomb", bomb, &["alias|replay"]),
        Case::new(
            "over --max-config-bytes",
            format!("{}#{}\n", base.yaml(), "x".repeat(5000)),
            &[MAX_BYTES],
        ),
        Case::new(
            "duplicate YAML key",
            base.edit("    acme: tier1\n", "    acme: tier1\n    acme: tier3\n"),
            &["duplicate", "acme"],
        ),
        Case::new(
            "duplicate JSON key",
            r#"{"apiVersion":"cellroute.dev/v1alpha1","kind":"RoutingConfig","spec":{"defaultPlacement":"tier3","placementToEndpoint":{"tier3":"http://127.0.0.1:1","tier3":"http://127.0.0.1:2"}}}"#,
            &["duplicate", "tier3"],
        ),
        Case::new(
            "unknown field",
            base.edit("defaultPlacement", "defaultPlacment"),
            &["defaultPlacment"],
        ),
        Case::new(
            "missing spec",
            "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\n",
            &["spec"],
        ),
        Case::new("YAML syntax error", base.edit("spec:\n", "spec: [\n"), &["line"]),
    ]
}

/// Files that parse but break a validation rule.
fn rule_cases(base: &Base) -> Vec<Case> {
    let acme = |to: &str| base.edit("    acme: tier1\n", to);
    vec![
        Case::new(
            "wrong kind",
            base.edit("kind: RoutingConfig", "kind: Ingress"),
            &["kind", "Ingress"],
        ),
        Case::new(
            "wrong apiVersion",
            base.edit("cellroute.dev/v1alpha1", "cellroute.dev/v2"),
            &["apiVersion", "cellroute.dev/v2"],
        ),
        Case::new(
            "placement without endpoint",
            acme("    acme: tier9\n"),
            &["acme", "tier9"],
        ),
        Case::new(
            "defaultPlacement without endpoint",
            base.edit("defaultPlacement: tier3", "defaultPlacement: tier7"),
            &["defaultPlacement", "tier7"],
        ),
        Case::new(
            "non-http endpoint",
            base.tier1_endpoint("ftp://127.0.0.1:21"),
            &["tier1", "ftp"],
        ),
        Case::new(
            "relative endpoint",
            base.tier1_endpoint("/relative"),
            &["tier1", "/relative"],
        ),
        Case::new(
            "endpoint without host",
            base.tier1_endpoint("http://"),
            &["tier1", "host"],
        ),
        Case::new(
            "endpoint with credentials",
            base.tier1_endpoint("http://user:pw@127.0.0.1:1"),
            &["tier1", "credential"],
        ),
        Case::new(
            "endpoint with a query",
            base.tier1_endpoint("http://127.0.0.1:1/?x=1"),
            &["tier1", "query"],
        ),
        Case::new(
            "empty customer id",
            acme("    \"\": tier1\n"),
            &["customerToPlacement", "empty"],
        ),
        Case::new(
            "customer id too long",
            acme(&format!("    {}: tier1\n", "c".repeat(254))),
            &["customerToPlacement", "253"],
        ),
        Case::new(
            "customer id with a control character",
            acme("    \"ac\\tme\": tier1\n"),
            &["customerToPlacement", "printable|control"],
        ),
        Case::new(
            "customer id with a leading space",
            acme("    \" acme\": tier1\n"),
            &["customerToPlacement", "space"],
        ),
        Case::new(
            "empty placement name",
            base.edit("    tier3: ", "    \"\": \"http://127.0.0.1:1\"\n    tier3: "),
            &["placementToEndpoint", "empty"],
        ),
        Case::new(
            "no placements",
            "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nspec:\n  defaultPlacement: tier3\n  placementToEndpoint: {}\n",
            &["placementToEndpoint"],
        ),
        Case::new(
            "invalid customerHeader",
            base.edit("spec:\n", "spec:\n  customerHeader: \"x customer\"\n"),
            &["customerHeader"],
        ),
    ]
}

/// Starts cells and a data plane on the good base config.
async fn start(args: &[&str]) -> (Harness, Base) {
    let cells = Cells::start(&["cell-a", "cell-c"]).await;
    let base = Base::new(&cells);
    let mut all = vec!["--max-config-bytes", MAX_BYTES, "--reload-debounce", "50ms"];
    all.extend_from_slice(args);
    let h = Harness::start(cells, &base.routes(), &all).await;
    h.proxy.assert_cell(Some("acme"), "cell-a").await;
    (h, base)
}

/// The checks shared by both paths once a case was rejected: nothing changed, and the
/// rejection is visible in `/admin/config`.
async fn assert_old_table_still_active(h: &mut Harness, case: &Case) {
    let config = h.admin.config().await;
    assert_eq!(config.status, 200, "case `{}`: {config}", case.name);
    assert_eq!(
        config.u64("config_generation"),
        Some(1),
        "case `{}`: {config}",
        case.name
    );
    assert_eq!(
        config.json["spec"]["customerToPlacement"]["acme"], "tier1",
        "case `{}`",
        case.name
    );
    let last_error = config.json["last_error"]["error"].as_str().unwrap_or_default();
    case.check(last_error, "/admin/config last_error.error");
    h.proxy.assert_cell(Some("acme"), "cell-a").await;
    h.proxy.assert_cell(Some("someone-else"), "cell-c").await;
    assert_eq!(
        h.admin.readyz().await.status,
        200,
        "case `{}`: no longer ready",
        case.name
    );
    h.assert_running();
}

/// Writes each case and reloads it through `POST /admin/reload` (the watcher is off).
async fn reject_each_by_admin_reload(cases: fn(&Base) -> Vec<Case>) {
    let (mut h, base) = start(&["--no-watch"]).await;
    for case in &cases(&base) {
        let failures = h.admin.counter("config_reload_failure_total", &[]).await;
        let successes = h.admin.counter("config_reload_success_total", &[]).await;
        let audits = h.dp.logs().count(|r| is_audit(r, "config rejected"));
        h.write_bytes(&case.bytes);

        let reply = h.admin.reload().await;
        assert_eq!(reply.status, 400, "case `{}`: {reply}", case.name);
        assert_eq!(reply.str("status"), "error", "case `{}`: {reply}", case.name);
        assert_eq!(
            reply.str("message"),
            "Configuration reload failed",
            "case `{}`: {reply}",
            case.name
        );
        case.check(reply.str("error"), "the 400 body's error");

        let after = h.admin.counter("config_reload_failure_total", &[]).await;
        assert_eq!(after, failures + 1.0, "case `{}`: failures counted", case.name);
        let after = h.admin.counter("config_reload_success_total", &[]).await;
        assert_eq!(after, successes, "case `{}`: counted as a success", case.name);
        assert_old_table_still_active(&mut h, case).await;
        eventually(&format!("audit line for `{}`", case.name), SOON, || async {
            match h.dp.logs().count(|r| is_audit(r, "config rejected")) {
                n if n > audits => Ok(()),
                n => Err(format!("{n} `config rejected` audit lines")),
            }
        })
        .await;
    }

    // A good file after all that applies normally.
    h.write_config(&base.routes().customer("acme", "tier3"));
    let reply = h.admin.reload().await;
    assert_eq!(reply.status, 200, "{reply}");
    assert_eq!(reply.u64("config_generation"), Some(2), "{reply}");
    h.proxy.assert_cell(Some("acme"), "cell-c").await;
}

/// Writes each case and waits for the watcher to reject it.
async fn reject_each_by_watcher(cases: fn(&Base) -> Vec<Case>) {
    let (mut h, base) = start(&[]).await;
    for case in &cases(&base) {
        let failures = h.admin.counter("config_reload_failure_total", &[]).await;
        h.write_bytes(&case.bytes);
        eventually(
            &format!("the watcher to reject `{}`", case.name),
            SOON,
            || async {
                let now = h.admin.counter("config_reload_failure_total", &[]).await;
                let config = h.admin.config().await;
                let error = config.json["last_error"]["error"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if now > failures && case.matches(&error) {
                    Ok(())
                } else {
                    Err(format!("failures {failures} -> {now}, last_error: {error}"))
                }
            },
        )
        .await;
        assert_old_table_still_active(&mut h, case).await;
    }

    h.write_config(&base.routes().customer("acme", "tier3"));
    h.proxy.wait_for_cell(Some("acme"), "cell-c", SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_config_file_keeps_the_old_table() {
    let (mut h, base) = start(&[]).await;
    let case = Case::new("deleted file", "", &["routing.yaml"]);
    let failures = h.admin.counter("config_reload_failure_total", &[]).await;
    std::fs::remove_file(&h.config_path).expect("delete the config file");

    // The watcher sees the deletion and rejects it ...
    eventually("the watcher to reject the deletion", SOON, || async {
        match h.admin.counter("config_reload_failure_total", &[]).await {
            now if now > failures => Ok(()),
            now => Err(format!("failures still {now}")),
        }
    })
    .await;
    assert_old_table_still_active(&mut h, &case).await;
    // ... and so does an explicit reload.
    let reply = h.admin.reload().await;
    assert_eq!(reply.status, 400, "{reply}");
    case.check(reply.str("error"), "the 400 body's error");
    assert_old_table_still_active(&mut h, &case).await;

    // When the file comes back, it is picked up.
    h.write_config(&base.routes().customer("acme", "tier3"));
    h.proxy.wait_for_cell(Some("acme"), "cell-c", SOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_rejects_unreadable_files_and_keeps_routing() {
    reject_each_by_admin_reload(parse_cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_rejects_every_rule_violation_and_keeps_routing() {
    reject_each_by_admin_reload(rule_cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_rejects_unreadable_files_and_keeps_routing() {
    reject_each_by_watcher(parse_cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_rejects_every_rule_violation_and_keeps_routing() {
    reject_each_by_watcher(rule_cases).await;
}

#[test]
fn validate_reports_every_bad_file_and_exits_1() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let base = Base {
        a: "http://127.0.0.1:9001".to_owned(),
        c: "http://127.0.0.1:9003".to_owned(),
    };
    for case in parse_cases(&base).into_iter().chain(rule_cases(&base)) {
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, &case.bytes).expect("write case");
        let out = run_to_completion(
            "data-plane",
            &[
                OsStr::new("validate"),
                path.as_os_str(),
                OsStr::new("--max-config-bytes"),
                OsStr::new(MAX_BYTES),
            ],
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "case `{}`: validate accepted it:\n{text}",
            case.name
        );
        case.check(&text, "`data-plane validate` output");
    }
}

#[test]
fn validate_accepts_a_good_file_and_shows_the_diff() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let base = Base {
        a: "http://127.0.0.1:9001".to_owned(),
        c: "http://127.0.0.1:9003".to_owned(),
    };
    let old = dir.path().join("old.yaml");
    let new = dir.path().join("new.yaml");
    std::fs::write(&old, base.yaml()).expect("write old");
    std::fs::write(
        &new,
        base.routes()
            .customer("acme", "tier3")
            .customer("initech", "tier1")
            .render_json(),
    )
    .expect("write new");

    let out = run_to_completion("data-plane", &[OsStr::new("validate"), old.as_os_str()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let out = run_to_completion(
        "data-plane",
        &[
            OsStr::new("validate"),
            new.as_os_str(),
            OsStr::new("--against"),
            old.as_os_str(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout.contains("acme") && stdout.contains("tier3"),
        "the move of acme should be shown:\n{stdout}"
    );
    assert!(
        stdout.contains("initech"),
        "the added customer should be shown:\n{stdout}"
    );
}
