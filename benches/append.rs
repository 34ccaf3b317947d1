//! Appends to the file store with fsync: latency percentiles for 1 MiB
//! segments, and appends/s for 1-event and 1 000-event batches.
//!
//! `cargo bench --bench append` (a short smoke run under `cargo test`).

use std::time::{Duration, Instant};

use sluice::log::retry::RetryPolicy;
use sluice::log::segment::{ReceivedAt, Segment, SegmentBuilder};
use sluice::log::Log;
use sluice::store::Store;

const PAGEVIEW: &str = include_str!("data/pageview-1.json");

/// `events` distinct page views (own user id and session each), so the
/// stored size is what real traffic compresses to, not a run of repeats.
fn segment(events: usize) -> Segment {
    let at = ReceivedAt::now();
    let template = PAGEVIEW.trim();
    let mut b = SegmentBuilder::default();
    for i in 0..events {
        let event = template
            .replacen("u000000", &format!("u{:06}", i * 7_919 % 1_000_000), 1)
            .replacen(
                "abcdef0123456789",
                &format!("{:016x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                1,
            );
        b.push(at, event.as_bytes());
    }
    b.seal(1).expect("seal").expect("non-empty")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn run(name: &str, events: usize, rounds: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&format!("file://{}", dir.path().display())).expect("store");
    let log = Log::new(store, "bench", RetryPolicy::default());
    let stream = log.stream("default", "bench");
    let seg = segment(events);
    let mut times = Vec::with_capacity(rounds);
    let started = Instant::now();
    for _ in 0..rounds {
        let t = Instant::now();
        let name = ulid::Ulid::new().to_string();
        log.append(&stream, 0, &seg, &name).await.expect("append");
        times.push(t.elapsed());
    }
    let total = started.elapsed();
    times.sort_unstable();
    println!(
        "{name:<22} raw {:>8} B  stored {:>8} B  {:>7.0} appends/s  {:>9.0} events/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms",
        seg.raw_len,
        seg.data.len(),
        rounds as f64 / total.as_secs_f64(),
        (rounds * events) as f64 / total.as_secs_f64(),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = if full { 300 } else { 5 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        run("1 event", 1, rounds).await;
        run("1000 events", 1000, rounds).await;
        // ~1 MiB uncompressed: 3 500 page views.
        run("1 MiB segment", 3_500, rounds).await;
    });
}
