//! Applying a 100k-customer config end to end: parse + validate + build + swap, as a reload
//! does, through the real applier task.
//!
//! Run: `cargo bench -p data-plane --bench apply`. Two documents that differ in every
//! customer's placement alternate, so each iteration is a real change (never the no-op path).

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use data_plane::applier::{Applier, ApplierSettings, Limits};
use data_plane::metrics::Metrics;
use data_plane::state::{SharedState, Source, Trigger};

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

criterion_group!(benches, apply);
criterion_main!(benches);
