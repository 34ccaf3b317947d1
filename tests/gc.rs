//! Garbage collection against real stores (memory, the file store, moto
//! S3): retention keeps what is young and deletes what is old while every
//! offset stays readable or reported expired; a fresh process finds the
//! head from the watermark; racing collectors never leave the watermark
//! below deleted data; a stale writer never re-creates a deleted seq;
//! orphan segments go, committed ones stay. Every retention decision takes
//! an explicit `now`: nothing sleeps to let time pass.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::{Backend, Place};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use sluice::config::Config;
use sluice::faults::{Fault, FaultyStore};
use sluice::gc::{Gc, Report, Scope};
use sluice::log::record::StreamPath;
use sluice::log::retry::RetryPolicy;
use sluice::log::segment::{ReceivedAt, Segment, SegmentBuilder};
use sluice::log::{Log, LogError};
use sluice::store::Store;

const HOUR: i64 = 3_600_000;

fn policy() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(20),
        deadline: Duration::from_secs(5),
    }
}

/// One stream `clicks` of tenant `default`, one partition, keeping `retention`.
fn config(retention: &str) -> Config {
    let text = format!(
        "[streams]\npartitions = 1\n[tenants.default.streams.clicks]\nretention = \"{retention}\"\n"
    );
    let c: Config = toml::from_str(&text).unwrap();
    c.validate().unwrap();
    c
}

fn segment(at_millis: i64, tag: &str, n: usize) -> (Segment, Vec<String>) {
    let events: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"tag":"{tag}","i":{i}}}"#))
        .collect();
    let mut b = SegmentBuilder::default();
    for e in &events {
        b.push(ReceivedAt::from_millis(at_millis), e.as_bytes());
    }
    (b.seal(1).unwrap().unwrap(), events)
}

async fn append(log: &Log, s: &StreamPath, at_millis: i64, tag: &str, n: usize) -> Vec<String> {
    let (seg, events) = segment(at_millis, tag, n);
    let name = ulid::Ulid::new().to_string();
    log.append(s, 0, &seg, &name).await.unwrap();
    events
}

fn event_of(line: &[u8]) -> String {
    common::gateway::event_of(line)
}

fn gc(store: Store, config: &Config) -> Gc {
    Gc::new(Arc::new(Log::new(store, "gc", policy())), config)
}

async fn run(gc: &Gc, now: DateTime<Utc>) -> Report {
    let report = gc.run(&Scope::default(), now).await.unwrap();
    assert!(!report.failed(), "{report:?}");
    report
}

async fn exists(store: &Store, key: &Path) -> bool {
    store.inner.head(key).await.is_ok()
}

async fn keys(store: &Store, under: &str) -> Vec<String> {
    let prefix = Path::from(format!("root/default/clicks/{under}"));
    let mut all: Vec<String> = store
        .inner
        .list(Some(&prefix))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    all.sort();
    all
}

