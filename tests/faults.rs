//! Store faults and crash points, end to end over real sockets.
//!
//! Store faults: S3's 500 and 503, requests that never answer, torn
//! connections, on segment PUTs, commit-record PUTs and the HEADs a commit
//! makes ([`FaultyStore`] over the memory store and a moto S3 bucket). A
//! durable POST gets 200 only for events in the log at the acked offsets,
//! else 503 `store-unavailable`; once the fault clears the same gateway
//! ingests again, and the log is dense with every event at most once.
//!
//! Crash points: a request is parked at a named point (`Fault::Hold`
//! before it, `Fault::HoldAfter` after it landed), the process holding it is
//! killed ([`Process::kill`]: no drain, no flush) and a fresh gateway,
//! consumer or collector on the same bucket must find the invariants whole:
//! acked events once at their offsets, dense offsets, no record naming a
//! missing segment, a checkpoint never past what was delivered, and every
//! offset either readable or `410 expired`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::gateway::{event_of, one_partition, Process, TestGateway};
use common::{Backend, Place};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::Value;
use sluice::config::Config;
use sluice::consume::Consumer;
use sluice::faults::{Fault, FaultyStore, Op};
use sluice::gc::{Gc, Scope};
use sluice::log::record::StreamPath;
use sluice::log::retry::RetryPolicy;
use sluice::log::segment::{ReceivedAt, SegmentBuilder};
use sluice::log::{Log, LogError};
use sluice::store::{Store, StoreKind};

#[path = "common/proxy.rs"]
mod proxy;
use proxy::{Cut, Proxy};

const STREAM: &str = "faults";
const SEGMENT: &str = "/data/";
const RECORD: &str = "/log/";
const CHECKPOINT: &str = "/consumers/";
const WAIT: Duration = Duration::from_secs(20);

fn policy() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(50),
        deadline: Duration::from_secs(5),
    }
}

/// What the clients were told, event by event.
#[derive(Debug, Default)]
struct Ledger {
    /// 200: (partition, offset) → event.
    acked: BTreeMap<(u32, u64), String>,
    /// 202: must be in the log once (no crash) or at most once (crash).
    accepted: BTreeSet<String>,
    /// 503 or a cut connection: at most once.
    maybe: BTreeSet<String>,
}

/// How one durable POST ended.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Ok,
    Unavailable,
    Cut,
}

