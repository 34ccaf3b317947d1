//! Real gateway processes on one moto bucket: several writers sharing a log,
//! SIGKILL and restart, SIGTERM under load. Every acked event must be in the
//! log exactly once, at the offset its ack named; the log must stay dense.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::log::retry::RetryPolicy;
use sluice::log::Log;
use sluice::store::{Store, StoreKind};

const STREAM: &str = "clicks";
/// Partitions of a stream (the gateway's default).
const DEFAULT_PARTITIONS: u32 = 4;
const START_LIMIT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Gateway processes
// ---------------------------------------------------------------------------

/// A running `sluice serve`; killed (SIGKILL) when dropped.
struct Gateway {
    name: String,
    child: Child,
    addr: String,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<JoinHandle<()>>,
    _config: Option<tempfile::NamedTempFile>,
}

impl Gateway {
    /// Spawn a gateway on `bucket` with the default configuration.
    fn start(name: &str, bucket: &str) -> Gateway {
        Gateway::start_with(name, bucket, None)
    }

    /// Spawn a gateway on `bucket` (with `toml` as its config file, if any)
    /// and wait (bounded) for `listening on ADDR`.
    fn start_with(name: &str, bucket: &str, toml: Option<&str>) -> Gateway {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.arg("serve");
        // Nothing from the test's own environment may redirect the gateway.
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") || k.starts_with("SLUICE_") {
                cmd.env_remove(k);
            }
        }
        let config = toml.map(|text| {
            let mut f = tempfile::NamedTempFile::new().unwrap();
            f.write_all(text.as_bytes()).unwrap();
            f.flush().unwrap();
            f
        });
        if let Some(f) = &config {
            cmd.env("SLUICE_CONFIG", f.path());
        }
        cmd.envs(common::s3_env(bucket))
            .env("SLUICE_LISTEN", "127.0.0.1:0")
            .env("SLUICE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the sluice binary");

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let stderr_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });

        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Keeps reading stdout for the child's whole life so it never blocks.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let mut tx = Some(tx);
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if let Some(addr) = line.trim().strip_prefix("listening on ") {
                            if let Some(tx) = tx.take() {
                                let _ = tx.send(addr.to_string());
                            }
                        }
                    }
                }
            }
        });

        let mut gw = Gateway {
            name: name.to_string(),
            child,
            addr: String::new(),
            stderr,
            stderr_thread: Some(stderr_thread),
            _config: config,
        };
        match rx.recv_timeout(START_LIMIT) {
            Ok(addr) => gw.addr = addr,
            Err(e) => {
                gw.kill();
                panic!(
                    "gateway {name} did not print `listening on` ({e:?}); stderr:\n{}",
                    gw.stderr()
                );
            }
        }
        gw
    }

    fn url(&self) -> String {
        format!("http://{}/v1/streams/{STREAM}/events", self.addr)
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// SIGKILL and reap; waits for the stderr pipe to close (bounded by the kill).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Poll (bounded) until the process exits.
    async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                if let Some(t) = self.stderr_thread.take() {
                    let _ = t.join();
                }
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- stderr of gateway {} ----\n{}",
                self.name,
                self.stderr()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

/// What a request got back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// 200: committed at `first_offset..` of `partition`.
    Durable { partition: u32, first_offset: u64 },
    /// 202: accepted, to be committed later.
    Async,
    /// Connection error or 503: nothing promised.
    Failed(String),
}

/// One request: its events (id, exact JSON sent) and what it got.
#[derive(Debug, Clone)]
struct Sent {
    gateway: String,
    events: Vec<(String, String)>,
    outcome: Outcome,
}

