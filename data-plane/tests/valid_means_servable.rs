//! One definition of valid: whatever the shared validation accepts (what the control plane
//! serves), this data plane, with its default limits, builds a routing table from.
//!
//! A property test over generated specs with hostile endpoints (odd schemes, ports, IPv6 and
//! zone ids, user info, IDN and punycode hosts, paths with spaces and bad escapes, random
//! bytes), odd customer ids and placement names (spaces, quotes, backslashes, non-ASCII, the
//! 253-byte limit and one past it) and odd customer headers. Many are refused by validation;
//! for every one it accepts, [`data_plane::compile::compile`] (the step a reload, a push and
//! `data-plane validate` run after validation) must succeed.

#![forbid(unsafe_code)]

use std::cell::Cell;

use data_plane::compile::{Limits, compile};
use data_plane::metrics::Metrics;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use routing_model::RoutingConfigSpec;
use routing_model::protocol::{SnapshotMessage, SnapshotRef};

fn scheme() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => Just("http://".to_owned()),
        10 => Just("https://".to_owned()),
        1 => prop::sample::select(vec!["HTTP://", "ftp://", "", "http:/", "http:", "//", "ws://", "http://user:pw@", "https://@"])
            .prop_map(str::to_owned),
    ]
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        40 => "[a-z][a-z0-9-]{0,20}(\\.[a-z0-9-]{1,10}){0,3}",
        5 => "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        5 => prop::sample::select(vec![
            "[::1]", "[fe80::1%25eth0]", "[::ffff:127.0.0.1]", "[2001:db8::8:800:200c:417a]",
            "xn--bcher-kva.example", "host_with_underscore", "localhost", "LOCALHOST", "0",
            "Cell-A.Example", "a-b--c.example", "1.example",
        ])
        .prop_map(str::to_owned),
        2 => prop::sample::select(vec![
            "[::1]", "[fe80::1%25eth0]", "[::ffff:127.0.0.1]", "[]", "[zz::1]", "::1",
            "bücher.example", "xn--bcher-kva.example", "host_with_underscore", "a..b", "",
            "-leading.example", "trailing-.example", "localhost", "LOCALHOST", "0", "256.1.1.1",
            "exa mple", "exa%20mple", "host\\name", "ho\"st",
        ])
        .prop_map(str::to_owned),
        1 => "[ -~]{0,20}",
        1 => "\\PC{1,12}",
    ]
}

fn port() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => Just(String::new()),
        10 => (1u32..=65535).prop_map(|p| format!(":{p}")),
        1 => prop::sample::select(vec![":0", ":65536", ":99999", ":", ":abc", ":-1", ":8080:9090", ": 80"])
            .prop_map(str::to_owned),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        20 => Just(String::new()),
        10 => "(/[a-zA-Z0-9._~%-]{1,8}){1,3}/?",
        2 => prop::sample::select(vec![
            "/", "//double", "/a b", "/%zz", "/%41", "/é", "?q=1", "#frag", "/?", "/#", "/a/../b",
            "/\\", "/\"", "/{x}", "/%00",
        ])
        .prop_map(str::to_owned),
        1 => "[ -~]{0,16}",
    ]
}

fn endpoint() -> impl Strategy<Value = String> {
    prop_oneof![
        40 => (scheme(), host(), port(), path()).prop_map(|(s, h, p, q)| format!("{s}{h}{p}{q}")),
        1 => "\\PC{0,40}",
        1 => "http://[ -~]{0,60}",
        1 => Just(format!("http://{}.example", "a".repeat(300))),
    ]
}

/// Customer ids and placement names.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        60 => "[a-z0-9][a-z0-9._-]{0,15}",
        6 => "[!-~][ -~]{0,18}[!-~]",
        2 => "[ -~]{0,20}",
        1 => "\\PC{1,10}",
        1 => prop::sample::select(vec![253usize, 254]).prop_map(|n| "c".repeat(n)),
        1 => prop::sample::select(vec!["a\\b", "\"quoted\"", "trailing ", " leading", "tab\tin", "é", "ü-ünïcødé", "a/b", "a.b", "-"])
            .prop_map(str::to_owned),
    ]
}

fn header() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => Just("x-customer-id".to_owned()),
        10 => "[a-zA-Z][a-zA-Z0-9-]{0,20}",
        3 => "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,20}",
        1 => "[ -~]{0,16}",
        1 => prop::sample::select(vec!["X-Customer-ID", "x customer", "x:customer", "", "é", "x_customer"])
            .prop_map(str::to_owned),
    ]
}

fn spec() -> impl Strategy<Value = RoutingConfigSpec> {
    (
        prop::collection::btree_map(name(), endpoint(), 1..6),
        prop::collection::vec(name(), 0..12),
        header(),
        any::<prop::sample::Index>(),
        // Now and then a default placement that is not one of the placements.
        prop::bool::weighted(0.1),
    )
        .prop_flat_map(|(endpoints, customers, header, default, default_unknown)| {
            let placements: Vec<String> = endpoints.keys().cloned().collect();
            let n = customers.len();
            (
                Just(endpoints),
                Just(customers),
                Just(header),
                Just(default),
                Just(default_unknown),
                prop::collection::vec(prop::sample::select(placements), n),
                name(),
            )
        })
        .prop_map(
            |(endpoints, customers, header, default, default_unknown, targets, other)| {
                let placements: Vec<&String> = endpoints.keys().collect();
                RoutingConfigSpec {
                    customer_header: header,
                    default_placement: if default_unknown {
                        other
                    } else {
                        default.get(&placements).to_string()
                    },
                    customer_to_placement: customers.into_iter().zip(targets).collect(),
                    placement_to_endpoint: endpoints,
                    rollout: None,
                }
            },
        )
}

#[test]
fn every_spec_validation_accepts_builds_a_table() {
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        failure_persistence: None,
        ..Config::default()
    });
    let accepted = Cell::new(0u32);
    let refused = Cell::new(0u32);
    runner
        .run(&spec(), |spec| {
            let message = SnapshotMessage {
                routing_config: "default/routes".to_owned(),
                snapshot: SnapshotRef {
                    lineage: "uid".to_owned(),
                    version: 1,
                    hash: routing_model::ContentHash::of_spec(&spec),
                },
                spec,
            };
            let Ok(config) = routing_model::validate::validate(message.to_manifest()) else {
                refused.set(refused.get() + 1);
                return Ok(());
            };
            accepted.set(accepted.get() + 1);
            let built = compile(&config, &Limits::default(), &Metrics::new());
            prop_assert!(
                built.is_ok(),
                "validation accepted {:?} but the data plane cannot serve it: {}",
                message.spec,
                built.err().map(|e| e.to_string()).unwrap_or_default()
            );
            Ok(())
        })
        .unwrap();
    eprintln!(
        "{} accepted, {} refused by validation",
        accepted.get(),
        refused.get()
    );
    // The property says nothing unless both sides of the line were exercised.
    assert!(accepted.get() >= 600, "only {} specs were valid", accepted.get());
    assert!(refused.get() >= 600, "only {} specs were refused", refused.get());
}
