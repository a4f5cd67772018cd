//! Which encoding for snapshot messages: JSON, JSON + gzip, or postcard (a compact binary serde
//! format). Measures encode time (paid once per version on the control plane), decode time (paid
//! by every data plane) and bytes on the wire, for 10k and 100k customers.
//!
//! Run: `cargo bench -p routing-model --bench encoding`. Sizes are printed once per table size.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::{Read, Write};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use routing_model::RoutingConfigSpec;
use routing_model::protocol::{ServerMessage, SnapshotMessage, SnapshotRef};

fn message(customers: usize) -> ServerMessage {
    let spec = RoutingConfigSpec {
        customer_header: "x-customer-id".to_owned(),
        default_placement: "cell-0".to_owned(),
        customer_to_placement: (0..customers)
            .map(|i| (format!("customer-{i:08}"), format!("cell-{}", i % 16)))
            .collect(),
        placement_to_endpoint: (0..16)
            .map(|p| (format!("cell-{p}"), format!("http://10.0.{p}.1:8080")))
            .collect::<BTreeMap<_, _>>(),
        rollout: None,
    };
    ServerMessage::Snapshot(SnapshotMessage {
        routing_config: "default/routes".to_owned(),
        snapshot: SnapshotRef {
            lineage: "4b1d6c2e-0000-0000-0000-000000000000".to_owned(),
            version: 7,
            hash: routing_model::ContentHash::of_spec(&spec),
        },
        spec,
    })
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

fn encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("encoding");
    group.sample_size(10);
    for customers in [10_000usize, 100_000] {
        let msg = message(customers);
        let json = serde_json::to_vec(&msg).expect("json");
        let json_gz = gzip(&json);
        // postcard cannot decode internally tagged enums (no self-description), so a binary
        // protocol would frame the tag separately: measure the snapshot body itself.
        let ServerMessage::Snapshot(body) = &msg else {
            unreachable!()
        };
        let post = postcard::to_stdvec(body).expect("postcard");
        eprintln!(
            "{customers} customers: json {} B, json+gzip {} B, postcard {} B",
            json.len(),
            json_gz.len(),
            post.len()
        );
        group.bench_function(BenchmarkId::new("json_encode", customers), |b| {
            b.iter(|| black_box(serde_json::to_vec(&msg).expect("json")))
        });
        group.bench_function(BenchmarkId::new("json_decode", customers), |b| {
            b.iter(|| black_box(serde_json::from_slice::<ServerMessage>(&json).expect("json")))
        });
        group.bench_function(BenchmarkId::new("json_gzip_encode", customers), |b| {
            b.iter(|| black_box(gzip(&serde_json::to_vec(&msg).expect("json"))))
        });
        group.bench_function(BenchmarkId::new("json_gzip_decode", customers), |b| {
            b.iter(|| black_box(serde_json::from_slice::<ServerMessage>(&gunzip(&json_gz)).expect("json")))
        });
        group.bench_function(BenchmarkId::new("postcard_encode", customers), |b| {
            b.iter(|| black_box(postcard::to_stdvec(body).expect("postcard")))
        });
        group.bench_function(BenchmarkId::new("postcard_decode", customers), |b| {
            b.iter(|| black_box(postcard::from_bytes::<SnapshotMessage>(&post).expect("postcard")))
        });
    }
    group.finish();
}

criterion_group!(benches, encoding);
criterion_main!(benches);
