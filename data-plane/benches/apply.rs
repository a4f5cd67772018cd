//! Applying a 100k-customer config end to end: parse + validate + build + swap, as a reload
//! does, through the real applier task; and a control-plane delta that moves one customer of a
//! 1M-customer table, against the whole 1M-customer snapshot applied the same way.
//!
//! Run: `cargo bench -p data-plane --bench apply`. Two documents that differ in every
//! customer's placement alternate, so each iteration is a real change (never the no-op path);
//! likewise the delta moves its customer back and forth, one version further each time.

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use data_plane::applier::{Applier, ApplierSettings, Limits};
use data_plane::metrics::Metrics;
use data_plane::state::{SharedState, Source, Trigger};
use routing_model::delta::SpecChanges;
use routing_model::manifest::{API_VERSION, KIND, ObjectMeta};
use routing_model::protocol::{DeltaMessage, SnapshotMessage, SnapshotRef};
use routing_model::validate::validate;
use routing_model::{ContentHash, RoutingConfigManifest, RoutingConfigSpec};

fn document(customers: usize, shift: usize) -> Vec<u8> {
    let mut doc = String::from(
        "apiVersion: cellroute.dev/v1alpha1\nkind: RoutingConfig\nmetadata: {name: bench}\nspec:\n  defaultPlacement: cell-0\n  placementToEndpoint:\n",
    );
    for p in 0..16 {
        writeln!(doc, "    cell-{p}: http://10.0.{p}.1:8080").unwrap();
    }
    doc.push_str("  customerToPlacement:\n");
    for i in 0..customers {
        writeln!(doc, "    customer-{i:08}: cell-{}", (i + shift) % 16).unwrap();
    }
    doc.into_bytes()
}

fn apply(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let docs = [document(100_000, 0), document(100_000, 1)];
    eprintln!("document size: {} bytes", docs[0].len());
    let applier = runtime.block_on(async {
        Applier::spawn(ApplierSettings {
            state: Arc::new(SharedState::default()),
            metrics: Metrics::new(),
            config_path: None,
            limits: Limits::default(),
            cache: None,
        })
    });
    let mut group = c.benchmark_group("apply");
    group.sample_size(10);
    let mut i = 0;
    group.bench_function("parse_validate_build_swap_100k", |b| {
        b.iter(|| {
            i += 1;
            let bytes = docs[i % 2].clone();
            let applied = runtime
                .block_on(applier.apply_bytes(bytes, Source::File, Trigger::AdminReload, String::new()))
                .expect("applies");
            black_box(applied)
        });
    });
    group.finish();
}

fn spec(customers: usize, shift: usize) -> RoutingConfigSpec {
    RoutingConfigSpec {
        customer_header: "x-customer-id".to_owned(),
        default_placement: "cell-0".to_owned(),
        customer_to_placement: (0..customers)
            .map(|i| (format!("customer-{i:08}"), format!("cell-{}", (i + shift) % 16)))
            .collect(),
        placement_to_endpoint: (0..16)
            .map(|p| (format!("cell-{p}"), format!("http://10.0.{p}.1:8080")))
            .collect(),
        rollout: None,
    }
}

fn hash_of(spec: &RoutingConfigSpec) -> ContentHash {
    let manifest = RoutingConfigManifest {
        api_version: API_VERSION.to_owned(),
        kind: KIND.to_owned(),
        metadata: ObjectMeta::default(),
        spec: spec.clone(),
        status: None,
    };
    validate(manifest).expect("valid").hash()
}

fn delta(c: &mut Criterion) {
    const CUSTOMERS: usize = 1_000_000;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let metrics = Metrics::new();
    let applier = runtime.block_on(async {
        Applier::spawn(ApplierSettings {
            state: Arc::new(SharedState::default()),
            metrics: metrics.clone(),
            config_path: None,
            limits: Limits::default(),
            cache: None,
        })
    });
    // Two tables that differ in where one customer goes, and the change from each to the other.
    let tables = [spec(CUSTOMERS, 0), spec(CUSTOMERS, 1)];
    let hashes = [hash_of(&tables[0]), hash_of(&tables[1])];
    let mut moved = [tables[0].clone(), tables[0].clone()];
    moved[1]
        .customer_to_placement
        .insert("customer-00000042".to_owned(), "cell-7".to_owned());
    let moved_hashes = [hash_of(&moved[0]), hash_of(&moved[1])];
    let changes = [
        SpecChanges::between(&moved[1], &moved[0]),
        SpecChanges::between(&moved[0], &moved[1]),
    ];
    let reference = |version: i64, hash: ContentHash| SnapshotRef {
        lineage: "bench".to_owned(),
        version,
        hash,
    };
    let mut version = 0;
    let whole = |version: i64, table: usize, tables: &[RoutingConfigSpec; 2], hashes: &[ContentHash; 2]| {
        Arc::new(SnapshotMessage {
            routing_config: "default/bench".to_owned(),
            snapshot: reference(version, hashes[table]),
            spec: tables[table].clone(),
        })
    };
    let mut group = c.benchmark_group("apply");
    group.sample_size(10);
    group.bench_function("whole_snapshot_1m", |b| {
        b.iter(|| {
            version += 1;
            let snapshot = whole(version, (version % 2) as usize, &tables, &hashes);
            black_box(
                runtime
                    .block_on(applier.apply_snapshot(snapshot, Source::ControlPlane))
                    .expect("applies"),
            )
        });
    });
    // The delta chain starts from `moved[0]`, applied whole.
    version += 1;
    let start = whole(version, 0, &moved, &moved_hashes);
    runtime
        .block_on(applier.apply_snapshot(start, Source::ControlPlane))
        .expect("applies");
    let mut current = 0;
    let chain_start = version;
    group.sample_size(100);
    group.bench_function("delta_one_customer_1m", |b| {
        b.iter(|| {
            version += 1;
            let to = 1 - current;
            let message = Arc::new(DeltaMessage {
                routing_config: "default/bench".to_owned(),
                base: reference(version - 1, moved_hashes[current]),
                snapshot: reference(version, moved_hashes[to]),
                changes: changes[to].clone(),
            });
            current = to;
            black_box(runtime.block_on(applier.apply_delta(message)).expect("applies"))
        });
    });
    group.finish();
    // Every delta patched the table; none fell back to a rebuild (none ran when a filter
    // picked other benches).
    assert_eq!(metrics.deltas_patched.get(), metrics.deltas_applied.get());
    assert!(metrics.deltas_patched.get() > 0 || version == chain_start);
}

criterion_group!(benches, apply, delta);
criterion_main!(benches);
