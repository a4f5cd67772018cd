//! One definition of valid, across the real binaries: for odd endpoints and ids, what
//! `control-plane validate` accepts `data-plane validate` accepts and a data plane applies, and
//! what one refuses the others refuse. (The generated version of this is the property test in
//! `data-plane/tests/valid_means_servable.rs`; these are the cases an operator is likely to
//! write, checked end to end.)

#![forbid(unsafe_code)]

use std::ffi::OsStr;

use cellroute_tests::config::Routes;
use cellroute_tests::fixture::{Cells, Harness};
use cellroute_tests::process::run_to_completion;

/// Endpoints (and customer ids) that are odd but valid.
const VALID: &[(&str, &str)] = &[
    ("http://[::1]:1", "plain"),
    ("http://[::ffff:127.0.0.1]:9001/api/", "plain"),
    ("http://xn--bcher-kva.example:80/api", "plain"),
    ("http://host_with_underscore:9001", "plain"),
    ("https://Cell-A.EXAMPLE", "UPPER.case-and.dots"),
    ("http://127.0.0.1:65535/a%20b/~c", "a:b@c"),
    ("http://0:1", "quote\"d"),
    ("http://cell:9001", "back\\slash"),
    ("http://cell:9001/", "x"),
];

/// Endpoints that are refused everywhere.
const INVALID: &[&str] = &[
    "http://bücher.example:9001",
    "http://cell:65536",
    "http://user:pw@cell:1",
    "http://cell:1/?q=1",
    "http://cell:1/#frag",
    "ftp://cell:21",
    "HTTP://cell:1",
    "http://[zz::1]:1",
    // A zone id: the URL parser the validation uses refuses it, so both do.
    "http://[fe80::1%25eth0]:9001",
    "http://:1",
    "cell:9001",
];

fn routes(endpoint: &str, customer: &str) -> Routes {
    Routes::new("tier-a")
        .customer(customer, "tier-a")
        .placement("tier-a", endpoint)
}

fn validate(binary: &str, file: &std::path::Path) -> (Option<i32>, String) {
    let out = run_to_completion(binary, &[OsStr::new("validate"), file.as_os_str()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_control_plane_accepts_the_data_plane_applies() {
    let start = routes("http://127.0.0.1:1", "acme");
    let h = Harness::start(Cells::default(), &start, &["--no-watch"]).await;
    let file = h.dir().join("candidate.yaml");
    let mut generation = h.admin.generation().await;
    for &(endpoint, customer) in VALID {
        let case = routes(endpoint, customer);
        std::fs::write(&file, case.render()).expect("write the case");
        let (cp, cp_out) = validate("control-plane", &file);
        assert_eq!(cp, Some(0), "control-plane validate refused {endpoint}: {cp_out}");
        let (dp, dp_out) = validate("data-plane", &file);
        assert_eq!(dp, Some(0), "data-plane validate refused {endpoint}: {dp_out}");
        h.write_config(&case);
        let reply = h.admin.reload().await;
        assert_eq!(reply.status, 200, "{endpoint} / {customer:?}: {reply}");
        generation += 1;
        let config = h.admin.config().await;
        assert_eq!(config.u64("config_generation"), Some(generation), "{config}");
        assert_eq!(
            config.json["spec"]["placementToEndpoint"]["tier-a"], endpoint,
            "{config}"
        );
        assert_eq!(
            config.json["spec"]["customerToPlacement"][customer], "tier-a",
            "{config}"
        );
    }
    for &endpoint in INVALID {
        let case = routes(endpoint, "acme");
        std::fs::write(&file, case.render()).expect("write the case");
        let (cp, cp_out) = validate("control-plane", &file);
        assert_eq!(
            cp,
            Some(1),
            "control-plane validate accepted {endpoint}: {cp_out}"
        );
        let (dp, dp_out) = validate("data-plane", &file);
        assert_eq!(dp, Some(1), "data-plane validate accepted {endpoint}: {dp_out}");
        assert!(
            cp_out.contains("spec.placementToEndpoint.tier-a")
                && dp_out.contains("spec.placementToEndpoint.tier-a"),
            "{endpoint}: the error must name the key:\n{cp_out}\n{dp_out}"
        );
        h.write_config(&case);
        let reply = h.admin.reload().await;
        assert_eq!(reply.status, 400, "{endpoint}: {reply}");
    }
    // An IDN host is refused with its punycode form as the fix.
    let (_, out) = {
        std::fs::write(&file, routes("http://bücher.example:9001", "acme").render()).expect("write");
        validate("data-plane", &file)
    };
    assert!(out.contains("xn--bcher-kva.example"), "{out}");
    assert_eq!(h.admin.generation().await, generation);
}