fn event(tag: &str) -> String {
    format!(r#"{{"id":"{tag}"}}"#)
}

async fn post_durable(
    client: &reqwest::Client,
    gw: &TestGateway,
    tag: &str,
    l: &mut Ledger,
) -> Answer {
    let e = event(tag);
    let answer = send(client, gw, &e, false).await;
    match &answer {
        Ok((200, json)) => {
            let p = json["partition"].as_u64().unwrap() as u32;
            let o = json["first_offset"].as_u64().unwrap();
            l.acked.insert((p, o), e);
            Answer::Ok
        }
        Ok((503, json)) => {
            assert_eq!(
                json["type"], "urn:sluice:problem:store-unavailable",
                "{json}"
            );
            l.maybe.insert(e);
            Answer::Unavailable
        }
        Ok((status, json)) => panic!("durable POST answered {status}: {json}"),
        Err(_) => {
            l.maybe.insert(e);
            Answer::Cut
        }
    }
}

async fn post_async(client: &reqwest::Client, gw: &TestGateway, tag: &str, l: &mut Ledger) {
    let e = event(tag);
    let (status, json) = send(client, gw, &e, true).await.unwrap();
    assert_eq!(status, 202, "{json}");
    l.accepted.insert(e);
}

/// POST one event; a 503 must be problem+json with `Retry-After`.
async fn send(
    client: &reqwest::Client,
    gw: &TestGateway,
    body: &str,
    respond_async: bool,
) -> Result<(u16, Value), reqwest::Error> {
    let mut req = client
        .post(gw.url(&format!("/v1/streams/{STREAM}/events")))
        .timeout(WAIT)
        .body(body.to_string());
    if respond_async {
        req = req.header("prefer", "respond-async");
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    if status == 503 {
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert_eq!(ct, "application/problem+json");
        assert!(resp.headers().contains_key("retry-after"));
    }
    let json = serde_json::from_slice(&resp.bytes().await?).unwrap_or(Value::Null);
    Ok((status, json))
}

/// Every committed event of partition 0, by offset, after checking the log
/// itself: seqs dense from 0, each record starting where the last ended,
/// each naming a segment that exists.
async fn audit(store: &Store) -> Vec<String> {
    let log = Log::new(store.clone(), "auditor", policy());
    let s = log.stream("default", STREAM);
    let mut next_offset = 0;
    let mut seq = 0;
    while let Some(r) = log.record(&s, 0, seq).await.unwrap() {
        assert_eq!(
            r.first_offset, next_offset,
            "record {seq} leaves a gap or overlap"
        );
        let segment = s.segment(&r.segment);
        assert!(
            store.inner.head(&segment).await.is_ok(),
            "record {seq} names missing {segment}"
        );
        next_offset = r.next_offset();
        seq += 1;
    }
    let events = log.read(&s, 0, 0, usize::MAX).await.unwrap();
    assert_eq!(events.first_offset, 0);
    assert_eq!(events.next_offset, next_offset, "the read ends at the head");
    events.events.iter().map(|e| event_of(e)).collect()
}

/// The ledger against the log: acked events at their offsets, every event
/// at most once, nothing the clients never sent; with `all_accepted`, every
/// 202 is in.
fn check(log: &[String], l: &Ledger, all_accepted: bool) {
    for ((p, o), e) in &l.acked {
        assert_eq!(*p, 0);
        assert_eq!(
            log.get(*o as usize),
            Some(e),
            "acked {e} is not at offset {o}"
        );
    }
    let mut seen = BTreeSet::new();
    for e in log {
        assert!(seen.insert(e), "{e} is in the log twice");
        let known =
            l.acked.values().any(|a| a == e) || l.accepted.contains(e) || l.maybe.contains(e);
        assert!(known, "{e} was never sent");
    }
    if all_accepted {
        for e in &l.accepted {
            assert!(seen.contains(e), "async-acked {e} was lost");
        }
    }
}

/// Write `n` acked events through a plain gateway (the log has a past).
async fn seed(store: Store, n: usize, l: &mut Ledger) {
    let gw = TestGateway::start(one_partition(), store).await;
    let client = reqwest::Client::new();
    for i in 0..n {
        assert_eq!(
            post_durable(&client, &gw, &format!("seed-{i}"), l).await,
            Answer::Ok
        );
    }
    gw.stop().await;
}

// ---- store faults ----------------------------------------------------------

/// A fault, where it strikes, and for how many requests (`u32::MAX`: an
/// outage until cleared, durable requests must get 503; fewer: the retries
/// must ride it out, 200).
struct Case {
    op: Op,
    pattern: &'static str,
    fault: Fault,
    times: u32,
}

const OUTAGE: u32 = u32::MAX;

/// How a test starts a fault, stops it, and tells whether it struck.
trait Injector {
    fn start(&self);
    fn stop(&self);
    fn struck(&self) -> bool;
}

impl Injector for (Arc<FaultyStore>, &Case) {
    fn start(&self) {
        let (faulty, case) = self;
        faulty.inject_on(case.op, case.pattern, case.fault, case.times);
    }
    fn stop(&self) {
        self.0.clear();
    }
    fn struck(&self) -> bool {
        self.0.injected().values().sum::<u64>() > 0
    }
}

/// Seed the log; start a fresh gateway; inject `case` for good; an async
/// POST gets 202 and a durable one 503 (or 200 where the protocol rides it
/// out); clear it; the same gateway answers 200 again within a bounded
/// number of tries; the log is dense, acked events sit at their offsets, the
/// 202 is in, nothing is there twice.
async fn store_fault(backend: Backend, case: Case) {
    let place = Place::new(backend);
    let faulty = Arc::new(FaultyStore::new(place.client()));
    let store = place.store_of(faulty.clone());
    let outage = case.times == OUTAGE;
    fault_round(place.store(), store, &(faulty, &case), outage).await;
}

/// The round behind every store-fault test: `seed_store` writes past the
/// injector, `store` is the gateway's view through it.
async fn fault_round(seed_store: Store, store: Store, fault: &dyn Injector, outage: bool) {
    let mut l = Ledger::default();
    seed(seed_store.clone(), 2, &mut l).await;
    let mut config = one_partition();
    // An outage answers 503 after this; a passing fault must not come near it.
    config.batch.ack_timeout_ms = if outage { 1_000 } else { 5_000 };
    let gw = TestGateway::start(config, store).await;
    let client = reqwest::Client::new();

    fault.start();
    post_async(&client, &gw, "during-async", &mut l).await;
    let during = post_durable(&client, &gw, "during", &mut l).await;
    let expected = if outage {
        Answer::Unavailable
    } else {
        Answer::Ok
    };
    assert_eq!(during, expected, "durable POST while the fault strikes");
    assert!(fault.struck(), "the fault never struck");
    fault.stop();

    let mut resumed = false;
    for i in 0..20 {
        if post_durable(&client, &gw, &format!("after-{i}"), &mut l).await == Answer::Ok {
            resumed = true;
            break;
        }
    }
    assert!(resumed, "ingest did not resume after the fault cleared");
    // One committer per stream commits in order: everything sent before the
    // last 200 is in the log now, the 503'd events included.
    let log = audit(&seed_store).await;
    check(&log, &l, true);
    for e in &l.maybe {
        assert!(
            log.contains(e),
            "{e} (503) was dropped although the gateway kept running"
        );
    }
    gw.stop().await;
}

macro_rules! store_fault_tests {
    ($($name:ident: $backend:expr, $op:expr, $pattern:expr, $fault:expr, $times:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            store_fault($backend, Case { op: $op, pattern: $pattern, fault: $fault, times: $times }).await;
        }
    )*};
}

store_fault_tests! {
    segment_put_500: Backend::Memory, Op::Put, SEGMENT, Fault::InternalError, OUTAGE;
    segment_put_503: Backend::Memory, Op::Put, SEGMENT, Fault::SlowDown, OUTAGE;
    segment_put_timeout: Backend::Memory, Op::Put, SEGMENT, Fault::Hang, OUTAGE;
    segment_put_torn: Backend::Memory, Op::Put, SEGMENT, Fault::Torn, OUTAGE;
    segment_put_slow: Backend::Memory, Op::Put, SEGMENT, Fault::Delay(Duration::from_millis(400)), OUTAGE;
    segment_put_503_twice: Backend::Memory, Op::Put, SEGMENT, Fault::SlowDown, 2;
    commit_500: Backend::Memory, Op::Put, RECORD, Fault::InternalError, OUTAGE;
    commit_503: Backend::Memory, Op::Put, RECORD, Fault::SlowDown, OUTAGE;
    commit_timeout: Backend::Memory, Op::Put, RECORD, Fault::Hang, OUTAGE;
    commit_torn: Backend::Memory, Op::Put, RECORD, Fault::Torn, OUTAGE;
    // The record landed, its answer was lost: the retry's put-if-absent
    // finds it, the commit is done, once.
    commit_torn_once: Backend::Memory, Op::Put, RECORD, Fault::Torn, 1;
    commit_timeout_once: Backend::Memory, Op::Put, RECORD, Fault::Hang, 1;
    head_discovery_503: Backend::Memory, Op::Head, RECORD, Fault::SlowDown, OUTAGE;
    head_record_read_torn: Backend::Memory, Op::Get, RECORD, Fault::Torn, OUTAGE;
    watermark_check_timeout: Backend::Memory, Op::Head, "/low/", Fault::Hang, OUTAGE;
    s3_commit_500: Backend::S3, Op::Put, RECORD, Fault::InternalError, OUTAGE;
    s3_commit_503: Backend::S3, Op::Put, RECORD, Fault::SlowDown, OUTAGE;
    s3_commit_timeout: Backend::S3, Op::Put, RECORD, Fault::Hang, OUTAGE;
    s3_commit_torn: Backend::S3, Op::Put, RECORD, Fault::Torn, OUTAGE;
    s3_commit_torn_once: Backend::S3, Op::Put, RECORD, Fault::Torn, 1;
    s3_segment_put_torn: Backend::S3, Op::Put, SEGMENT, Fault::Torn, OUTAGE;
}

// ---- torn connections on the real S3 protocol ----------------------------

impl Injector for (Proxy, &'static str, &'static str, Cut, u32) {
    fn start(&self) {
        let (proxy, method, pattern, cut, times) = self;
        proxy.cut(method, pattern, *cut, *times);
    }
    fn stop(&self) {
        self.0.clear();
    }
    fn struck(&self) -> bool {
        self.0.cuts() > 0
    }
}

/// The gateway reaches moto through a [`Proxy`] that cuts the connections
/// of the next `times` requests matching `method` and `pattern` at `cut`.
async fn torn_connection(method: &'static str, pattern: &'static str, cut: Cut, times: u32) {
    let bucket = common::new_bucket();
    let proxy = Proxy::start(&common::moto().endpoint).await;
    let direct = Store::from_parts(common::s3_client(&bucket), "root", StoreKind::S3);
    let through = Store::from_parts(proxy.s3_client(&bucket), "root", StoreKind::S3);
    let outage = times == OUTAGE;
    fault_round(
        direct,
        through,
        &(proxy, method, pattern, cut, times),
        outage,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_proxy_cut_mid_segment_upload() {
    torn_connection("PUT", SEGMENT, Cut::MidRequest, OUTAGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_proxy_cut_mid_commit_upload() {
    torn_connection("PUT", RECORD, Cut::MidRequest, OUTAGE).await;
}

/// Every commit-record PUT lands and its answer (even the retry's 412) is
/// lost: an outage to the gateway, though records land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_proxy_cut_every_commit_answer() {
    torn_connection("PUT", RECORD, Cut::BeforeResponse, OUTAGE).await;
}

/// One commit-record PUT lands and loses its answer: the retry's
/// put-if-absent gets 412, reads the record, finds its own segment: 200,
/// and the events are in the log once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_proxy_cut_one_commit_answer() {
    torn_connection("PUT", RECORD, Cut::BeforeResponse, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_proxy_cut_one_commit_answer_halfway() {
    torn_connection("PUT", RECORD, Cut::MidResponse, 1).await;
}

/// Every request to the bucket is cut (moto unreachable), then it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_proxy_bucket_unreachable_then_back() {
    torn_connection("", "", Cut::MidRequest, OUTAGE).await;
}

// ---- crash points in the write path ----------------------------------------

/// Segment keys under `data/` that no record names.
async fn orphans(store: &Store) -> usize {
    let s = StreamPath::new(&store.root, "default", STREAM);
    let log = Log::new(store.clone(), "auditor", policy());
    let mut named = BTreeSet::new();
    let mut seq = 0;
    while let Some(r) = log.record(&s, 0, seq).await.unwrap() {
        named.insert(s.segment(&r.segment).to_string());
        seq += 1;
    }
    let data = Path::from(format!("{}/data", s.base().as_ref()));
    let all: Vec<_> = store.inner.list(Some(&data)).try_collect().await.unwrap();
    all.iter()
        .filter(|m| !named.contains(m.location.as_ref()))
        .count()
}

/// Kill a gateway while its flush is parked at `fault` on `pattern`, then
/// check the bucket with a fresh gateway. `landed`: the parked flush's
/// events are in the log (its record was created); `orphan`: its segment is
/// in the bucket, named by no record.
async fn crash_in_commit(
    backend: Backend,
    pattern: &str,
    fault: Fault,
    landed: bool,
    orphan: bool,
) {
    let place = Place::new(backend);
    let mut l = Ledger::default();
    seed(place.store(), 2, &mut l).await;
    let faulty = Arc::new(FaultyStore::new(place.client()));
    faulty.inject(pattern, fault, 1);
    let mut config = one_partition();
    // The async event and the durable one fill a segment together.
    config.batch.max_events = 2;
    config.batch.max_age_ms = 60_000;
    let gw = TestGateway::start_killable(config, place.store_of(faulty.clone())).await;
    let client = reqwest::Client::new();
    post_async(&client, &gw, "doomed-async", &mut l).await;
    let doomed = {
        let (client, url) = (
            client.clone(),
            gw.url(&format!("/v1/streams/{STREAM}/events")),
        );
        tokio::spawn(async move {
            client
                .post(url)
                .timeout(WAIT)
                .body(event("doomed"))
                .send()
                .await
        })
    };
    assert!(
        faulty.wait_held(1, WAIT).await,
        "the flush never reached the crash point"
    );
    gw.kill();
    let answer = tokio::time::timeout(WAIT, doomed).await.unwrap().unwrap();
    assert!(answer.is_err(), "a killed gateway answered: {answer:?}");
    l.maybe.insert(event("doomed"));
    l.maybe.extend(std::mem::take(&mut l.accepted));

    let restarted = TestGateway::start(one_partition(), place.store()).await;
    assert_eq!(
        post_durable(&client, &restarted, "after", &mut l).await,
        Answer::Ok
    );
    restarted.stop().await;
    let log = audit(&place.store()).await;
    check(&log, &l, false);
    assert_eq!(log.contains(&event("doomed")), landed, "{log:?}");
    assert_eq!(orphans(&place.store()).await, usize::from(orphan));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_segment_put() {
    crash_in_commit(Backend::Memory, SEGMENT, Fault::Hold, false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_segment_put() {
    crash_in_commit(Backend::Memory, SEGMENT, Fault::HoldAfter, false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_commit_record() {
    crash_in_commit(Backend::Memory, RECORD, Fault::Hold, false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_commit_record() {
    crash_in_commit(Backend::Memory, RECORD, Fault::HoldAfter, true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_crash_after_commit_record() {
    crash_in_commit(Backend::S3, RECORD, Fault::HoldAfter, true, false).await;
}

// ---- crash points in a consumer group's checkpoint ---------------------------

/// A consumer reads the stream, delivers the events (to the test), and
/// is killed while its checkpoint PUT is parked at `fault`. A fresh consumer
/// of the group then reads again: everything the group did not checkpoint is
/// delivered again, the checkpoint is never past what was delivered, and
/// nothing is skipped.
async fn crash_in_checkpoint(fault: Fault, checkpoint_landed: bool) {
    let place = Place::new(Backend::Memory);
    let mut l = Ledger::default();
    seed(place.store(), 5, &mut l).await;
    let all: Vec<String> = l.acked.values().cloned().collect();
    let faulty = Arc::new(FaultyStore::new(place.client()));
    faulty.inject(CHECKPOINT, fault, 1);
    let store = place.store_of(faulty.clone());
    let (tx, mut delivered) = tokio::sync::mpsc::unbounded_channel();
    let process = Process::new();
    process.spawn(async move {
        let c = Consumer::new(store, "default", STREAM, "g", "c1", policy()).unwrap();
        let pending = c.read(1, None).await.unwrap();
        for line in &pending.partitions[0].batch.events {
            tx.send(event_of(line)).unwrap();
        }
        c.commit(&pending).await.unwrap();
    });
    assert!(
        faulty.wait_held(1, WAIT).await,
        "the consumer never reached its checkpoint"
    );
    process.kill();
    let mut first = Vec::new();
    while let Ok(e) = delivered.try_recv() {
        first.push(e);
    }
    assert_eq!(
        first, all,
        "the first run delivered everything before committing"
    );

    let c = Consumer::new(place.store(), "default", STREAM, "g", "c2", policy()).unwrap();
    let checkpoint = c.checkpoints().latest(0).await.unwrap();
    let offset = checkpoint.as_ref().map_or(0, |cp| cp.offset);
    assert!(
        offset as usize <= first.len(),
        "checkpoint {offset} is past what was delivered"
    );
    assert_eq!(checkpoint.is_some(), checkpoint_landed);
    let again = c.read(1, None).await.unwrap();
    let second: Vec<String> = again.partitions[0]
        .batch
        .events
        .iter()
        .map(|e| event_of(e))
        .collect();
    assert_eq!(
        second,
        all[offset as usize..],
        "the second run re-reads exactly what was not checkpointed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_checkpoint() {
    crash_in_checkpoint(Fault::Hold, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_checkpoint() {
    crash_in_checkpoint(Fault::HoldAfter, true).await;
}

// ---- crash points in garbage collection ------------------------------------

const DAY: i64 = 24 * 3_600_000;

fn retention_config() -> Config {
    let text = format!(
        "[streams]\npartitions = 1\n[tenants.default.streams.{STREAM}]\nretention = \"7d\"\n"
    );
    let c: Config = toml::from_str(&text).unwrap();
    c.validate().unwrap();
    c
}

/// Six records ten days old and two an hour old, 3 events each.
async fn aged_log(store: Store) -> Vec<String> {
    let log = Log::new(store, "w", policy());
    let s = log.stream("default", STREAM);
    let now = Utc::now().timestamp_millis();
    let mut all = Vec::new();
    for r in 0..8 {
        let at = if r < 6 {
            now - 10 * DAY
        } else {
            now - DAY / 24
        };
        let mut b = SegmentBuilder::default();
        for i in 0..3 {
            let e = event(&format!("r{r}-{i}"));
            b.push(ReceivedAt::from_millis(at), e.as_bytes());
            all.push(e);
        }
        let segment = b.seal(1).unwrap().unwrap();
        log.append(&s, 0, &segment, &ulid::Ulid::new().to_string())
            .await
            .unwrap();
    }
    all
}

/// Every offset below the head is either its event or `Expired` naming
/// `first`; returns how many were readable.
async fn readable_or_expired(store: &Store, all: &[String], first: u64) -> usize {
    let log = Log::new(store.clone(), "reader", policy());
    let s = log.stream("default", STREAM);
    let mut readable = 0;
    for (o, e) in all.iter().enumerate() {
        match log.read(&s, 0, o as u64, 1).await {
            Ok(b) => {
                assert_eq!(&event_of(&b.events[0]), e, "offset {o}");
                readable += 1;
            }
            Err(LogError::Expired { first_offset, .. }) => assert_eq!(first_offset, first),
            Err(other) => panic!("offset {o} is neither readable nor expired: {other}"),
        }
    }
    readable
}

/// Long-poll every offset of `all` on a running gateway: each answers 200
/// with its event or `410 offset-expired` naming `first`; returns how many
/// were readable.
async fn served_or_expired(gw: &TestGateway, all: &[String], first: u64) -> usize {
    let client = reqwest::Client::new();
    let mut readable = 0;
    for (o, e) in all.iter().enumerate() {
        let url = gw.url(&format!(
            "/v1/streams/{STREAM}/events?partition=0&offset={o}&limit=1"
        ));
        let resp = client.get(url).timeout(WAIT).send().await.unwrap();
        let status = resp.status().as_u16();
        let json: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        match status {
            200 => {
                let want: Value = serde_json::from_str(e).unwrap();
                assert_eq!(json["events"][0]["event"], want, "offset {o}");
                readable += 1;
            }
            410 => {
                assert_eq!(json["type"], "urn:sluice:problem:offset-expired");
                assert_eq!(json["first_offset"], first, "offset {o}");
            }
            _ => panic!("offset {o}: {status} {json}"),
        }
    }
    readable
}

/// Kill a collector while the delete of a key containing `pattern` is parked;
/// readers (a fresh one, and a gateway that was serving all along) see
/// events or `410`, a writer appends at the head, and a fresh collector
/// finishes what the dead one left.
async fn crash_in_gc(pattern: &str) {
    let place = Place::new(Backend::Memory);
    let all = aged_log(place.store()).await;
    let config = retention_config();
    let serving = TestGateway::start(retention_config(), place.store()).await;
    assert_eq!(served_or_expired(&serving, &all, 0).await, all.len());
    let faulty = Arc::new(FaultyStore::new(place.client()));
    faulty.inject_on(Op::Delete, pattern, Fault::Hold, 1);
    let gc_log = Arc::new(Log::new(place.store_of(faulty.clone()), "gc1", policy()));
    let gc = Gc::new(gc_log, &config);
    let now = Utc::now();
    let process = Process::new();
    process.spawn(async move { gc.run(&Scope::default(), now).await });
    assert!(
        faulty.wait_held(1, WAIT).await,
        "gc never reached the crash point"
    );
    process.kill();

    assert_eq!(readable_or_expired(&place.store(), &all, 18).await, 6);
    let readable = served_or_expired(&serving, &all, 18).await;
    assert!(
        readable >= 6,
        "a cached event may still be served, never a gap"
    );
    let mut l = Ledger::default();
    let gw = TestGateway::start(retention_config(), place.store()).await;
    let client = reqwest::Client::new();
    assert_eq!(
        post_durable(&client, &gw, "after-gc", &mut l).await,
        Answer::Ok
    );
    gw.stop().await;
    assert_eq!(
        l.acked.keys().next(),
        Some(&(0, 24)),
        "appends go on at the head"
    );

    let gc = Gc::new(Arc::new(Log::new(place.store(), "gc2", policy())), &config);
    let report = gc.run(&Scope::default(), now).await.unwrap();
    assert!(!report.failed(), "{report:?}");
    let s = StreamPath::new(&place.store().root, "default", STREAM);
    for seq in 0..6 {
        assert!(
            place.store().inner.head(&s.record(0, seq)).await.is_err(),
            "record {seq} left"
        );
    }
    assert_eq!(readable_or_expired(&place.store(), &all, 18).await, 6);
    assert!(served_or_expired(&serving, &all, 18).await >= 6);
    serving.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_gc_after_watermark_before_deletes() {
    crash_in_gc(&format!("/{STREAM}/")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_in_gc_mid_delete() {
    crash_in_gc("/log/0000/00000000000000000003.json").await;
}

/// The decorator itself: a listing, a GET and a delete can be made to fail.
#[tokio::test]
async fn faults_strike_reads_lists_and_deletes() {
    let faulty = FaultyStore::new(Arc::new(object_store::memory::InMemory::new()));
    let key = Path::from("a/log/0000/1.json");
    faulty.put(&key, "x".into()).await.unwrap();
    faulty.inject_on(Op::Get, RECORD, Fault::SlowDown, 1);
    faulty.inject_on(Op::List, "a", Fault::InternalError, 1);
    faulty.inject_on(Op::Delete, RECORD, Fault::Torn, 1);
    let err = faulty.get(&key).await.unwrap_err().to_string();
    assert!(err.contains("503") && err.contains("SlowDown"), "{err}");
    let listed: Result<Vec<_>, _> = faulty.list(Some(&Path::from("a"))).try_collect().await;
    assert!(listed.unwrap_err().to_string().contains("500"));
    assert!(
        faulty.delete(&key).await.is_err(),
        "a torn delete reports failure"
    );
    assert!(faulty.head(&key).await.is_err(), "but the object is gone");
    let names: Vec<_> = faulty.injected().into_keys().collect();
    assert_eq!(names, vec!["500", "503", "torn"]);
}

/// Events in every partition of the stream, audited like [`audit`] but
/// without assuming one partition.
async fn all_partitions(store: &Store, partitions: u32) -> Vec<String> {
    let log = Log::new(store.clone(), "auditor", policy());
    let s = log.stream("default", STREAM);
    let mut events = Vec::new();
    for p in 0..partitions {
        let batch = log.read(&s, p, 0, usize::MAX).await.unwrap();
        events.extend(batch.events.iter().map(|e| event_of(e)));
    }
    events
}

/// A commit-record PUT is slow: the gateway gives up on it (its store
/// deadline), but S3 finishes it later. The retry's put-if-absent meets S3's
/// `409 ConditionalRequestConflict` (the first write is still in flight),
/// which object_store reports as `AlreadyExists`, and the record is not
/// there yet. The writer must not take that for a corrupt partition and
/// commit the segment elsewhere: the late record lands, and the events
/// would be in the log twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_while_own_record_is_in_flight_is_not_a_second_commit() {
    let place = Place::new(Backend::Memory);
    let faulty = Arc::new(FaultyStore::new(place.client()));
    faulty.inject(RECORD, Fault::Late(Duration::from_millis(1_500)), 1);
    faulty.inject(RECORD, Fault::Conflict, 1);
    let mut config = one_partition();
    config.streams.partitions = 2;
    config.batch.ack_timeout_ms = 10_000;
    let gw = TestGateway::start(config, place.store_of(faulty.clone())).await;
    let client = reqwest::Client::new();
    let mut l = Ledger::default();
    assert_eq!(post_durable(&client, &gw, "slow", &mut l).await, Answer::Ok);
    assert!(
        faulty.wait_late(1, WAIT).await,
        "the late write never finished"
    );
    gw.stop().await;
    let events = all_partitions(&place.store(), 2).await;
    assert_eq!(events, vec![event("slow")]);
}
