//! What a one-customer edit of one shard costs the control plane in a cluster, at 1M customers
//! in 100 shards of 10k: composing the table whole against recomposing it from the last
//! composition, and sizing its snapshot message whole against sizing it from the last one.
//!
//! Run: `cargo bench -p routing-model --bench compose`. The edited shard is a map read anew (as
//! the watch delivers an edited object: it shares nothing with the shard it replaces), so the
//! recomposition diffs that one shard; the other 99 are the objects composed before.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use routing_model::compose::{Members, Shard, compose, recompose};
use routing_model::delta::changed_customers;
use routing_model::manifest::CustomerMap;
use routing_model::protocol::{SnapshotMessageRef, SnapshotRef};
use routing_model::{RoutingConfigSpec, ValidatedConfig};

const SHARDS: usize = 100;
const PER_SHARD: usize = 10_000;
const PLACEMENTS: usize = 16;

fn config() -> RoutingConfigSpec {
    RoutingConfigSpec {
        customer_header: "x-customer-id".to_owned(),
        default_placement: "cell-0".to_owned(),
        customer_to_placement: CustomerMap::new(),
        placement_to_endpoint: (0..PLACEMENTS)
            .map(|p| (format!("cell-{p}"), format!("http://10.0.{p}.1:8080")))
            .collect::<BTreeMap<_, _>>(),
        rollout: None,
    }
}

/// Shard `s`, with its first customer in placement `shift` further.
fn shard(s: usize, shift: usize) -> CustomerMap {
    (0..PER_SHARD)
        .map(|i| {
            let n = s * PER_SHARD + i;
            let p = (n + usize::from(i == 0) * shift) % PLACEMENTS;
            (format!("customer-{n:08}"), format!("cell-{p}"))
        })
        .collect()
}

fn members<'a>(config: &'a RoutingConfigSpec, names: &'a [String], shards: &'a [CustomerMap]) -> Members<'a> {
    Members {
        namespace: "ns",
        name: "routes",
        config,
        shards: names
            .iter()
            .zip(shards)
            .map(|(name, customers)| Shard { name, customers })
            .collect(),
    }
}

fn size(table: &ValidatedConfig, version: i64) -> (SnapshotRef, usize) {
    let reference = SnapshotRef {
        lineage: "uid".to_owned(),
        version,
        hash: table.hash(),
    };
    let len = message(table, &reference).json_len();
    (reference, len)
}

fn message<'a>(table: &'a ValidatedConfig, reference: &'a SnapshotRef) -> SnapshotMessageRef<'a> {
    SnapshotMessageRef {
        routing_config: "ns/routes",
        snapshot: reference,
        spec: table.spec(),
    }
}

fn one_customer_edit(c: &mut Criterion) {
    let config = config();
    let names: Vec<String> = (0..SHARDS).map(|s| format!("routes-{s:04}")).collect();
    let before: Vec<CustomerMap> = (0..SHARDS).map(|s| shard(s, 0)).collect();
    let mut after = before.clone();
    after[SHARDS / 2] = shard(SHARDS / 2, 1);
    let base = members(&config, &names, &before);
    let next = members(&config, &names, &after);
    let table = compose(&base).expect("valid");
    let edited = recompose(&base, &table, &next).expect("valid");
    assert_eq!(Ok(&edited), compose(&next).as_ref(), "the same table either way");
    let (base_ref, base_len) = size(&table, 1);
    let (edited_ref, edited_len) = size(&edited, 2);

    let mut group = c.benchmark_group("cluster_1m_one_customer_edit");
    group.sample_size(10);
    group.bench_function("compose_whole", |b| b.iter(|| black_box(compose(&next))));
    group.bench_function("recompose", |b| {
        b.iter(|| black_box(recompose(&base, &table, &next)))
    });
    group.bench_function("size_whole", |b| {
        b.iter(|| black_box(message(&edited, &edited_ref).json_len()))
    });
    group.bench_function("size_from_last", |b| {
        b.iter(|| {
            let old = &table.spec().customer_to_placement;
            let new = &edited.spec().customer_to_placement;
            let len = message(&edited, &edited_ref).json_len_after(
                &message(&table, &base_ref),
                base_len,
                changed_customers(old, new),
            );
            black_box(len)
        })
    });
    assert_eq!(
        message(&edited, &edited_ref).json_len_after(
            &message(&table, &base_ref),
            base_len,
            changed_customers(
                &table.spec().customer_to_placement,
                &edited.spec().customer_to_placement
            ),
        ),
        edited_len
    );
    group.finish();
}

criterion_group!(benches, one_customer_edit);
criterion_main!(benches);
