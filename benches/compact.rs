//! Criterion: compaction of a closed hour into Parquet, and a consumer
//! group's read, on the in-memory store (the store's speed aside).
//!
//! The hour holds 100 000 varied ~300-byte analytics events in 100 segments
//! of 1 000 (zstd level 1, as the gateway writes them) on one partition.
//! `compact/hour` is a whole `sluice compact` run of that hour: scan the
//! log, fetch and decompress the segments, infer the columns, encode
//! Parquet (zstd 3), claim and store it. `consume/read` reads the same
//! 100 000 events from a group's checkpoint and writes them as NDJSON.
//! Before the runs the bench prints the Parquet size as a fraction of the
//! stored (zstd NDJSON) segments.
//!
//! `cargo bench --bench compact`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::compact::run::{run, Scope};
use sluice::config::Config;
use sluice::consume::Consumer;
use sluice::log::retry::RetryPolicy;
use sluice::log::segment::{ReceivedAt, SegmentBuilder};
use sluice::log::Log;
use sluice::store::Store;

const SEGMENTS: usize = 100;
const PER_SEGMENT: usize = 1_000;
const EVENTS: u64 = (SEGMENTS * PER_SEGMENT) as u64;
const HOUR_MS: i64 = 3_600_000;

/// A page view whose fields vary like real traffic (users, pages, agents).
fn event(i: usize) -> String {
    const AGENTS: [&str; 4] = [
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Gecko/20100101",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) Safari/605.1",
    ];
    const COUNTRIES: [&str; 6] = ["DE", "US", "FR", "BR", "IN", "JP"];
    format!(
        r#"{{"event":"page_view","user_id":"u{:06}","session":"s-{:016x}","url":"https://example.com/products/item-{}?ref=c{}","ts":"2026-11-24T13:{:02}:{:02}.{:03}Z","props":{{"a":{},"b":"v{}","c":[1,2,{}],"d":{}}},"country":"{}","ua":"{}","ms":{}}}"#,
        (i * 7919) % 50_000,
        (i / 37).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        i % 977,
        i % 13,
        (i / 1000) % 60,
        (i / 17) % 60,
        i % 1000,
        i,
        i % 31,
        i % 11,
        i % 3 == 0,
        COUNTRIES[i % COUNTRIES.len()],
        AGENTS[(i / 3) % AGENTS.len()],
        (i * 31) % 5000,
    )
}

struct Fixture {
    store: Store,
    config: Config,
    now: i64,
    ndjson_bytes: u64,
    stored_bytes: u64,
}

/// A memory store holding one closed hour of `EVENTS` events.
fn fixture(rt: &tokio::runtime::Runtime) -> Fixture {
    let store = Store::open("memory://").expect("memory store");
    let log = Log::new(store.clone(), "bench", RetryPolicy::default());
    let path = log.stream("default", "pageviews");
    let hour = (chrono::Utc::now().timestamp_millis() / HOUR_MS - 3) * HOUR_MS;
    let (mut ndjson_bytes, mut stored_bytes) = (0, 0);
    rt.block_on(async {
        for s in 0..SEGMENTS {
            let mut b = SegmentBuilder::with_capacity(400 * PER_SEGMENT);
            for e in 0..PER_SEGMENT {
                let i = s * PER_SEGMENT + e;
                let at = hour + (i as i64 * 30) % HOUR_MS;
                b.push(ReceivedAt::from_millis(at), event(i).as_bytes());
            }
            let segment = b.seal(1).expect("zstd").expect("not empty");
            ndjson_bytes += segment.raw_len;
            stored_bytes += segment.data.len() as u64;
            log.append(&path, 0, &segment, &format!("{s:06}"))
                .await
                .expect("append");
        }
    });
    let mut config = Config::default();
    config.streams.partitions = 1;
    Fixture {
        store,
        config,
        now: hour + 3 * HOUR_MS,
        ndjson_bytes,
        stored_bytes,
    }
}

