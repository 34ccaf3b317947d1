//! Fault campaigns: durable and async traffic at in-process gateways while
//! seeded random store faults strike, or the gateway is killed at random
//! crash points; then a check of every answer against the log. Two tables.
//!
//! **Store faults** (this file), on the memory store, moto S3, and moto S3
//! behind a proxy that also cuts connections at random ([`proxy`]).
//! Each round injects one fault (S3 500 `InternalError`, 503 `SlowDown`, a
//! request that never answers, a torn connection, a slow PUT, a PUT that
//! lands after the gateway gave up on it, for commit records with S3's 409
//! for the retries meanwhile) on segment or commit PUTs, either a few times
//! (the retry loop should ride it out) or for the whole round (an outage:
//! durable requests should get 503). While it
//! lasts, clients send durable and async requests of 1–5 events. Then the
//! fault is cleared and one durable probe must get 200 within a bounded
//! number of tries, on the same gateway (no restart). At the end the whole
//! log is audited: seqs dense, each record starting where the last ended and
//! naming a segment that exists; every 200'd event at its acked offset,
//! every 202'd event present (nothing was killed), every event at most once.
//!
//! **Crash points** ([`crash`]): memory store and moto S3.
//!
//! - `cargo bench --bench faults`: the full run.
//! - `cargo test --all-targets` runs this binary without `--bench`: a short run.
//!
//! Environment: `SLUICE_FAULTS_ONLY=store|crash` (one table; default both),
//! `SLUICE_FAULTS_SEED` (default: from the clock; printed),
//! `SLUICE_FAULTS_ROUNDS` (full 30, short 3) and `SLUICE_FAULTS_SECS` (full
//! 300, short 60: a store's rounds stop early past it). Prints a row per
//! store in each table and exits 1 when an invariant failed.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "faults/crash.rs"]
mod crash;
#[path = "../tests/common/proxy.rs"]
mod proxy;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::gateway::{event_of, test_config, TestGateway};
use common::{Backend, Place};
use object_store::ObjectStoreExt;
use proxy::{Cut, Proxy};
use serde_json::Value;
use sluice::faults::{Fault, FaultyStore};
use sluice::log::retry::RetryPolicy;
use sluice::log::Log;
use sluice::store::{Store, StoreKind};

const STREAM: &str = "campaign";
const PARTITIONS: u32 = 4;
const CLIENTS: usize = 6;
const REQUESTS_PER_CLIENT: usize = 3;
const PROBES: usize = 20;

/// splitmix64: a small seeded generator (the campaign must replay from its seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the clients were told.
#[derive(Default)]
struct Ledger {
    requests: u64,
    ok: u64,
    accepted_202: u64,
    unavailable: u64,
    /// 200: (partition, offset) → event.
    acked: BTreeMap<(u32, u64), String>,
    /// 202'd events: must all be in the log (nothing was killed).
    accepted: Vec<String>,
    /// Every event sent, 503'd or cut ones included.
    sent: Vec<String>,
    /// Answers that are none of 200, 202, 503 store-unavailable/overloaded
    /// (nor, in a crash campaign, a cut connection).
    odd: Vec<String>,
    /// A crash campaign: connections cut by a kill are expected, and 202'd
    /// events may be lost (killed before their flush, as documented).
    crashes: bool,
    /// Requests whose connection a kill cut.
    cut: u64,
    /// 202'd events a crash may have lost.
    at_risk: Vec<String>,
}

/// One store's result.
struct Row {
    store: &'static str,
    rounds: usize,
    faults: BTreeMap<&'static str, u64>,
    ledger: Ledger,
    false_200: u64,
    verified: u64,
    lost: u64,
    duplicated: u64,
    /// 202'd events a crash lost (crash campaign only; documented).
    at_risk_lost: u64,
    resumed: bool,
    log_errors: Vec<String>,
}