/// 1–5 distinct events with ids unique to (tag, task, request).
fn events_for(tag: &str, task: usize, req: usize) -> Vec<(String, String)> {
    let n = (task * 7 + req * 3) % 5 + 1;
    (0..n)
        .map(|k| {
            let id = format!("{tag}-t{task}-r{req}-e{k}");
            let raw = format!(r#"{{"id":"{id}","k":{k},"pad":"{}"}}"#, "x".repeat(k * 10));
            (id, raw)
        })
        .collect()
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    events: &[(String, String)],
    respond_async: bool,
) -> Outcome {
    let raws: Vec<&str> = events.iter().map(|(_, raw)| raw.as_str()).collect();
    let body = format!("[{}]", raws.join(","));
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if respond_async {
        req = req.header("prefer", "respond-async");
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("send: {e:?}")),
    };
    let status = resp.status().as_u16();
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return Outcome::Failed(format!("{status}, body lost: {e:?}")),
    };
    let text = String::from_utf8_lossy(&bytes).into_owned();
    match status {
        200 | 202 => {
            let v: Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{status} body is not JSON ({e}): {text}"));
            assert_eq!(v["accepted"].as_u64(), Some(events.len() as u64), "{text}");
            assert_eq!(v["rejected"].as_u64(), Some(0), "{text}");
            if status == 200 {
                assert!(!respond_async, "durable answer to an async request: {text}");
                let partition = v["partition"].as_u64().expect("partition in a 200") as u32;
                let first_offset = v["first_offset"].as_u64().expect("first_offset in a 200");
                Outcome::Durable {
                    partition,
                    first_offset,
                }
            } else {
                assert!(respond_async, "202 to a durable request: {text}");
                assert!(v.get("first_offset").is_none(), "202 with offsets: {text}");
                Outcome::Async
            }
        }
        503 => Outcome::Failed(format!("503: {text}")),
        other => panic!("unexpected status {other} from {url}: {text}"),
    }
}

/// Counts successful answers so the test can act on progress, not on time.
type Progress = tokio::sync::watch::Sender<usize>;

/// Which kind of requests a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Durable,
    /// Durable and `Prefer: respond-async` alternately.
    Mixed,
    Async,
}

/// How a group of client tasks talks to one gateway.
#[derive(Clone)]
struct Load {
    client: reqwest::Client,
    gateway: String,
    url: String,
    /// Prefix of every event id this group sends.
    tag: String,
    /// Most requests per task.
    requests: usize,
    mode: Mode,
    /// Stop a task at its first failure (the gateway is going away).
    stop_on_failure: bool,
    progress: Option<Arc<Progress>>,
}

impl Load {
    fn new(client: &reqwest::Client, gw: &Gateway, tag: &str, requests: usize, mode: Mode) -> Load {
        Load {
            client: client.clone(),
            gateway: gw.name.clone(),
            url: gw.url(),
            tag: tag.to_string(),
            requests,
            mode,
            stop_on_failure: false,
            progress: None,
        }
    }

    /// Stop at the first failure, and count successes into a new watch.
    fn until_gone(mut self) -> (Load, tokio::sync::watch::Receiver<usize>) {
        let (tx, rx) = tokio::sync::watch::channel(0usize);
        self.stop_on_failure = true;
        self.progress = Some(Arc::new(tx));
        (self, rx)
    }

    fn spawn(&self, tasks: usize) -> Vec<tokio::task::JoinHandle<Vec<Sent>>> {
        (0..tasks).map(|t| self.clone().spawn_one(t)).collect()
    }

    /// One client task: up to `requests` posts, one at a time.
    fn spawn_one(self, task: usize) -> tokio::task::JoinHandle<Vec<Sent>> {
        tokio::spawn(async move {
            let mut sent = Vec::with_capacity(self.requests);
            for req in 0..self.requests {
                let events = events_for(&self.tag, task, req);
                let respond_async = match self.mode {
                    Mode::Durable => false,
                    Mode::Mixed => (task + req) % 2 == 1,
                    Mode::Async => true,
                };
                let outcome = post(&self.client, &self.url, &events, respond_async).await;
                let failed = matches!(outcome, Outcome::Failed(_));
                sent.push(Sent {
                    gateway: self.gateway.clone(),
                    events,
                    outcome,
                });
                if !failed {
                    if let Some(p) = &self.progress {
                        p.send_modify(|n| *n += 1);
                    }
                } else if self.stop_on_failure {
                    break;
                }
            }
            sent
        })
    }
}

async fn join_all(handles: Vec<tokio::task::JoinHandle<Vec<Sent>>>) -> Vec<Sent> {
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("client task panicked"));
    }
    all
}

/// Wait (bounded) until `n` requests have succeeded.
async fn wait_progress(rx: &mut tokio::sync::watch::Receiver<usize>, n: usize, what: &str) {
    let waited = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|c| *c >= n)).await;
    match waited {
        Ok(Ok(_)) => {}
        _ => panic!("{what}: fewer than {n} successful requests within 30 s"),
    }
}

