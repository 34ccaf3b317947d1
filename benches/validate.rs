//! Criterion: JSON Schema validation of realistic analytics events, in
//! events/s and MB/s, beside framing alone on the same body.
//!
//! The schema (`data/pageview.schema.json`) has 12 properties with enums,
//! patterns, length limits and a nested object; the events are the shared
//! ~300-byte page views. `framing` is what a stream without a schema pays;
//! `framing+schema` adds the schema check (the DOM-free fast path, as this
//! schema stays in its subset). `parse-only` and `check-only` are the two
//! halves of the full validator's route (a `serde_json::Value` per event,
//! then jsonschema), which invalid events and schemas outside the subset take.
//!
//! `cargo bench --bench validate`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::config::Limits;
use sluice::decode::{self, Format};
use sluice::validate::Schema;

const PAGEVIEW_100: &str = include_str!("data/pageview-100.json");
const SCHEMA: &str = include_str!("data/pageview.schema.json");

fn validation(c: &mut Criterion) {
    let schema = Schema::compile(serde_json::from_str(SCHEMA).expect("schema is JSON"))
        .expect("schema compiles");
    assert!(
        schema.has_fast_path(),
        "the bench schema stays in the fast path's subset"
    );
    let body = Bytes::from_static(PAGEVIEW_100.as_bytes());
    let limits = Limits::default();
    let framed = decode::split(&body, Format::Json, &limits, Some(&schema)).expect("decodes");
    assert_eq!(
        (framed.events.len(), framed.rejected.len()),
        (100, 0),
        "every bench event satisfies the schema"
    );
    let mut group = c.benchmark_group("validate");
    group.throughput(Throughput::Elements(100));
    group.bench_function("framing/100x300B", |b| {
        b.iter(|| black_box(decode::split(&body, Format::Json, &limits, None).expect("decodes")))
    });
    group.bench_function("framing+schema/100x300B", |b| {
        b.iter(|| {
            black_box(decode::split(&body, Format::Json, &limits, Some(&schema)).expect("decodes"))
        })
    });
    // The two halves of the schema cost: parsing each event, checking it.
    let values: Vec<serde_json::Value> = framed
        .events
        .iter()
        .map(|e| serde_json::from_slice(e).expect("event is JSON"))
        .collect();
    group.bench_function("parse-only/100x300B", |b| {
        b.iter(|| {
            for e in &framed.events {
                black_box(serde_json::from_slice::<serde_json::Value>(e).expect("JSON"));
            }
        })
    });
    group.bench_function("schema-only/100x300B", |b| {
        b.iter(|| {
            for e in &framed.events {
                black_box(schema.check(e).is_ok());
            }
        })
    });
    group.bench_function("check-only/100x300B", |b| {
        b.iter(|| {
            for v in &values {
                black_box(schema.is_valid(v));
            }
        })
    });
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("framing+schema/bytes", |b| {
        b.iter(|| {
            black_box(decode::split(&body, Format::Json, &limits, Some(&schema)).expect("decodes"))
        })
    });
    group.finish();
}

criterion_group!(benches, validation);
criterion_main!(benches);