/// A fresh copy of the fixture's store (compaction claims its work once).
fn copy(rt: &tokio::runtime::Runtime, from: &Store) -> Store {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let to = Store::open("memory://").expect("memory store");
    rt.block_on(async {
        let all: Vec<_> = from.inner.list(None).try_collect().await.expect("list");
        for o in all {
            let bytes = from.inner.get(&o.location).await.expect("get");
            let bytes = bytes.bytes().await.expect("bytes");
            to.inner.put(&o.location, bytes.into()).await.expect("put");
        }
    });
    to
}

fn compact_once(
    rt: &tokio::runtime::Runtime,
    f: &Fixture,
    store: Store,
) -> sluice::compact::Report {
    let log = Arc::new(Log::new(store, "compact", RetryPolicy::default()));
    rt.block_on(run(log, &f.config, &Scope::default(), f.now))
        .expect("compaction")
}

/// Write the run's Parquet files to `dir` (to inspect them with DuckDB).
fn dump(rt: &tokio::runtime::Runtime, store: &Store, dir: &std::path::Path) {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    rt.block_on(async {
        let all: Vec<_> = store.inner.list(None).try_collect().await.expect("list");
        for o in all
            .iter()
            .filter(|o| o.location.as_ref().ends_with(".parquet"))
        {
            let bytes = store.inner.get(&o.location).await.expect("get");
            let bytes = bytes.bytes().await.expect("bytes");
            let name = o.location.filename().expect("a file name");
            std::fs::create_dir_all(dir).expect("dump dir");
            std::fs::write(dir.join(name), &bytes).expect("dump");
        }
    });
}

/// `iters` whole compaction runs, each on a fresh copy (copying untimed).
fn timed_runs(rt: &tokio::runtime::Runtime, f: &Fixture, iters: u64) -> Duration {
    let mut spent = Duration::ZERO;
    for _ in 0..iters {
        let store = copy(rt, &f.store);
        let start = Instant::now();
        black_box(compact_once(rt, f, store));
        spent += start.elapsed();
    }
    spent
}

fn compaction(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let f = fixture(&rt);
    let store = copy(&rt, &f.store);
    let report = compact_once(&rt, &f, store.clone());
    assert_eq!(report.events, EVENTS, "{report:?}");
    if let Ok(dir) = std::env::var("SLUICE_BENCH_DUMP") {
        dump(&rt, &store, std::path::Path::new(&dir));
    }
    eprintln!(
        "compact: {EVENTS} events, {} B NDJSON ({} B/event), {} B stored zstd segments, \
         {} B Parquet = {:.1}% of the segments, {:.1}% of the NDJSON",
        f.ndjson_bytes,
        f.ndjson_bytes / EVENTS,
        f.stored_bytes,
        report.output_bytes,
        100.0 * report.output_bytes as f64 / f.stored_bytes as f64,
        100.0 * report.output_bytes as f64 / f.ndjson_bytes as f64,
    );
    let mut group = c.benchmark_group("compact");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(EVENTS));
    group.bench_function("hour/100k-events", |b| {
        b.iter_custom(|iters| timed_runs(&rt, &f, iters))
    });
    group.throughput(Throughput::Bytes(f.ndjson_bytes));
    group.bench_function("hour/ndjson-bytes", |b| {
        b.iter_custom(|iters| timed_runs(&rt, &f, iters))
    });
    group.finish();

    let mut group = c.benchmark_group("consume");
    group.sample_size(10);
    group.throughput(Throughput::Elements(EVENTS));
    group.bench_function("read+ndjson/100k-events", |b| {
        b.iter(|| {
            let consumer = Consumer::new(
                f.store.clone(),
                "default",
                "pageviews",
                "bench",
                "c",
                RetryPolicy::default(),
            )
            .expect("consumer");
            let pending = rt.block_on(consumer.read(1, None)).expect("read");
            let mut out = Vec::with_capacity(f.ndjson_bytes as usize);
            pending.write_ndjson(&mut out).expect("write");
            assert_eq!(pending.events(), EVENTS);
            black_box(out)
        })
    });
    group.finish();
}

criterion_group!(benches, compaction);
criterion_main!(benches);