impl Row {
    fn failed(&self) -> bool {
        self.false_200 > 0
            || self.lost > 0
            || self.duplicated > 0
            || !self.resumed
            || !self.log_errors.is_empty()
            || !self.ledger.odd.is_empty()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let seed = env_u64("SLUICE_FAULTS_SEED").unwrap_or_else(clock_seed);
    let rounds = env_u64("SLUICE_FAULTS_ROUNDS").unwrap_or(if full { 30 } else { 3 }) as usize;
    let secs = env_u64("SLUICE_FAULTS_SECS").unwrap_or(if full { 300 } else { 60 });
    println!("faults campaign: seed {seed} (SLUICE_FAULTS_SEED={seed} replays its schedule), {rounds} rounds per store, at most {secs} s per store");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the campaign's tokio runtime");
    let only = std::env::var("SLUICE_FAULTS_ONLY").unwrap_or_default();
    assert!(
        ["", "store", "crash"].contains(&only.as_str()),
        "SLUICE_FAULTS_ONLY is store or crash, not {only:?}"
    );
    let limit = Duration::from_secs(secs);
    let mut rows = Vec::new();
    if only.is_empty() || only == "store" {
        rows.extend(store_faults(&runtime, seed, rounds, limit));
    }
    if only.is_empty() || only == "crash" {
        rows.extend(crash_points(&runtime, seed, rounds, limit));
    }
    if rows.iter().any(Row::failed) {
        for r in rows.iter().filter(|r| r.failed()) {
            eprintln!(
                "{}: log errors {:?}; odd answers {:?}",
                r.store, r.log_errors, r.ledger.odd
            );
        }
        eprintln!("faults campaign FAILED (seed {seed})");
        std::process::exit(1);
    }
}

/// The store-fault table, one row per store.
fn store_faults(
    rt: &tokio::runtime::Runtime,
    seed: u64,
    rounds: usize,
    limit: Duration,
) -> Vec<Row> {
    let stores = [
        ("memory", Where::Memory),
        ("s3 (moto)", Where::S3),
        ("s3 (moto) via cutting proxy", Where::S3Proxy),
    ];
    let mut rows = Vec::new();
    for (i, (name, at)) in stores.into_iter().enumerate() {
        let mut rng = Rng(seed.wrapping_add(i as u64));
        rows.push(rt.block_on(campaign(name, at, rounds, limit, &mut rng)));
    }
    print(&rows);
    rows
}

/// The crash-point table, one row per store.
fn crash_points(
    rt: &tokio::runtime::Runtime,
    seed: u64,
    rounds: usize,
    limit: Duration,
) -> Vec<Row> {
    let stores = [("memory", Backend::Memory), ("s3 (moto)", Backend::S3)];
    let mut rows = Vec::new();
    for (i, (name, backend)) in stores.into_iter().enumerate() {
        let mut rng = Rng(seed.wrapping_add(10 + i as u64));
        rows.push(rt.block_on(crash::campaign(name, backend, rounds, limit, &mut rng)));
    }
    crash::print(&rows);
    rows
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {text:?}")),
    )
}

fn clock_seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(1, |d| d.as_nanos() as u64)
}

/// A round's fault: what, where, and for how many requests.
fn pick(rng: &mut Rng) -> (Fault, &'static str, u32) {
    let fault = match rng.below(6) {
        0 => Fault::InternalError,
        1 => Fault::SlowDown,
        2 => Fault::Hang,
        3 => Fault::Torn,
        4 => Fault::Late(Duration::from_millis(100 + rng.below(900))),
        _ => Fault::Delay(Duration::from_millis(50 + rng.below(350))),
    };
    let target = if rng.below(2) == 0 { "/data/" } else { "/log/" };
    // Half the rounds are outages (until cleared), half a few failures.
    let times = if rng.below(2) == 0 {
        u32::MAX
    } else {
        1 + rng.below(5) as u32
    };
    (fault, target, times)
}

