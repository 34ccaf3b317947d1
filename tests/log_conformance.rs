//! One conformance suite for the log, run against memory, the file store and
//! moto S3: round trips, head discovery, orphans, concurrent writers, faults.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Backend, Place};
use futures::TryStreamExt;
use object_store::path::Path;
use sluice::faults::{Fault, FaultyStore};
use sluice::log::record::StreamPath;
use sluice::log::retry::RetryPolicy;
use sluice::log::segment::{ReceivedAt, Segment, SegmentBuilder};
use sluice::log::{Log, LogError};

/// Short backoffs keep fault tests quick; the deadline leaves room for a
/// slow fsync on a busy machine (an operation cut off by it fails the test).
fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(20),
        deadline: Duration::from_secs(2),
    }
}

fn segment(events: &[String]) -> Segment {
    let mut b = SegmentBuilder::default();
    let at = ReceivedAt::now();
    for e in events {
        b.push(at, e.as_bytes());
    }
    b.seal(1).unwrap().unwrap()
}

fn events(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!(r#"{{"tag":"{tag}","i":{i}, "pad" : [1, 2]}}"#))
        .collect()
}

/// The event bytes inside an envelope line.
fn event_of(line: &Bytes) -> String {
    let s = std::str::from_utf8(line).unwrap();
    let start = s.find(",\"event\":").unwrap() + ",\"event\":".len();
    s[start..s.len() - 1].to_string()
}

fn name() -> String {
    ulid::Ulid::new().to_string()
}

async fn count_objects(log: &Log, stream: &StreamPath, sub: &str) -> usize {
    let prefix = Path::from(format!("{}/{sub}", stream.base().as_ref()));
    log.store()
        .inner
        .list(Some(&prefix))
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .len()
}

async fn round_trip_is_byte_exact(b: Backend) {
    let place = Place::new(b);
    let log = Log::new(place.store(), "w1", RetryPolicy::default());
    let s = log.stream("default", "clicks");
    let (a, c) = (events("a", 3), events("c", 4));
    let first = log.append(&s, 0, &segment(&a), &name()).await.unwrap();
    let second = log.append(&s, 0, &segment(&c), &name()).await.unwrap();
    assert_eq!((first.first_offset, first.count, first.seq), (0, 3, 0));
    assert_eq!((second.first_offset, second.count, second.seq), (3, 4, 1));

    let all: Vec<String> = a.iter().chain(&c).cloned().collect();
    let read = log.read(&s, 0, 0, 100).await.unwrap();
    let got: Vec<String> = read.events.iter().map(event_of).collect();
    assert_eq!(got, all);
    assert_eq!(read.next_offset, 7);

    // From the middle of the first segment, across the boundary, bounded.
    let mid = log.read(&s, 0, 2, 3).await.unwrap();
    let got: Vec<String> = mid.events.iter().map(event_of).collect();
    assert_eq!(got, all[2..5].to_vec());
    assert_eq!((mid.first_offset, mid.next_offset), (2, 5));

    // At the head: nothing, and the next offset stays put.
    let end = log.read(&s, 0, 7, 10).await.unwrap();
    assert!(end.events.is_empty());
    assert_eq!(end.next_offset, 7);

    // The layout is DESIGN §2's.
    let key = s.record(0, 1);
    assert!(key
        .as_ref()
        .ends_with("root/default/clicks/log/0000/00000000000000000001.json"));
    let rec = log.record(&s, 0, 1).await.unwrap().unwrap();
    assert!(rec.segment.starts_with("data/dt="), "{}", rec.segment);
    assert!(rec.segment.ends_with(".ndjson.zst"));
    assert_eq!(
        (rec.first_offset, rec.count, rec.writer.as_str()),
        (3, 4, "w1")
    );
}

async fn head_found_in_log_requests(b: Backend, n: u64) {
    let place = Place::new(b);
    let writer = Log::new(place.store(), "w1", RetryPolicy::default());
    let s = writer.stream("t", "s");
    for i in 0..n {
        writer
            .append(&s, 0, &segment(&[format!("{{\"i\":{i}}}")]), &name())
            .await
            .unwrap();
    }
    // A fresh gateway: counts its requests.
    let counting = Arc::new(FaultyStore::new(place.client()));
    let restarted = Log::new(
        place.store_of(counting.clone()),
        "w2",
        RetryPolicy::default(),
    );
    let head = restarted.head(&s, 0).await.unwrap();
    assert_eq!((head.next_seq, head.next_offset), (n, n));
    let requests = counting.total_requests();
    let bound = 2 * (64 - n.leading_zeros() as u64) + 3;
    assert!(
        requests <= bound,
        "{requests} requests for {n} records (bound {bound})"
    );
    assert_eq!(
        counting.counts.list.load(Ordering::Relaxed),
        0,
        "never lists"
    );

    // It carries on from there without overwriting anything.
    let next = restarted
        .append(&s, 0, &segment(&events("x", 2)), &name())
        .await
        .unwrap();
    assert_eq!((next.seq, next.first_offset), (n, n));
}

async fn orphan_segments_are_invisible(b: Backend) {
    let place = Place::new(b);
    let faulty = Arc::new(FaultyStore::new(place.client()));
    let log = Log::new(place.store_of(faulty.clone()), "w1", fast_policy());
    let s = log.stream("t", "s");
    faulty.inject("/log/", Fault::FailBefore, u32::MAX);
    let err = log
        .append(&s, 0, &segment(&events("lost", 2)), &name())
        .await;
    assert!(
        matches!(
            err,
            Err(LogError::Unavailable {
                op: "put_record",
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(count_objects(&log, &s, "data").await, 1, "segment written");
    assert_eq!(count_objects(&log, &s, "log").await, 0, "nothing committed");

    let fresh = Log::new(place.store(), "w2", fast_policy());
    assert!(fresh.read(&s, 0, 0, 10).await.unwrap().events.is_empty());
    let ok = fresh
        .append(&s, 0, &segment(&events("kept", 1)), &name())
        .await
        .unwrap();
    assert_eq!((ok.seq, ok.first_offset), (0, 0));
    let read = fresh.read(&s, 0, 0, 10).await.unwrap();
    let got: Vec<String> = read.events.iter().map(event_of).collect();
    assert_eq!(got, events("kept", 1));
}

async fn failed_segment_put_commits_nothing(b: Backend) {
    let place = Place::new(b);
    let faulty = Arc::new(FaultyStore::new(place.client()));
    let log = Log::new(place.store_of(faulty.clone()), "w1", fast_policy());
    let s = log.stream("t", "s");
    faulty.inject("/data/", Fault::FailBefore, u32::MAX);
    let err = log.append(&s, 0, &segment(&events("a", 1)), &name()).await;
    assert!(
        matches!(
            err,
            Err(LogError::Unavailable {
                op: "put_segment",
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(count_objects(&log, &s, "").await, 0);
    assert_eq!(log.head(&s, 0).await.unwrap().next_seq, 0);
}

async fn ambiguous_record_put_never_duplicates(b: Backend) {
    let place = Place::new(b);
    let faulty = Arc::new(FaultyStore::new(place.client()));
    let log = Log::new(place.store_of(faulty.clone()), "w1", fast_policy());
    let s = log.stream("t", "s");
    // The record lands but the writer is told it failed, several times over:
    // the append's own retries find its record and succeed.
    faulty.inject("/log/", Fault::FailAfter, 3);
    let first = log
        .append(&s, 0, &segment(&events("a", 2)), &name())
        .await
        .unwrap();
    assert_eq!((first.seq, first.first_offset), (0, 0));

    // The record lands, then every retry fails until the deadline: the append
    // errors. The caller retries the same segment and gets that same commit.
    faulty.clear();
    faulty.inject("/log/", Fault::FailAfter, 1);
    faulty.inject("/log/", Fault::FailBefore, 1000);
    let seg = segment(&events("b", 1));
    let seg_name = name();
    let err = log.append(&s, 0, &seg, &seg_name).await;
    assert!(matches!(err, Err(LogError::Unavailable { .. })), "{err:?}");
    faulty.clear();
    let again = log.append(&s, 0, &seg, &seg_name).await.unwrap();
    assert_eq!((again.seq, again.first_offset), (1, 2));
    let third = log
        .append(&s, 0, &segment(&events("c", 1)), &name())
        .await
        .unwrap();
    assert_eq!((third.seq, third.first_offset), (2, 3));
    assert_eq!(
        count_objects(&log, &s, "log").await,
        3,
        "one record per segment"
    );
    let read = log.read(&s, 0, 0, 10).await.unwrap();
    assert_eq!(read.events.len(), 4);
}

/// A writer's very first commit on a partition (head not yet known) lands but
/// is reported failed until the deadline; the retry of that segment must find
/// its own record, not commit it again.
async fn ambiguous_first_commit_of_a_cold_writer(b: Backend) {
    let place = Place::new(b);
    let faulty = Arc::new(FaultyStore::new(place.client()));
    let log = Log::new(place.store_of(faulty.clone()), "w1", fast_policy());
    let s = log.stream("t", "s");
    faulty.inject("/log/", Fault::FailAfter, 1);
    faulty.inject("/log/", Fault::FailBefore, 1000);
    let seg = segment(&events("a", 2));
    let seg_name = name();
    assert!(log.append(&s, 0, &seg, &seg_name).await.is_err());
    faulty.clear();
    let again = log.append(&s, 0, &seg, &seg_name).await.unwrap();
    assert_eq!((again.seq, again.first_offset), (0, 0));
    assert_eq!(count_objects(&log, &s, "log").await, 1, "committed once");
}

/// Several writers (own ids, own store clients) append to one partition at once.
async fn concurrent_writers_keep_offsets_dense(b: Backend, writers: usize, appends: usize) {
    let place = Arc::new(Place::new(b));
    // Every writer learns the (empty) head before any commits: their first
    // appends all race for seq 0, whatever the scheduling.
    let barrier = Arc::new(tokio::sync::Barrier::new(writers));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (place, barrier) = (place.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let log = Log::new(place.store(), format!("w{w}"), RetryPolicy::default());
            let s = log.stream("t", "race");
            log.head(&s, 0).await.unwrap();
            barrier.wait().await;
            let mut results = Vec::new();
            for a in 0..appends {
                let evs = events(&format!("w{w}-a{a}"), 1 + (a % 3));
                let got = log.append(&s, 0, &segment(&evs), &name()).await.unwrap();
                results.push((got, evs));
            }
            results
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let total: u64 = all.iter().map(|(_, e)| e.len() as u64).sum();
    let conflicts: u32 = all.iter().map(|(a, _)| a.conflicts).sum();
    let reader = Log::new(place.store(), "reader", RetryPolicy::default());
    let s = reader.stream("t", "race");
    let read = reader.read(&s, 0, 0, usize::MAX).await.unwrap();
    assert_eq!(
        read.events.len() as u64,
        total,
        "dense: every offset below the head is an event"
    );
    let head = reader.head(&s, 0).await.unwrap();
    assert_eq!(
        head.next_seq as usize,
        writers * appends,
        "one record per append, no duplicate seq"
    );
    let mut seqs: Vec<u64> = all.iter().map(|(a, _)| a.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), writers * appends);
    for (appended, evs) in &all {
        let at = appended.first_offset as usize;
        let got: Vec<String> = read.events[at..at + evs.len()]
            .iter()
            .map(event_of)
            .collect();
        assert_eq!(
            &got, evs,
            "offsets returned to an append hold exactly its events"
        );
    }
    assert!(
        conflicts > 0,
        "the race was exercised: {conflicts} conflicts"
    );
}

macro_rules! conformance {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn round_trip() {
                round_trip_is_byte_exact($backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn head_of_empty_log() {
                head_found_in_log_requests($backend, 0).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn head_of_one_record() {
                head_found_in_log_requests($backend, 1).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn head_of_1000_records() {
                head_found_in_log_requests($backend, 1000).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn orphans() {
                orphan_segments_are_invisible($backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn segment_put_failure() {
                failed_segment_put_commits_nothing($backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ambiguous_record_put() {
                ambiguous_record_put_never_duplicates($backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ambiguous_first_commit() {
                ambiguous_first_commit_of_a_cold_writer($backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_writers() {
                concurrent_writers_keep_offsets_dense($backend, 4, 12).await;
            }
        }
    };
}

conformance!(memory, Backend::Memory);
conformance!(file, Backend::File);
conformance!(s3, Backend::S3);
