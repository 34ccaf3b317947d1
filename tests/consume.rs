//! Consumer groups against real stores (file, moto S3; memory where cheap):
//! consumed once, races between consumers of one group, a crash between
//! output and commit, and the `sluice consume` command.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::gateway::{event_of, test_config, TestGateway};
use common::{Backend, Place};
use serde_json::Value;
use sluice::consume::{
    consume, ConsumeError, ConsumeOptions, Consumer, Format, Output, Pending, Report,
};
use sluice::log::record::StreamPath;
use sluice::log::retry::RetryPolicy;
use sluice::log::segment::{ReceivedAt, SegmentBuilder};
use sluice::log::Log;
use sluice::store::Store;

const BACKENDS: [Backend; 3] = [Backend::Memory, Backend::File, Backend::S3];

fn policy() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(50),
        deadline: Duration::from_secs(5),
    }
}

async fn append(log: &Log, s: &StreamPath, partition: u32, tag: &str, n: usize) -> Vec<String> {
    let events: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"tag":"{tag}","i":{i}, "p" : {partition}}}"#))
        .collect();
    let mut b = SegmentBuilder::default();
    let at = ReceivedAt::now();
    for e in &events {
        b.push(at, e.as_bytes());
    }
    let segment = b.seal(1).unwrap().unwrap();
    let name = ulid::Ulid::new().to_string();
    log.append(s, partition, &segment, &name).await.unwrap();
    events
}

fn consumer(store: Store, id: &str) -> Consumer {
    Consumer::new(store, "default", "clicks", "g1", id, policy()).unwrap()
}