/// Inject a round's fault. A late commit-record PUT comes with what S3
/// answers other creates of the key while it is in flight: 409s.
fn inject(faulty: &FaultyStore, rng: &mut Rng) {
    let (fault, target, times) = pick(rng);
    if let (Fault::Late(_), "/log/") = (fault, target) {
        faulty.inject(target, fault, 1);
        faulty.inject(target, Fault::Conflict, 1 + rng.below(3) as u32);
        return;
    }
    faulty.inject(target, fault, times);
}

/// The store a campaign runs on.
#[derive(Clone, Copy)]
enum Where {
    Memory,
    S3,
    /// S3 through a [`Proxy`] that also cuts connections at random.
    S3Proxy,
}

/// The bucket (read directly for the audit) and the client the gateway
/// uses, with the proxy in between when there is one.
async fn open(at: Where) -> (Store, Arc<dyn object_store::ObjectStore>, Option<Proxy>) {
    match at {
        Where::Memory | Where::S3 => {
            let place = Place::new(if matches!(at, Where::S3) {
                Backend::S3
            } else {
                Backend::Memory
            });
            (place.store(), place.client(), None)
        }
        Where::S3Proxy => {
            let bucket = common::new_bucket();
            let direct = Store::from_parts(common::s3_client(&bucket), "root", StoreKind::S3);
            let proxy = Proxy::start(&common::moto().endpoint).await;
            let client = proxy.s3_client(&bucket);
            (direct, client, Some(proxy))
        }
    }
}

/// A round's connection cut: how, where, for how many requests.
fn pick_cut(rng: &mut Rng) -> (Cut, &'static str, u32) {
    let cut = match rng.below(3) {
        0 => Cut::MidRequest,
        1 => Cut::BeforeResponse,
        _ => Cut::MidResponse,
    };
    let (_, target, times) = pick(rng);
    (cut, target, times)
}

async fn campaign(
    store_name: &'static str,
    at: Where,
    rounds: usize,
    limit: Duration,
    rng: &mut Rng,
) -> Row {
    let (direct, client_store, proxy) = open(at).await;
    let faulty = Arc::new(FaultyStore::new(client_store));
    let place_store = Store::from_parts(faulty.clone(), "root", kind(at));
    let mut config = test_config();
    config.streams.partitions = PARTITIONS;
    config.batch.store_retry_ms = 200;
    config.batch.ack_timeout_ms = 800;
    let gw = TestGateway::start(config, place_store).await;
    let client = reqwest::Client::new();
    let mut ledger = Ledger::default();
    let mut resumed = true;
    let started = Instant::now();
    let mut done = 0;
    while done < rounds && started.elapsed() < limit {
        match &proxy {
            Some(p) if rng.below(2) == 0 => {
                let (cut, target, times) = pick_cut(rng);
                p.cut("PUT", target, cut, times);
            }
            _ => {
                inject(&faulty, rng);
            }
        }
        traffic(&client, &gw, done, rng, &mut ledger).await;
        faulty.clear();
        if let Some(p) = &proxy {
            p.clear();
        }
        resumed &= probe(&client, &gw, done, &mut ledger).await;
        done += 1;
    }
    gw.stop().await;
    let mut faults = faulty.injected();
    if let Some(p) = &proxy {
        faults.insert("connection cut", p.cuts());
    }
    verify(store_name, done, faults, ledger, resumed, &direct).await
}

fn kind(at: Where) -> StoreKind {
    match at {
        Where::Memory => StoreKind::Memory,
        Where::S3 | Where::S3Proxy => StoreKind::S3,
    }
}

/// `CLIENTS` clients at once, each `REQUESTS_PER_CLIENT` requests of 1–5
/// events, durable or async at random; wait for every answer.
async fn traffic(
    client: &reqwest::Client,
    gw: &TestGateway,
    round: usize,
    rng: &mut Rng,
    ledger: &mut Ledger,
) {
    let clients = start_traffic(client, gw, round, rng);
    finish_traffic(clients, ledger).await;
}