/// Six old records (3 events each) then four young ones; a 7-day
/// retention. gc deletes exactly the old records and their segments; every
/// offset is then either an event or `Expired` naming the first retained
/// offset; a fresh process finds the head and appends after it; running gc
/// again changes nothing; a later `now` expires the rest, and appends still
/// continue at the right offset.
async fn retention_keeps_the_young_and_expires_the_old(b: Backend) {
    let place = Place::new(b);
    let now = Utc::now();
    let writer = Log::new(place.store(), "w1", policy());
    let s = writer.stream("default", "clicks");
    let mut all = Vec::new();
    for i in 0..10 {
        let age = if i < 6 { 10 * 24 * HOUR - i } else { HOUR };
        let at = now.timestamp_millis() - age;
        all.extend(append(&writer, &s, at, &format!("r{i}"), 3).await);
    }
    let mut old_segments = Vec::new();
    for seq in 0..6 {
        old_segments.push(writer.record(&s, 0, seq).await.unwrap().unwrap().segment);
    }

    let collector = gc(place.store(), &config("7d"));
    let report = run(&collector, now).await;
    let p = &report.streams[0].partitions[0];
    assert_eq!((p.from, p.to), ((0, 0), (6, 18)), "{report:?}");
    assert_eq!((p.records_deleted, p.segments_deleted), (6, 6));
    let store = place.store();
    for seq in 0..10 {
        assert_eq!(
            exists(&store, &s.record(0, seq)).await,
            seq >= 6,
            "record {seq}"
        );
    }
    for seg in &old_segments {
        assert!(!exists(&store, &s.segment(seg)).await, "{seg} deleted");
    }
    assert_eq!(keys(&store, "data").await.len(), 4, "young segments kept");

    // A fresh process (empty caches): every offset is an event or expired.
    let reader = Log::new(place.store(), "reader", policy());
    for offset in 0..30u64 {
        match reader.read(&s, 0, offset, 1).await {
            Ok(batch) => {
                assert!(offset >= 18, "offset {offset} should have expired");
                assert_eq!(event_of(&batch.events[0]), all[offset as usize]);
            }
            Err(LogError::Expired {
                offset: o,
                first_offset,
                ..
            }) => {
                assert!(offset < 18 && o == offset && first_offset == 18);
            }
            Err(e) => panic!("offset {offset}: {e}"),
        }
    }
    let rest = reader.read(&s, 0, 18, 100).await.unwrap();
    let got: Vec<String> = rest.events.iter().map(|e| event_of(e)).collect();
    assert_eq!(got, all[18..].to_vec());

    // A fresh writer finds the head from the watermark, in few requests,
    // and appends after it.
    let counting = Arc::new(FaultyStore::new(place.client()));
    let fresh = Log::new(place.store_of(counting.clone()), "w2", policy());
    let head = fresh.head(&s, 0).await.unwrap();
    assert_eq!((head.next_seq, head.next_offset), (10, 30));
    assert!(
        counting.total_requests() <= 14,
        "{} requests",
        counting.total_requests()
    );
    assert_eq!(
        counting.counts.list.load(Ordering::Relaxed),
        0,
        "never lists"
    );
    let next = fresh
        .append(&s, 0, &segment(now.timestamp_millis(), "n", 2).0, "n1")
        .await;
    let next = next.unwrap();
    assert_eq!((next.seq, next.first_offset), (10, 30));

    // Again with the same `now`: nothing more to do.
    let again = run(&gc(place.store(), &config("7d")), now).await;
    assert!(again.streams[0].partitions.is_empty(), "{again:?}");

    // Later, everything has expired: the watermark is the head, and the
    // offsets go on from there.
    let later = now + TimeDelta::days(30);
    let report = run(&collector, later).await;
    let p = &report.streams[0].partitions[0];
    assert_eq!(p.to, (11, 32), "{report:?}");
    assert!(keys(&store, "log").await.is_empty());
    let writer3 = Log::new(place.store(), "w3", policy());
    assert_eq!(writer3.head(&s, 0).await.unwrap().next_offset, 32);
    let last = writer3
        .append(&s, 0, &segment(later.timestamp_millis(), "z", 1).0, "z1")
        .await
        .unwrap();
    assert_eq!((last.seq, last.first_offset), (11, 32));
    let read = Log::new(place.store(), "r2", policy())
        .read(&s, 0, 32, 10)
        .await
        .unwrap();
    assert_eq!(read.events.len(), 1);
    assert!(matches!(
        writer3.read(&s, 0, 31, 10).await,
        Err(LogError::Expired {
            first_offset: 32,
            ..
        })
    ));
}

