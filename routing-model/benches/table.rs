//! Route lookup cost at 10, 10k and 1M customers (at 1M also through the overlay that deltas
//! leave), and table build cost at 100k.
//!
//! Run: `cargo bench -p routing-model --bench table`. Lookups use a fixed, shuffled set of
//! existing customer ids (hits) plus unknown ids (misses, which fall back to the default).

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use routing_model::manifest::{API_VERSION, KIND, ObjectMeta};
use routing_model::validate::validate;
use routing_model::{RoutingConfigManifest, RoutingConfigSpec, RoutingTable, ValidatedConfig};

fn config(customers: usize) -> ValidatedConfig {
    let placements = 16;
    let spec = RoutingConfigSpec {
        customer_header: "x-customer-id".to_owned(),
        default_placement: "cell-0".to_owned(),
        customer_to_placement: (0..customers)
            .map(|i| (format!("customer-{i:08}"), format!("cell-{}", i % placements)))
            .collect(),
        placement_to_endpoint: (0..placements)
            .map(|p| (format!("cell-{p}"), format!("http://10.0.{p}.1:8080")))
            .collect::<BTreeMap<_, _>>(),
        rollout: None,
    };
    validate(RoutingConfigManifest {
        api_version: API_VERSION.to_owned(),
        kind: KIND.to_owned(),
        metadata: ObjectMeta::default(),
        spec,
        status: None,
    })
    .expect("valid")
}

/// A cheap deterministic permutation so lookups do not walk the table in insertion order.
fn probe_keys(customers: usize, n: usize) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("customer-{:08}", x as usize % customers).into_bytes()
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(1));
    for customers in [10usize, 10_000, 1_000_000] {
        let cfg = config(customers);
        let table = RoutingTable::build(&cfg, |name, _| name.len());
        let raw: usize = cfg
            .spec()
            .customer_to_placement
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        eprintln!(
            "table of {customers} customers: index+arena {} bytes ({:.1} B/customer); raw keys+values {} bytes ({:.1} B/customer)",
            table.heap_bytes(),
            table.heap_bytes() as f64 / customers as f64,
            raw,
            raw as f64 / customers as f64
        );
        let keys = probe_keys(customers, 4096);
        group.bench_with_input(BenchmarkId::new("hit", customers), &keys, |b, keys| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(table.route(Some(black_box(&keys[i]))).placement.payload)
            });
        });
        if customers == 1_000_000 {
            // The same probes against the table after deltas: an overlay as full as it gets
            // before a rebuild (1/64 of the table), moving customers that the probes also hit.
            let moved: Vec<String> = (0..customers / 64)
                .map(|i| format!("customer-{:08}", i * 64))
                .collect();
            let patched = table
                .with_changes(moved.iter().map(|c| (c.as_str(), Some("cell-1"))))
                .expect("within the overlay");
            group.bench_with_input(BenchmarkId::new("hit_patched", customers), &keys, |b, keys| {
                let mut i = 0;
                b.iter(|| {
                    i = (i + 1) & 4095;
                    black_box(patched.route(Some(black_box(&keys[i]))).placement.payload)
                });
            });
        }
        group.bench_function(BenchmarkId::new("miss", customers), |b| {
            b.iter(|| black_box(table.route(Some(black_box(b"nobody-at-all"))).placement.payload));
        });
        // 4,096 different unknown ids, shaped like real ones: each lands somewhere else in the
        // index, so this is what unknown customers cost, not one cached probe.
        let unknown: Vec<Vec<u8>> = probe_keys(customers, 4096)
            .into_iter()
            .map(|mut k| {
                k[0] = b'x';
                k
            })
            .collect();
        group.bench_with_input(BenchmarkId::new("miss_varied", customers), &unknown, |b, keys| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(table.route(Some(black_box(&keys[i]))).placement.payload)
            });
        });
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let cfg = config(100_000);
    let mut group = c.benchmark_group("build");
    group.sample_size(20);
    group.bench_function("table_100k", |b| {
        b.iter(|| black_box(RoutingTable::build(&cfg, |name, _| name.len())));
    });
    group.finish();
}

criterion_group!(benches, lookup, build);
criterion_main!(benches);