/// What one client sent and heard, request by request.
type Answers = Vec<(bool, Vec<String>, Answer)>;

/// Start the clients of a round; they run until their requests are answered.
fn start_traffic(
    client: &reqwest::Client,
    gw: &TestGateway,
    round: usize,
    rng: &mut Rng,
) -> Vec<tokio::task::JoinHandle<Answers>> {
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let plan: Vec<(bool, usize)> = (0..REQUESTS_PER_CLIENT)
            .map(|_| (rng.below(3) > 0, 1 + rng.below(5) as usize))
            .collect();
        let (client, url) = (
            client.clone(),
            gw.url(&format!("/v1/streams/{STREAM}/events")),
        );
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for (r, (durable, n)) in plan.into_iter().enumerate() {
                let events: Vec<String> = (0..n)
                    .map(|i| format!(r#"{{"round":{round},"client":{c},"request":{r},"i":{i}}}"#))
                    .collect();
                let answer = send(&client, &url, &events, durable).await;
                answers.push((durable, events, answer));
            }
            answers
        }));
    }
    tasks
}

async fn finish_traffic(clients: Vec<tokio::task::JoinHandle<Answers>>, ledger: &mut Ledger) {
    for t in clients {
        for (durable, events, answer) in t.await.expect("a client task panicked") {
            record(ledger, durable, events, answer);
        }
    }
}

