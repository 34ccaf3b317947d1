//! Criterion: segment building (envelope + zstd) and body decoding, in MB/s of
//! event bytes, on the shared page-view shapes.
//!
//! `cargo bench --bench codec`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::config::Limits;
use sluice::decode::{self, Encoding, Format};
use sluice::log::segment::{ReceivedAt, SegmentBuilder};

const PAGEVIEW_100: &str = include_str!("data/pageview-100.json");

/// 100 page views as separate event byte strings (~300 bytes each).
fn events() -> Vec<Bytes> {
    let body = Bytes::from_static(PAGEVIEW_100.as_bytes());
    decode::split(&body, Format::Json, &Limits::default(), None)
        .expect("bench body decodes")
        .events
}

fn segment_building(c: &mut Criterion) {
    // 8 000 distinct events (~2.4 MB): a realistic flush. Each gets its own
    // user id and session so zstd cannot just repeat whole events.
    let events: Vec<Bytes> = events()
        .iter()
        .cycle()
        .take(8_000)
        .enumerate()
        .map(|(i, e)| {
            let text = std::str::from_utf8(e).expect("utf-8");
            let text = text
                .replacen("u000", &format!("u{:03}", i % 1000), 1)
                .replacen("abcdef", &format!("{:06x}", i * 7919), 1);
            Bytes::from(text)
        })
        .collect();
    let bytes: usize = events.iter().map(Bytes::len).sum();
    let mut group = c.benchmark_group("segment");
    group.throughput(Throughput::Bytes(bytes as u64));
    for level in [1, 3] {
        group.bench_function(format!("build+zstd{level}/8000x300B"), |b| {
            b.iter(|| {
                let at = ReceivedAt::now();
                let mut builder = SegmentBuilder::with_capacity(bytes + events.len() * 48);
                for e in &events {
                    builder.push(at, e);
                }
                black_box(builder.seal(level).expect("seal"))
            })
        });
    }
    group.finish();
}

fn body_decoding(c: &mut Criterion) {
    let limits = Limits::default();
    let array = Bytes::from_static(PAGEVIEW_100.as_bytes());
    let ndjson: Bytes = events()
        .iter()
        .flat_map(|e| e.iter().copied().chain(std::iter::once(b'\n')))
        .collect::<Vec<u8>>()
        .into();
    let gzipped = {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&array).expect("gzip");
        Bytes::from(enc.finish().expect("gzip"))
    };
    let zstded = Bytes::from(zstd::bulk::compress(&array, 3).expect("zstd"));
    let cases = [
        ("array", array.clone(), Format::Json, Encoding::Identity),
        ("ndjson", ndjson, Format::Ndjson, Encoding::Identity),
        ("array+gzip", gzipped, Format::Json, Encoding::Gzip),
        ("array+zstd", zstded, Format::Json, Encoding::Zstd),
    ];
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(array.len() as u64));
    for (name, body, format, encoding) in cases {
        group.bench_function(format!("{name}/100x300B"), |b| {
            b.iter(|| {
                let raw = decode::decompress(body.clone(), encoding, limits.max_decoded_bytes)
                    .expect("decompress");
                black_box(decode::split(&raw, format, &limits, None).expect("split"))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, segment_building, body_decoding);
criterion_main!(benches);