fn events_of(pending: &Pending) -> Vec<String> {
    let mut out = Vec::new();
    pending.write_ndjson(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    text.lines().map(|l| event_of(l.as_bytes())).collect()
}

/// Read, write (to memory), commit: one whole run of a consumer.
async fn run(c: &Consumer, partitions: u32) -> (Vec<String>, Report) {
    let pending = c.read(partitions, None).await.unwrap();
    let got = events_of(&pending);
    let report = c.commit(&pending).await.unwrap();
    (got, report)
}

async fn consumed_once_then_only_new(b: Backend) {
    let place = Place::new(b);
    let log = Log::new(place.store(), "w1", policy());
    let s = log.stream("default", "clicks");
    let mut want = append(&log, &s, 0, "a", 3).await;
    want.extend(append(&log, &s, 2, "b", 2).await);

    let c = consumer(place.store(), "c1");
    assert_eq!(
        c.partitions(1).await.unwrap(),
        3,
        "{b:?}: highest partition found"
    );
    let (got, report) = run(&c, 4).await;
    assert_eq!(got, want, "{b:?}");
    assert_eq!(report.events(), 5);
    let p0 = &report.partitions[0];
    assert_eq!(
        (p0.from_offset, p0.next_offset, p0.checkpoint_seq),
        (0, 3, Some(0))
    );
    assert_eq!(
        report.partitions[1].checkpoint_seq, None,
        "no events, no checkpoint"
    );

    // A second run right after: nothing, and no checkpoint created.
    let again = consumer(place.store(), "c2");
    let (got, report) = run(&again, 4).await;
    assert!(got.is_empty(), "{b:?}: {got:?}");
    assert!(report.partitions.iter().all(|p| p.checkpoint_seq.is_none()));

    // New events: exactly those, from a fresh client.
    let mut new = append(&log, &s, 0, "c", 2).await;
    new.extend(append(&log, &s, 1, "d", 1).await);
    let later = consumer(place.store_of(place.client()), "c3");
    let (got, report) = run(&later, 4).await;
    assert_eq!(got, new, "{b:?}");
    let p0 = &report.partitions[0];
    assert_eq!(
        (p0.from_offset, p0.next_offset, p0.checkpoint_seq),
        (3, 5, Some(1))
    );

    // The stored checkpoint has the documented shape.
    let cp = later.checkpoints().get(0, 1).await.unwrap().unwrap();
    assert_eq!((cp.offset, cp.seq, cp.consumer.as_str()), (5, 1, "c3"));
    assert!(cp.committed_at.ends_with('Z') && cp.committed_at.contains('T'));
}

#[tokio::test]
async fn consumed_once_then_only_new_events() {
    for b in BACKENDS {
        consumed_once_then_only_new(b).await;
    }
}

/// Both consumers read the same checkpoint, then both commit: the first
/// commit wins, the second gets the conflict and a re-read sees the winner's.
async fn deterministic_race(b: Backend) {
    let place = Place::new(b);
    let log = Log::new(place.store(), "w1", policy());
    let s = log.stream("default", "clicks");
    let all = append(&log, &s, 0, "a", 5).await;

    let c1 = consumer(place.store_of(place.client()), "c1");
    let c2 = consumer(place.store_of(place.client()), "c2");
    let p1 = c1.read(1, Some(2)).await.unwrap();
    let p2 = c2.read(1, Some(3)).await.unwrap();
    assert_eq!(events_of(&p1), all[..2]);
    assert_eq!(events_of(&p2), all[..3]);

    let won = c2.commit(&p2).await.unwrap();
    assert_eq!(won.partitions[0].checkpoint_seq, Some(0));
    match c1.commit(&p1).await {
        Err(ConsumeError::Conflict(c)) => {
            assert_eq!(
                (c.group.as_str(), c.partition, c.seq),
                ("g1", 0, 0),
                "{b:?}"
            );
        }
        other => panic!("{b:?}: expected a conflict, got {other:?}"),
    }
    let pos = c1.checkpoints().position(0).await.unwrap();
    assert_eq!(
        (pos.next_seq, pos.offset),
        (1, 3),
        "{b:?}: the winner's offset"
    );
    let cp = c1.checkpoints().get(0, 0).await.unwrap().unwrap();
    assert_eq!(cp.consumer, "c2");

    // The loser re-reads from the new checkpoint: exactly the rest.
    let (got, _) = run(&c1, 1).await;
    assert_eq!(got, all[3..]);
}

#[tokio::test]
async fn two_consumers_of_one_group_exactly_one_advances() {
    for b in BACKENDS {
        deterministic_race(b).await;
    }
}

/// Real concurrency: two tasks on their own clients read, meet at a barrier,
/// then commit at once. Each round has exactly one winner.
async fn concurrent_race(b: Backend) {
    let place = Place::new(b);
    let log = Log::new(place.store(), "w1", policy());
    let s = log.stream("default", "clicks");
    let mut expected_offset = 0;
    for round in 0..5u64 {
        append(&log, &s, 0, &format!("r{round}"), 2).await;
        expected_offset += 2;
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let mut tasks = tokio::task::JoinSet::new();
        for id in ["x", "y"] {
            let c = consumer(place.store_of(place.client()), id);
            let barrier = barrier.clone();
            tasks.spawn(async move {
                let pending = c.read(1, None).await.unwrap();
                assert_eq!(pending.events(), 2);
                barrier.wait().await;
                c.commit(&pending).await.map(|r| (id, r))
            });
        }
        let (mut winners, mut conflicts) = (Vec::new(), 0);
        while let Some(done) = tasks.join_next().await {
            match done.unwrap() {
                Ok((id, report)) => {
                    assert_eq!(report.partitions[0].checkpoint_seq, Some(round));
                    winners.push(id);
                }
                Err(ConsumeError::Conflict(c)) => {
                    assert_eq!((c.partition, c.seq), (0, round));
                    conflicts += 1;
                }
                Err(e) => panic!("{b:?}: {e}"),
            }
        }
        assert_eq!((winners.len(), conflicts), (1, 1), "{b:?} round {round}");
        let checker = consumer(place.store(), "check");
        let cp = checker.checkpoints().get(0, round).await.unwrap().unwrap();
        assert_eq!(cp.consumer, winners[0], "{b:?}: the winner's checkpoint");
        assert_eq!(cp.offset, expected_offset);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_consumers_race_with_one_winner_per_round() {
    for b in [Backend::File, Backend::S3] {
        concurrent_race(b).await;
    }
}

/// Output written, process gone before the commit: the next run delivers
/// the same events again (at least once), and nothing after them is skipped.
async fn crash_before_commit_redelivers(b: Backend) {
    let place = Place::new(b);
    let log = Log::new(place.store(), "w1", policy());
    let s = log.stream("default", "clicks");
    let first = append(&log, &s, 0, "a", 4).await;

    let crashed = consumer(place.store_of(place.client()), "crashed");
    let pending = crashed.read(2, None).await.unwrap();
    assert_eq!(events_of(&pending), first);
    drop(pending);
    drop(crashed);

    let more = append(&log, &s, 0, "b", 2).await;
    let next = consumer(place.store_of(place.client()), "next");
    let (got, report) = run(&next, 2).await;
    let want: Vec<String> = first.iter().chain(&more).cloned().collect();
    assert_eq!(got, want, "{b:?}: re-delivered, none skipped");
    assert_eq!(report.partitions[0].next_offset, 6);
}

#[tokio::test]
async fn crash_between_output_and_commit_redelivers() {
    for b in BACKENDS {
        crash_before_commit_redelivers(b).await;
    }
}

/// A checkpoint PUT that landed but reported an error is retried by the same
/// consumer: finding its own checkpoint is success, not a conflict.
#[tokio::test]
async fn own_checkpoint_found_again_is_not_a_conflict() {
    let place = Place::new(Backend::File);
    let c = consumer(place.store(), "me");
    let cps = c.checkpoints();
    let pos = cps.position(0).await.unwrap();
    let at = "2026-11-25T00:00:00.000Z".to_string();
    cps.advance(pos, 7, "me", at.clone()).await.unwrap();
    let again = cps.advance(pos, 7, "me", at.clone()).await.unwrap();
    assert_eq!((again.seq, again.offset), (0, 7));
    let other = cps.advance(pos, 7, "someone-else", at).await;
    assert!(matches!(other, Err(ConsumeError::Conflict(_))));
}

/// S3's 409 ConditionalRequestConflict on a checkpoint create, with
/// nothing at the key, is another create still in flight (perhaps this
/// consumer's own earlier attempt): not a lost race, so not reported as
/// one. Once the other create settles, the same advance succeeds.
#[tokio::test]
async fn a_409_with_nothing_there_is_in_doubt_not_a_conflict() {
    let place = Place::new(Backend::Memory);
    let faulty = Arc::new(sluice::faults::FaultyStore::new(place.client()));
    faulty.inject("consumers/", sluice::faults::Fault::Conflict, 1);
    let c = consumer(place.store_of(faulty.clone()), "me");
    let cps = c.checkpoints();
    let pos = cps.position(0).await.unwrap();
    let at = "2026-11-25T00:00:00.000Z".to_string();
    let err = cps.advance(pos, 7, "me", at.clone()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConsumeError::CheckpointInDoubt {
                partition: 0,
                seq: 0,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("whether it lands is unknown")
            && !text.contains("advanced by another consumer"),
        "{text}"
    );
    let done = cps.advance(pos, 7, "me", at).await.unwrap();
    assert_eq!((done.seq, done.offset), (0, 7));
}

fn opts(dir: &std::path::Path, output: Output) -> ConsumeOptions {
    ConsumeOptions {
        max_bytes: u64::MAX,
        store: format!("file://{}", dir.display()),
        tenant: "default".into(),
        stream: "clicks".into(),
        group: "g1".into(),
        output,
        format: Format::Ndjson,
        max_events: None,
        partitions: 4,
        skip_expired: false,
    }
}

/// Events posted through a gateway, consumed with the library call into a
/// directory (a new fsynced file per run with events) and capped by max_events.
#[tokio::test]
async fn consume_posted_events_into_a_directory() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("file://{}", data.path().display())).unwrap();
    let gw = TestGateway::start(test_config(), store).await;
    let client = reqwest::Client::new();
    let resp = client
        .post(gw.url("/v1/streams/clicks/events"))
        .header("content-type", "application/json")
        .body(r#"[{"n":1},{"n":2},{"n":3}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    gw.stop().await;

    let mut o = opts(data.path(), Output::Dir(out.path().to_path_buf()));
    o.max_events = Some(2);
    let mut stdout = Vec::new();
    let first = consume(&o, &mut stdout).await.unwrap();
    assert!(stdout.is_empty());
    assert_eq!(first.events(), 2);
    let file = first.file.clone().unwrap();
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("clicks-g1-") && name.ends_with(".ndjson"),
        "{name}"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let got: Vec<String> = text.lines().map(|l| event_of(l.as_bytes())).collect();
    assert_eq!(got, [r#"{"n":1}"#, r#"{"n":2}"#]);
    assert!(text.lines().all(|l| l.starts_with(r#"{"received_at":""#)));

    let second = consume(&o, &mut stdout).await.unwrap();
    let text = std::fs::read_to_string(second.file.unwrap()).unwrap();
    assert_eq!(
        text.lines()
            .map(|l| event_of(l.as_bytes()))
            .collect::<Vec<_>>(),
        [r#"{"n":3}"#]
    );

    let third = consume(&o, &mut stdout).await.unwrap();
    assert_eq!((third.events(), third.file), (0, None));
    let files = std::fs::read_dir(out.path()).unwrap().count();
    assert_eq!(files, 2, "no temporary files left, no empty file");

    o.format = Format::Ndjson;
    o.group = "a/b".into();
    let bad = consume(&o, &mut stdout).await;
    assert!(matches!(
        bad,
        Err(ConsumeError::BadName { what: "group", .. })
    ));
}

/// `--format parquet`: one Parquet file per run that DuckDB reads back with
/// each event's fields, partition and offset; the checkpoint moves as for NDJSON.
#[tokio::test]
async fn consume_writes_parquet_that_duckdb_reads() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("file://{}", data.path().display())).unwrap();
    let gw = TestGateway::start(test_config(), store).await;
    let body = r#"[{"n":1,"s":"a"},{"n":2,"s":"b","o":{"x": [1]}},{"n":3,"s":null}]"#;
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/streams/clicks/events"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    gw.stop().await;

    let mut o = opts(data.path(), Output::Dir(out.path().to_path_buf()));
    o.format = Format::Parquet;
    let report = consume(&o, &mut Vec::new()).await.unwrap();
    assert_eq!(report.events(), 3);
    let file = report.file.unwrap();
    assert!(file.to_str().unwrap().ends_with(".parquet"), "{file:?}");
    let rows = common::duckdb::read_parquet(&file);
    let mut got: Vec<(i64, Value, Value)> = rows
        .iter()
        .map(|r| (r["n"].as_i64().unwrap(), r["s"].clone(), r["o"].clone()))
        .collect();
    got.sort_by_key(|r| r.0);
    assert_eq!(
        got,
        [
            (1, Value::from("a"), Value::Null),
            (2, Value::from("b"), Value::from(r#"{"x": [1]}"#)),
            (3, Value::Null, Value::Null),
        ]
    );
    let again = consume(&o, &mut Vec::new()).await.unwrap();
    assert_eq!(
        (again.events(), again.file),
        (0, None),
        "the checkpoint moved"
    );
}

fn sluice(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("consume")
        .args(args)
        .arg("--store")
        .arg(format!("file://{}", dir.display()))
        .env_remove("SLUICE_STORE")
        .output()
        .unwrap()
}

#[tokio::test]
async fn cli_consume_prints_ndjson_once() {
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("file://{}", data.path().display())).unwrap();
    let log = Log::new(store, "w1", policy());
    let s = log.stream("default", "clicks");
    let mut want = append(&log, &s, 0, "a", 2).await;
    want.extend(append(&log, &s, 1, "b", 1).await);

    let args = ["--group", "g1", "--stream", "clicks"];
    let first = sluice(data.path(), &args);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8(first.stdout).unwrap();
    let got: Vec<String> = stdout.lines().map(|l| event_of(l.as_bytes())).collect();
    assert_eq!(got, want);
    assert!(stderr.contains("3 events"), "{stderr}");

    let second = sluice(data.path(), &args);
    assert_eq!(second.status.code(), Some(0));
    assert!(second.stdout.is_empty(), "{:?}", Bytes::from(second.stdout));

    let csv = sluice(
        data.path(),
        &["--group", "g1", "--stream", "clicks", "--format", "csv"],
    );
    assert_eq!(csv.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&csv.stderr);
    assert!(stderr.contains("use ndjson or parquet"), "{stderr}");
}

/// A checkpoint create whose outcome is unknown, on the command line: exit
/// 1 and the documented message, not the conflict's exit 4.
///
/// Staged without timing: a directory at the key of the checkpoint the CLI
/// will create is invisible to the file store's HEAD and GET (both answer
/// "not found") but makes the create-only PUT fail with `AlreadyExists`:
/// what S3's 409 ConditionalRequestConflict looks like while another create
/// of the key is in flight. Nobody has won, so it is no lost race.
#[tokio::test]
async fn cli_checkpoint_in_doubt_exits_1() {
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("file://{}", data.path().display())).unwrap();
    let log = Log::new(store.clone(), "w1", policy());
    let s = log.stream("default", "clicks");
    let want = append(&log, &s, 0, "a", 2).await;
    let c = consumer(store, "probe");
    let key = c.checkpoints().key(0, 0);
    std::fs::create_dir_all(data.path().join(key.as_ref())).unwrap();

    let out = sluice(data.path(), &["--group", "g1", "--stream", "clicks"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "partition 0: checkpoint not confirmed: group g1 partition 0: checkpoint seq 0 is in doubt"
        ) && stderr.contains("whether it lands is unknown"),
        "{stderr}"
    );
    assert!(!stderr.contains("advanced by another consumer"), "{stderr}");
    // The output was written (at least once) and the checkpoint did not move.
    let stdout = String::from_utf8(out.stdout).unwrap();
    let got: Vec<String> = stdout.lines().map(|l| event_of(l.as_bytes())).collect();
    assert_eq!(got, want);
    let pos = c.checkpoints().position(0).await.unwrap();
    assert_eq!((pos.next_seq, pos.offset), (0, 0));
}

/// A small budget is shared: a busy partition 0 does not starve partition 3,
/// and what a quiet partition leaves goes to the busy one.
#[tokio::test]
async fn max_events_is_shared_across_partitions() {
    let store = common::gateway::memory();
    let log = Log::new(store.clone(), "w", policy());
    let s = log.stream("default", "clicks");
    let busy = append(&log, &s, 0, "busy", 10).await;
    let quiet = append(&log, &s, 3, "quiet", 1).await;
    let c = consumer(store, "c1");
    let pending = c.read(4, Some(4)).await.unwrap();
    let got = events_of(&pending);
    assert_eq!(got.len(), 4);
    assert!(got.contains(&quiet[0]), "partition 3 was starved: {got:?}");
    assert_eq!(got.iter().filter(|e| busy.contains(e)).count(), 3);
}

/// A checkpoint past the log's head (the log was reset under the group) is
/// an error naming it, never a silent skip.
#[tokio::test]
async fn a_checkpoint_past_the_head_is_refused() {
    use object_store::ObjectStoreExt;
    let store = common::gateway::memory();
    let log = Log::new(store.clone(), "w", policy());
    let s = log.stream("default", "clicks");
    append(&log, &s, 0, "a", 2).await;
    let c = consumer(store.clone(), "c1");
    let pending = c.read(1, None).await.unwrap();
    c.commit(&pending).await.unwrap();
    // The log is reset: a fresh store holding only the group's checkpoint.
    let fresh = common::gateway::memory();
    let cps = "default/clicks/consumers/g1/0000/00000000000000000000.json";
    let body = store
        .inner
        .get(&object_store::path::Path::from(cps))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    fresh
        .inner
        .put(&object_store::path::Path::from(cps), body.into())
        .await
        .unwrap();
    let again = consumer(fresh, "c2");
    match again.read(1, None).await {
        Err(ConsumeError::AheadOfLog {
            partition: 0,
            offset: 2,
            head: 0,
        }) => {}
        other => panic!("expected AheadOfLog, got {:?}", other.map(|p| p.events())),
    }
}

/// A byte budget bounds a run whatever the event sizes; at least one event
/// still comes through, and the rest comes next run, none skipped.
#[tokio::test]
async fn max_bytes_bounds_a_run() {
    let store = common::gateway::memory();
    let log = Log::new(store.clone(), "w", policy());
    let s = log.stream("default", "clicks");
    let all = append(&log, &s, 0, "big", 10).await;
    let c = consumer(store.clone(), "c1").with_max_bytes(1);
    let mut got = Vec::new();
    for _ in 0..10 {
        let pending = c.read(1, None).await.unwrap();
        let batch = events_of(&pending);
        assert_eq!(batch.len(), 1, "one event per run under a tiny budget");
        got.extend(batch);
        c.commit(&pending).await.unwrap();
    }
    assert_eq!(got, all);
    assert!(events_of(&c.read(1, None).await.unwrap()).is_empty());
}