/// After the fault cleared: durable single events until one gets 200.
async fn probe(
    client: &reqwest::Client,
    gw: &TestGateway,
    round: usize,
    ledger: &mut Ledger,
) -> bool {
    let url = gw.url(&format!("/v1/streams/{STREAM}/events"));
    for i in 0..PROBES {
        let events = vec![format!(r#"{{"round":{round},"probe":{i}}}"#)];
        let answer = send(client, &url, &events, true).await;
        let ok = matches!(answer, Answer::Status(200, _));
        record(ledger, true, events, answer);
        if ok {
            return true;
        }
    }
    false
}

enum Answer {
    Status(u16, Value),
    Cut(String),
}

async fn send(client: &reqwest::Client, url: &str, events: &[String], durable: bool) -> Answer {
    let body = format!("[{}]", events.join(","));
    let mut req = client.post(url).timeout(Duration::from_secs(30)).body(body);
    if !durable {
        req = req.header("prefer", "respond-async");
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Answer::Cut(e.to_string()),
    };
    let status = resp.status().as_u16();
    match resp.bytes().await {
        Ok(b) => Answer::Status(status, serde_json::from_slice(&b).unwrap_or(Value::Null)),
        Err(e) => Answer::Cut(e.to_string()),
    }
}

fn record(ledger: &mut Ledger, durable: bool, events: Vec<String>, answer: Answer) {
    ledger.requests += 1;
    ledger.sent.extend(events.iter().cloned());
    match answer {
        Answer::Status(200, json) if durable => {
            ledger.ok += 1;
            let p = json["partition"].as_u64().unwrap_or(u64::MAX) as u32;
            let o = json["first_offset"].as_u64().unwrap_or(u64::MAX);
            for (i, e) in events.into_iter().enumerate() {
                ledger.acked.insert((p, o + i as u64), e);
            }
        }
        Answer::Status(202, _) if !durable => {
            ledger.accepted_202 += 1;
            match ledger.crashes {
                true => ledger.at_risk.extend(events),
                false => ledger.accepted.extend(events),
            }
        }
        Answer::Status(503, json) if is_unavailable(&json) => ledger.unavailable += 1,
        Answer::Status(status, json) => ledger.odd.push(format!("{status} {json}")),
        Answer::Cut(_) if ledger.crashes => ledger.cut += 1,
        Answer::Cut(e) => ledger.odd.push(format!("connection: {e}")),
    }
}

fn is_unavailable(json: &Value) -> bool {
    let kind = json["type"].as_str().unwrap_or("");
    kind == "urn:sluice:problem:store-unavailable" || kind == "urn:sluice:problem:overloaded"
}

/// Every partition's events by offset, and what is wrong with its log.
async fn read_log(store: &Store, errors: &mut Vec<String>) -> Vec<Vec<String>> {
    let log = Log::new(store.clone(), "auditor", RetryPolicy::default());
    let s = log.stream("default", STREAM);
    let mut partitions = Vec::new();
    for p in 0..PARTITIONS {
        let mut next_offset = 0;
        let mut seq = 0;
        while let Ok(Some(r)) = log.record(&s, p, seq).await {
            if r.first_offset != next_offset {
                errors.push(format!(
                    "partition {p} seq {seq}: starts at {} not {next_offset}",
                    r.first_offset
                ));
            }
            if store.inner.head(&s.segment(&r.segment)).await.is_err() {
                errors.push(format!(
                    "partition {p} seq {seq}: segment {} is missing",
                    r.segment
                ));
            }
            next_offset = r.next_offset();
            seq += 1;
        }
        match log.read(&s, p, 0, usize::MAX).await {
            Ok(b) if b.next_offset == next_offset => {
                partitions.push(b.events.iter().map(|e| event_of(e)).collect())
            }
            Ok(b) => {
                errors.push(format!(
                    "partition {p}: read ends at {} not {next_offset}",
                    b.next_offset
                ));
                partitions.push(Vec::new());
            }
            Err(e) => {
                errors.push(format!("partition {p}: {e}"));
                partitions.push(Vec::new());
            }
        }
    }
    partitions
}

async fn verify(
    store_name: &'static str,
    rounds: usize,
    faults: BTreeMap<&'static str, u64>,
    ledger: Ledger,
    resumed: bool,
    store: &Store,
) -> Row {
    let mut log_errors = Vec::new();
    let log = read_log(store, &mut log_errors).await;
    let mut copies: HashMap<&str, u64> = HashMap::new();
    for e in log.iter().flatten() {
        *copies.entry(e.as_str()).or_default() += 1;
    }
    let false_200 = ledger
        .acked
        .iter()
        .filter(|((p, o), e)| log.get(*p as usize).and_then(|l| l.get(*o as usize)) != Some(*e))
        .count() as u64;
    let lost = ledger
        .accepted
        .iter()
        .filter(|e| !copies.contains_key(e.as_str()))
        .count() as u64;
    let duplicated = copies.values().filter(|&&n| n > 1).count() as u64;
    let at_risk_lost = ledger
        .at_risk
        .iter()
        .filter(|e| !copies.contains_key(e.as_str()))
        .count() as u64;
    let known: std::collections::HashSet<&str> = ledger.sent.iter().map(String::as_str).collect();
    if let Some(stranger) = copies.keys().find(|e| !known.contains(*e)) {
        log_errors.push(format!("{stranger} is in the log but was never sent"));
    }
    let verified = (ledger.acked.len() + ledger.accepted.len()) as u64 - false_200 - lost;
    Row {
        store: store_name,
        rounds,
        faults,
        ledger,
        false_200,
        verified,
        lost,
        duplicated,
        at_risk_lost,
        resumed,
        log_errors,
    }
}

fn print(rows: &[Row]) {
    println!();
    println!("| store | rounds | faults injected (by kind) | requests | 200 | 202 | 503 | false 200 (must be 0) | acked events verified | lost (0) | duplicated (0) | resumed after recovery |");
    println!("|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|---|");
    for r in rows {
        let faults: Vec<String> = r.faults.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        let l = &r.ledger;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.store,
            r.rounds,
            faults.join(", "),
            l.requests,
            l.ok,
            l.accepted_202,
            l.unavailable,
            r.false_200,
            r.verified,
            r.lost,
            r.duplicated,
            if r.resumed { "yes" } else { "NO" },
        );
    }
}