fn summary(sent: &[Sent]) -> String {
    let mut by: HashMap<(String, &str), usize> = HashMap::new();
    for s in sent {
        let kind = match s.outcome {
            Outcome::Durable { .. } => "200",
            Outcome::Async => "202",
            Outcome::Failed(_) => "failed",
        };
        *by.entry((s.gateway.clone(), kind)).or_default() += 1;
    }
    let mut parts: Vec<String> = by
        .into_iter()
        .map(|((g, k), n)| format!("{g}:{k}={n}"))
        .collect();
    parts.sort();
    let mut reasons: Vec<&str> = sent
        .iter()
        .filter_map(|s| match &s.outcome {
            Outcome::Failed(why) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    reasons.sort();
    reasons.dedup();
    if !reasons.is_empty() {
        parts.push(format!("failures: {reasons:?}"));
    }
    parts.join(" ")
}

// ---------------------------------------------------------------------------
// Reading the log back
// ---------------------------------------------------------------------------

/// Where one event sits in the log, and its bytes as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    partition: u32,
    offset: u64,
    raw: String,
}

/// The whole stream as read with the library reader.
struct LogView {
    by_id: HashMap<String, Vec<Place>>,
    heads: Vec<u64>,
    total: u64,
}

/// The event bytes inside an envelope line `{"received_at":"…","event":…}`.
fn event_of(line: &[u8]) -> String {
    let s = std::str::from_utf8(line).expect("envelope is UTF-8");
    let marker = ",\"event\":";
    let start = s
        .find(marker)
        .unwrap_or_else(|| panic!("not an envelope: {s}"))
        + marker.len();
    assert!(s.ends_with('}'), "not an envelope: {s}");
    s[start..s.len() - 1].to_string()
}

fn reader_log(bucket: &str) -> Log {
    let store = Store::from_parts(common::s3_client(bucket), "root", StoreKind::S3);
    Log::new(store, "reader", RetryPolicy::default())
}

/// Head of every partition (offsets), as the reader sees it now.
async fn heads(bucket: &str, partitions: u32) -> Vec<u64> {
    let log = reader_log(bucket);
    let s = log.stream("default", STREAM);
    let mut out = Vec::new();
    for p in 0..partitions {
        out.push(log.head(&s, p).await.unwrap().next_offset);
    }
    out
}

/// Read every partition from 0 to its head, checking density on the way.
async fn read_log(bucket: &str, partitions: u32) -> LogView {
    let log = reader_log(bucket);
    let s = log.stream("default", STREAM);
    let mut view = LogView {
        by_id: HashMap::new(),
        heads: Vec::new(),
        total: 0,
    };
    for p in 0..partitions {
        let head = log.head(&s, p).await.unwrap();
        // Commit records chain: seqs dense from 0, each starting where the last ended.
        let mut expect = 0u64;
        for seq in 0..head.next_seq {
            let r = log
                .record(&s, p, seq)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("partition {p}: seq {seq} missing below the head"));
            assert_eq!(
                r.first_offset, expect,
                "partition {p} seq {seq}: record starts at {} but the previous ended at {expect}",
                r.first_offset
            );
            assert!(r.count > 0, "partition {p} seq {seq}: empty record");
            expect = r.next_offset();
        }
        assert_eq!(expect, head.next_offset, "partition {p}: head offset");

        // Events: dense from 0 to the head.
        let mut offset = 0u64;
        let mut rounds = 0;
        while offset < head.next_offset {
            rounds += 1;
            assert!(rounds <= 100_000, "partition {p}: read loop does not end");
            let batch = log.read(&s, p, offset, 500).await.unwrap();
            assert_eq!(batch.first_offset, offset, "partition {p}");
            assert!(
                !batch.events.is_empty(),
                "partition {p}: nothing readable at {offset} below head {}",
                head.next_offset
            );
            assert_eq!(
                batch.next_offset,
                offset + batch.events.len() as u64,
                "partition {p}: next_offset does not chain"
            );
            for (i, line) in batch.events.iter().enumerate() {
                let envelope: Value = serde_json::from_slice(line).unwrap_or_else(|e| {
                    panic!("partition {p}: envelope is not JSON ({e}): {line:?}")
                });
                let id = envelope["event"]["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("event without id: {envelope}"))
                    .to_string();
                view.by_id.entry(id).or_default().push(Place {
                    partition: p,
                    offset: offset + i as u64,
                    raw: event_of(line),
                });
            }
            offset = batch.next_offset;
        }
        assert_eq!(offset, head.next_offset, "partition {p}");
        let past = log.read(&s, p, head.next_offset, 10).await.unwrap();
        assert!(
            past.events.is_empty(),
            "partition {p}: events past the head"
        );
        view.total += head.next_offset;
        view.heads.push(head.next_offset);
    }
    // Nothing beyond the configured partitions.
    let beyond = log.head(&s, partitions).await.unwrap();
    assert_eq!(beyond.next_seq, 0, "records in partition {partitions}");
    view
}

/// The checks every test shares. Returns the acked (partition, offset) pairs.
fn verify(sent: &[Sent], view: &LogView) -> HashSet<(u32, u64)> {
    let read: u64 = view.by_id.values().map(|v| v.len() as u64).sum();
    assert_eq!(read, view.total, "events read != sum of heads");

    // No id twice, and nothing in the log that was never sent.
    let known: HashMap<&str, &str> = sent
        .iter()
        .flat_map(|s| s.events.iter().map(|(id, raw)| (id.as_str(), raw.as_str())))
        .collect();
    for (id, places) in &view.by_id {
        assert_eq!(
            places.len(),
            1,
            "id {id} is in the log more than once: {places:?}"
        );
        let raw = known
            .get(id.as_str())
            .unwrap_or_else(|| panic!("id {id} in the log was never sent"));
        assert_eq!(
            places[0].raw, *raw,
            "id {id}: stored bytes differ from sent"
        );
    }

    let mut acked = HashSet::new();
    for s in sent {
        let found: Vec<Option<&Place>> = s
            .events
            .iter()
            .map(|(id, _)| view.by_id.get(id).map(|p| &p[0]))
            .collect();
        match &s.outcome {
            Outcome::Durable {
                partition,
                first_offset,
            } => {
                for (k, ((id, _), place)) in s.events.iter().zip(&found).enumerate() {
                    let want = (*partition, first_offset + k as u64);
                    let place = place.unwrap_or_else(|| {
                        panic!(
                            "durably acked event {id} (via {}, ack {want:?}) is not in the log",
                            s.gateway
                        )
                    });
                    assert_eq!(
                        (place.partition, place.offset),
                        want,
                        "acked event {id} (via {}) is not at its acked offset",
                        s.gateway
                    );
                    assert!(acked.insert(want), "offset {want:?} acked twice");
                }
            }
            Outcome::Async => {
                for ((id, _), place) in s.events.iter().zip(&found) {
                    assert!(
                        place.is_some(),
                        "event {id} got 202 via {} but is not in the log",
                        s.gateway
                    );
                }
                assert_contiguous(s, &found);
            }
            Outcome::Failed(_) => {
                // Nothing promised, but a request's events land together or not at all.
                let present = found.iter().filter(|p| p.is_some()).count();
                assert!(
                    present == 0 || present == found.len(),
                    "request {:?} (failed via {}) is partly in the log: {found:?}",
                    s.events.iter().map(|e| &e.0).collect::<Vec<_>>(),
                    s.gateway
                );
                if present > 0 {
                    assert_contiguous(s, &found);
                }
            }
        }
    }
    acked
}

/// A request's events are one contiguous run of one partition, in order.
fn assert_contiguous(s: &Sent, found: &[Option<&Place>]) {
    let first = found[0].unwrap();
    for (k, place) in found.iter().enumerate() {
        let place = place.unwrap();
        assert_eq!(
            (place.partition, place.offset),
            (first.partition, first.offset + k as u64),
            "request {:?} via {} is not contiguous in the log",
            s.events.iter().map(|e| &e.0).collect::<Vec<_>>(),
            s.gateway
        );
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_share_one_bucket() {
    let started = Instant::now();
    let bucket = common::new_bucket();
    // Two partitions for three writers: at least two gateways share a home
    // partition (pigeonhole), so the commit race is exercised on every run,
    // and writers that keep losing it move to the other partition.
    let partitions = 2;
    let toml = format!("[streams]\npartitions = {partitions}\n");
    let gateways: Vec<Gateway> = (0..3)
        .map(|g| Gateway::start_with(&format!("g{g}"), &bucket, Some(&toml)))
        .collect();
    let client = client();
    let mut handles = Vec::new();
    for (g, gw) in gateways.iter().enumerate() {
        handles.extend(Load::new(&client, gw, &format!("three-g{g}"), 15, Mode::Durable).spawn(8));
    }
    let sent = join_all(handles).await;
    eprintln!("three_gateways: {}", summary(&sent));
    // Healthy gateways on a healthy store: nothing may fail (a connection
    // error or 503 here is a bug, not bad luck).
    let failed = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Failed(_)))
        .count();
    assert_eq!(failed, 0, "requests failed: {}", summary(&sent));

    let view = read_log(&bucket, partitions).await;
    let acked = verify(&sent, &view);
    let events: usize = sent.iter().map(|s| s.events.len()).sum();
    assert_eq!(acked.len(), events);
    assert_eq!(
        view.total, events as u64,
        "the log holds exactly what was acked"
    );
    eprintln!(
        "three_gateways: {events} events, heads {:?}, {:?}",
        view.heads,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_carries_on() {
    let started = Instant::now();
    let bucket = common::new_bucket();
    let client = client();

    let mut a = Gateway::start("A", &bucket);
    let (load, mut progress) = Load::new(&client, &a, "kill-a", 60, Mode::Durable).until_gone();
    let handles = load.spawn(8);
    wait_progress(&mut progress, 40, "gateway A").await;
    // SIGKILL while the clients keep posting (their requests are in flight).
    a.kill();
    let mut sent = join_all(handles).await;
    eprintln!("sigkill: before restart {}", summary(&sent));
    let before = heads(&bucket, DEFAULT_PARTITIONS).await;

    let b = Gateway::start("A'", &bucket);
    let after = join_all(Load::new(&client, &b, "kill-b", 10, Mode::Durable).spawn(8)).await;
    eprintln!("sigkill: after restart {}", summary(&after));
    let restarted_acks: Vec<(u32, u64)> = after
        .iter()
        .filter_map(|s| match s.outcome {
            Outcome::Durable {
                partition,
                first_offset,
            } => Some((partition, first_offset)),
            _ => None,
        })
        .collect();
    assert!(
        !restarted_acks.is_empty(),
        "the restarted gateway acked nothing: {}",
        summary(&after)
    );
    // Acks after the restart continue after the log A left behind.
    for (p, first) in &restarted_acks {
        assert!(
            *first >= before[*p as usize],
            "restarted gateway acked partition {p} offset {first}, below the head {} left by A",
            before[*p as usize]
        );
    }
    sent.extend(after);

    let view = read_log(&bucket, DEFAULT_PARTITIONS).await;
    let acked = verify(&sent, &view);
    let acked_events: usize = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Durable { .. }))
        .map(|s| s.events.len())
        .sum();
    assert_eq!(
        acked.len(),
        acked_events,
        "acked (partition, offset) pairs are distinct"
    );
    eprintln!(
        "sigkill: heads before restart {before:?}, at end {:?}, {:?}",
        view.heads,
        started.elapsed()
    );
}

/// Load a new gateway on `bucket`, SIGTERM it once `after` requests
/// succeeded, and require a clean exit. Returns every request sent.
async fn sigterm_round(
    bucket: &str,
    client: &reqwest::Client,
    name: &str,
    mode: Mode,
    after: usize,
) -> Vec<Sent> {
    let mut gw = Gateway::start(name, bucket);
    let tag = format!("term-{name}");
    let (load, mut progress) = Load::new(client, &gw, &tag, 60, mode).until_gone();
    let handles = load.spawn(8);
    wait_progress(&mut progress, after, name).await;
    let signalled = Instant::now();
    gw.sigterm();
    let sent = join_all(handles).await;
    let status = gw.wait_exit(Duration::from_secs(45)).await;
    let status = status.unwrap_or_else(|| {
        panic!(
            "gateway {name} did not exit within 45 s of SIGTERM; stderr:\n{}",
            gw.stderr()
        )
    });
    assert!(
        status.success(),
        "gateway {name} exited with {status} after SIGTERM; stderr:\n{}",
        gw.stderr()
    );
    eprintln!(
        "sigterm: {name} exited {:?} after the signal; {}",
        signalled.elapsed(),
        summary(&sent)
    );
    assert!(
        sent.iter().any(|s| s.outcome == Outcome::Async),
        "{name}: no async request was accepted: {}",
        summary(&sent)
    );
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_acked_event() {
    let started = Instant::now();
    let bucket = common::new_bucket();
    let client = client();
    // Durable and async requests in flight when the signal comes.
    let mut sent = sigterm_round(&bucket, &client, "T1", Mode::Mixed, 30).await;
    // Only async requests: their buffered events are committed by the
    // shutdown flush alone, never by a durable request's segment.
    sent.extend(sigterm_round(&bucket, &client, "T2", Mode::Async, 60).await);

    let view = read_log(&bucket, DEFAULT_PARTITIONS).await;
    verify(&sent, &view);
    eprintln!("sigterm: heads {:?}, {:?}", view.heads, started.elapsed());
}