/// Collectors with different clocks race on one partition while a reader
/// reads every offset over and over: the reader only ever gets events or
/// `Expired`, the watermark objects only rise, and at the end the watermark
/// is the latest clock's cut (a collector whose scan meets records another
/// deleted scans again from the new watermark), everything below it is
/// gone and everything at or above it is there.
async fn racing_collectors_and_a_reader(b: Backend) {
    let place = Arc::new(Place::new(b));
    let now = Utc::now();
    let writer = Log::new(place.store(), "w1", policy());
    let s = writer.stream("default", "clicks");
    let mut all = Vec::new();
    for i in 0..40i64 {
        // Record i's events are 40 - i hours old.
        let at = now.timestamp_millis() - (40 - i) * HOUR;
        all.extend(append(&writer, &s, at, &format!("r{i}"), 2).await);
    }
    let all = Arc::new(all);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (place, stop, all, s) = (place.clone(), stop.clone(), all.clone(), s.clone());
        tokio::spawn(async move {
            let log = Log::new(place.store(), "reader", policy());
            let (mut served, mut expired) = (0, 0);
            loop {
                let last_round = stop.load(Ordering::Relaxed);
                for offset in (0..80u64).step_by(3) {
                    match log.read(&s, 0, offset, 5).await {
                        Ok(batch) => {
                            for (i, e) in batch.events.iter().enumerate() {
                                let at = offset as usize + i;
                                assert_eq!(event_of(e), all[at], "offset {at}");
                            }
                            served += 1;
                        }
                        Err(LogError::Expired { .. }) => expired += 1,
                        Err(e) => panic!("offset {offset}: {e}"),
                    }
                }
                if last_round {
                    break;
                }
            }
            (served, expired)
        })
    };
    // Retention 1 day: `now + k hours` expires records 0..16 + k.
    let mut collectors = Vec::new();
    for k in [0i64, 6, 3, 12, 9, 1] {
        let place = place.clone();
        collectors.push(tokio::spawn(async move {
            let collector = gc(place.store(), &config("1d"));
            run(
                &collector,
                now + TimeDelta::hours(k) + TimeDelta::minutes(30),
            )
            .await
        }));
    }
    for c in collectors {
        c.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (served, expired) = reader.await.unwrap();
    assert!(
        served > 0 && expired > 0,
        "{served} served, {expired} expired"
    );

    let log = Log::new(place.store(), "check", policy());
    let w = log.refresh_watermark(&s, 0).await.unwrap();
    assert_eq!((w.first_seq, w.first_offset), (29, 58), "{w:?}");
    let store = place.store();
    for seq in 0..40 {
        let present = exists(&store, &s.record(0, seq)).await;
        assert_eq!(present, seq >= 29, "record {seq}");
    }
    assert_eq!(
        keys(&store, "data").await.len(),
        11,
        "one segment per retained record"
    );
    // The chain of watermark objects only rose.
    let marks = keys(&store, "low/0000").await;
    let mut previous = 0;
    for key in &marks {
        let body = store.inner.get(&Path::from(key.as_str())).await.unwrap();
        let mark: serde_json::Value = serde_json::from_slice(&body.bytes().await.unwrap()).unwrap();
        let first = mark["first_seq"].as_u64().unwrap();
        assert!(first > previous, "{marks:?}");
        assert_eq!(mark["from_seq"].as_u64().unwrap(), previous);
        previous = first;
    }
    assert_eq!(previous, 29);
}

/// A writer that learned the head long ago commits after a collector
/// deleted that seq: its record must not land below the watermark (nobody
/// would read it); it is committed at the real head instead.
async fn a_stale_writer_commits_at_the_head(b: Backend) {
    let place = Place::new(b);
    let now = Utc::now();
    let old = now.timestamp_millis() - 10 * 24 * HOUR;
    let stale = Log::new(place.store(), "stale", policy());
    let s = stale.stream("default", "clicks");
    append(&stale, &s, old, "first", 1).await;
    let other = Log::new(place.store(), "other", policy());
    for i in 0..4 {
        append(&other, &s, old + i, "old", 2).await;
    }
    append(&other, &s, now.timestamp_millis(), "young", 2).await;
    run(&gc(place.store(), &config("7d")), now).await;
    // `stale` still believes the head is seq 1, offset 1.
    let events = append(&stale, &s, now.timestamp_millis(), "late", 3).await;
    let store = place.store();
    assert!(
        !exists(&store, &s.record(0, 1)).await,
        "seq 1 stays deleted"
    );
    let head = Log::new(place.store(), "h", policy())
        .head(&s, 0)
        .await
        .unwrap();
    assert_eq!((head.next_seq, head.next_offset), (7, 14));
    let read = Log::new(place.store(), "r", policy())
        .read(&s, 0, 9, 10)
        .await
        .unwrap();
    let got: Vec<String> = read.events.iter().map(|e| event_of(e)).collect();
    assert_eq!(got[2..].to_vec(), events);
}

/// A segment whose commit failed is an orphan. gc leaves it until its hour
/// ended `lateness + orphan_grace` ago, then deletes it; committed segments
/// of the same hour stay. A segment written later than `lateness` after its
/// hour is kept whatever the log says.
async fn orphans_go_committed_segments_stay(b: Backend) {
    let place = Place::new(b);
    let now = Utc::now();
    let three_hours_ago = now.timestamp_millis() - 3 * HOUR;
    let faulty = Arc::new(FaultyStore::new(place.client()));
    let quick = RetryPolicy {
        deadline: Duration::from_millis(200),
        ..policy()
    };
    let failing = Log::new(place.store_of(faulty.clone()), "crashy", quick);
    let s = failing.stream("default", "clicks");
    faulty.inject("/log/", Fault::FailBefore, u32::MAX);
    for at in [three_hours_ago, now.timestamp_millis()] {
        let (seg, _) = segment(at, "orphan", 2);
        assert!(failing
            .append(&s, 0, &seg, &ulid::Ulid::new().to_string())
            .await
            .is_err());
    }
    let writer = Log::new(place.store(), "w", policy());
    let old = append(&writer, &s, three_hours_ago, "old", 2).await;
    let young = append(&writer, &s, now.timestamp_millis(), "young", 2).await;
    let store = place.store();
    assert_eq!(keys(&store, "data").await.len(), 4);

    // Defaults: lateness 6h, grace 1h. Nothing is due an hour from now.
    let collector = gc(place.store(), &config("forever"));
    let soon = run(&collector, now + TimeDelta::hours(1)).await;
    assert_eq!(soon.streams[0].hours_checked, 0);
    assert_eq!(keys(&store, "data").await.len(), 4);

    // The old hour is due at +5h10m; the current one is not.
    let report = run(&collector, now + TimeDelta::minutes(310)).await;
    assert_eq!(report.streams[0].orphans_deleted, 1, "{report:?}");
    assert_eq!(keys(&store, "data").await.len(), 3);
    // Later, the current hour too.
    let report = run(&collector, now + TimeDelta::hours(10)).await;
    assert_eq!(report.streams[0].orphans_deleted, 1, "{report:?}");
    let left = keys(&store, "data").await;
    assert_eq!(left.len(), 2, "{left:?}");
    let read = Log::new(place.store(), "r", policy())
        .read(&s, 0, 0, 10)
        .await
        .unwrap();
    let got: Vec<String> = read.events.iter().map(|e| event_of(e)).collect();
    assert_eq!(got, [old, young].concat());

    // A segment of events 5 h old written only now is late for a 1 h
    // lateness: kept, even as an orphan.
    let mut tight = config("forever");
    tight.gc.lateness = "1h".into();
    let (seg, _) = segment(now.timestamp_millis() - 5 * HOUR, "late", 1);
    assert!(failing.append(&s, 0, &seg, "late1").await.is_err());
    let fresh = Gc::new(Arc::new(Log::new(place.store(), "gc2", policy())), &tight);
    // A new cursor-less look: remove the cursor so every hour is checked.
    store
        .inner
        .delete(&Path::from("root/default/clicks/gc/orphans.json"))
        .await
        .unwrap();
    let report = run(&fresh, now + TimeDelta::hours(10)).await;
    // The late orphan, and the old hour's committed segment (also written
    // more than 1 h after its hour).
    assert_eq!(report.streams[0].late_kept, 2, "{report:?}");
    assert_eq!(report.streams[0].orphans_deleted, 0, "{report:?}");
    assert_eq!(keys(&store, "data").await.len(), 3);
}

macro_rules! backends {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn retention() {
                retention_keeps_the_young_and_expires_the_old($backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn racing_collectors() {
                racing_collectors_and_a_reader($backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn stale_writer() {
                a_stale_writer_commits_at_the_head($backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn orphans() {
                orphans_go_committed_segments_stay($backend).await;
            }
        }
    };
}

backends!(memory, Backend::Memory);
backends!(file, Backend::File);
backends!(s3, Backend::S3);
