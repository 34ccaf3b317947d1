//! Real `sluice serve` processes and the verifier that holds their acks to
//! the log: spawn, SIGKILL, SIGTERM; post events with unique ids and record
//! what each request got; read a stream back from the store and audit every
//! ack against it. Shared by `tests/cluster.rs` and `benches/chaos.rs`; it
//! must not decide how much load to send or when to kill (its callers do).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use serde_json::Value;
use sluice::log::record::StreamPath;
use sluice::log::retry::RetryPolicy;
use sluice::log::Log;
use sluice::store::{Store, StoreKind};

/// The stream every process test writes to.
pub const STREAM: &str = "clicks";
const START_LIMIT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Gateway processes
// ---------------------------------------------------------------------------

/// A running `sluice serve`; killed (SIGKILL) when dropped.
pub struct Gateway {
    pub name: String,
    pub addr: String,
    child: Child,
    /// stdout's lines after `listening on` (e.g. `metrics on ADDR`).
    stdout: Mutex<mpsc::Receiver<String>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<JoinHandle<()>>,
    _config: Option<tempfile::NamedTempFile>,
}

impl Gateway {
    /// Spawn a gateway on moto's `bucket` with the default configuration.
    pub fn start(name: &str, bucket: &str) -> Gateway {
        Gateway::start_with(name, bucket, None)
    }

    /// Spawn a gateway on moto's `bucket`, with `toml` as its config file.
    pub fn start_with(name: &str, bucket: &str, toml: Option<&str>) -> Gateway {
        Gateway::spawn(name, &super::s3_env(bucket), toml)
    }

    /// Spawn a gateway with `env` (its store: `SLUICE_STORE` and friends) and
    /// `toml` as its config file, and wait (bounded) for `listening on ADDR`.
    pub fn spawn(name: &str, env: &[(String, String)], toml: Option<&str>) -> Gateway {
        let config = toml.map(write_config);
        let mut cmd = serve_command(env, config.as_ref());
        let mut child = cmd.spawn().expect("spawn the sluice binary");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_thread = collect(child.stderr.take().unwrap(), stderr.clone());
        let stdout = watch_stdout(child.stdout.take().unwrap());
        let mut gw = Gateway {
            name: name.to_string(),
            child,
            addr: String::new(),
            stdout: Mutex::new(stdout),
            stderr,
            stderr_thread: Some(stderr_thread),
            _config: config,
        };
        gw.addr = gw.printed("listening on ");
        gw
    }

    /// The address of the metrics listener (`metrics_listen` must be set).
    pub fn metrics_addr(&mut self) -> String {
        self.printed("metrics on ")
    }

    /// The rest of the next stdout line that starts with `prefix` (bounded wait).
    fn printed(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.stdout.lock().unwrap().recv_timeout(left);
            match line {
                Ok(line) => match line.strip_prefix(prefix) {
                    Some(rest) => return rest.to_string(),
                    None => continue,
                },
                Err(e) => {
                    self.kill();
                    panic!(
                        "gateway {} did not print `{prefix}…` ({e:?}); stderr:\n{}",
                        self.name,
                        self.stderr()
                    );
                }
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/streams/{STREAM}/events", self.addr)
    }

    /// The process id (for `/proc/PID/…`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// SIGKILL and reap; waits for the stderr pipe to close (bounded by the kill).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
    }

    /// The exit status, if the process has ended (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Poll (bounded) until the process exits.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
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

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.flush().unwrap();
    f
}

fn serve_command(env: &[(String, String)], config: Option<&tempfile::NamedTempFile>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("serve");
    // Nothing from the caller's own environment may redirect the gateway.
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") || k.starts_with("SLUICE_") {
            cmd.env_remove(k);
        }
    }
    if let Some(f) = config {
        cmd.env("SLUICE_CONFIG", f.path());
    }
    cmd.env("SLUICE_LOG", "info")
        .envs(env.iter().cloned())
        .env("SLUICE_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Append everything `pipe` says to `sink` until it closes.
fn collect(mut pipe: impl Read + Send + 'static, sink: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

/// Sends stdout's lines, and keeps reading it for the child's whole life
/// so it never blocks.
fn watch_stdout(stdout: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line.trim().to_string());
        }
    });
    rx
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap()
}

/// What a request got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200: committed at `first_offset..` of `partition`.
    Durable { partition: u32, first_offset: u64 },
    /// 202: accepted, to be committed later.
    Async,
    /// Connection error or 503: nothing promised.
    Failed(String),
}

/// One request: its events (id, exact JSON sent), what it got, and when.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The gateway process it went to (a restarted gateway is a new name).
    pub gateway: String,
    pub events: Vec<(String, String)>,
    pub outcome: Outcome,
    /// Just before the request was sent.
    pub started: Instant,
    /// When its answer (or failure) was in.
    pub answered: Instant,
}

impl Sent {
    /// Post `events` to `url` (gateway `gateway`) and record the outcome.
    pub async fn post(
        client: &reqwest::Client,
        gateway: &str,
        url: &str,
        events: Vec<(String, String)>,
        respond_async: bool,
    ) -> Sent {
        let started = Instant::now();
        let outcome = post(client, url, &events, respond_async).await;
        Sent {
            gateway: gateway.to_string(),
            events,
            outcome,
            started,
            answered: Instant::now(),
        }
    }

    pub fn is_durable(&self) -> bool {
        matches!(self.outcome, Outcome::Durable { .. })
    }
}

/// One event with a unique `id`: (id, the exact JSON sent).
pub fn event(id: String, k: usize) -> (String, String) {
    let raw = format!(r#"{{"id":"{id}","k":{k},"pad":"{}"}}"#, "x".repeat(k * 10));
    (id, raw)
}

/// POST `events` as one JSON array; panics on an answer no gateway may give.
pub async fn post(
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
        200 | 202 => accepted(status, &bytes, events.len(), respond_async),
        503 => Outcome::Failed(format!("503: {text}")),
        other => panic!("unexpected status {other} from {url}: {text}"),
    }
}

/// The outcome a 200 or 202 body names, checked against what was sent.
fn accepted(status: u16, body: &[u8], sent: usize, respond_async: bool) -> Outcome {
    let text = String::from_utf8_lossy(body);
    let v: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{status} body is not JSON ({e}): {text}"));
    assert_eq!(v["accepted"].as_u64(), Some(sent as u64), "{text}");
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

// ---------------------------------------------------------------------------
// Reading the log back
// ---------------------------------------------------------------------------

/// Where one event sits in the log, and its bytes as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub partition: u32,
    pub offset: u64,
    pub raw: String,
}

/// The whole stream as read with the library reader.
pub struct LogView {
    pub by_id: HashMap<String, Vec<Place>>,
    pub heads: Vec<u64>,
    pub total: u64,
    /// Commit records listed, each with its segment found by a HEAD.
    pub records: u64,
}

/// The store on moto's `bucket` under the root prefix gateways use.
pub fn bucket_store(bucket: &str) -> Store {
    Store::from_parts(super::s3_client(bucket), "root", StoreKind::S3)
}

pub fn reader_log(store: &Store) -> Log {
    Log::new(store.clone(), "reader", RetryPolicy::default())
}

/// Head of every partition (offsets), as the reader sees it now.
pub async fn heads(store: &Store, partitions: u32) -> Vec<u64> {
    let log = reader_log(store);
    let s = log.stream("default", STREAM);
    let mut out = Vec::new();
    for p in 0..partitions {
        out.push(log.head(&s, p).await.unwrap().next_offset);
    }
    out
}

/// Read every partition from 0 to its head: the records chain densely, every
/// listed record's segment exists, every offset below the head is readable.
/// Assumes no garbage collection ran (the log starts at seq 0).
pub async fn read_log(store: &Store, partitions: u32) -> LogView {
    let log = reader_log(store);
    let s = log.stream("default", STREAM);
    let mut view = LogView {
        by_id: HashMap::new(),
        heads: Vec::new(),
        total: 0,
        records: 0,
    };
    for p in 0..partitions {
        let head = log.head(&s, p).await.unwrap();
        check_records(&log, &s, p, head.next_seq, head.next_offset).await;
        view.records += check_segments(&log, &s, p, head.next_seq).await;
        read_events(&log, &s, p, head.next_offset, &mut view).await;
        view.total += head.next_offset;
        view.heads.push(head.next_offset);
    }
    // Nothing beyond the configured partitions.
    let beyond = log.head(&s, partitions).await.unwrap();
    assert_eq!(beyond.next_seq, 0, "records in partition {partitions}");
    view
}

/// Commit records chain: seqs dense from 0, each starting where the last ended.
async fn check_records(log: &Log, s: &StreamPath, p: u32, next_seq: u64, next_offset: u64) {
    let mut expect = 0u64;
    for seq in 0..next_seq {
        let r = log
            .record(s, p, seq)
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
    assert_eq!(expect, next_offset, "partition {p}: head offset");
}

/// List `log/{p}/`: exactly seqs 0..next_seq, and each record's segment
/// answers a HEAD. Returns the number of records.
async fn check_segments(log: &Log, s: &StreamPath, p: u32, next_seq: u64) -> u64 {
    use futures::TryStreamExt;
    let inner = &log.store().inner;
    let listed: Vec<_> = inner.list(Some(&s.log_dir(p))).try_collect().await.unwrap();
    let mut seqs: Vec<u64> = listed
        .iter()
        .map(|m| {
            sluice::log::record::seq_of(&m.location)
                .unwrap_or_else(|| panic!("partition {p}: {} is not a record key", m.location))
        })
        .collect();
    seqs.sort_unstable();
    let dense: Vec<u64> = (0..next_seq).collect();
    assert_eq!(seqs, dense, "partition {p}: listed records are not 0..head");
    for seq in seqs {
        let r = log.record(s, p, seq).await.unwrap().unwrap();
        let key = s.segment(&r.segment);
        if let Err(e) = inner.head(&key).await {
            panic!("partition {p} seq {seq}: segment {key} is missing: {e}");
        }
    }
    next_seq
}

/// Events: dense from 0 to the head, none past it.
async fn read_events(log: &Log, s: &StreamPath, p: u32, head: u64, view: &mut LogView) {
    let mut offset = 0u64;
    let mut rounds = 0;
    while offset < head {
        rounds += 1;
        assert!(rounds <= 100_000, "partition {p}: read loop does not end");
        let batch = log.read(s, p, offset, 500).await.unwrap();
        assert_eq!(batch.first_offset, offset, "partition {p}");
        assert!(
            !batch.events.is_empty(),
            "partition {p}: nothing readable at {offset} below head {head}"
        );
        assert_eq!(
            batch.next_offset,
            offset + batch.events.len() as u64,
            "partition {p}: next_offset does not chain"
        );
        for (i, line) in batch.events.iter().enumerate() {
            let (id, raw) = id_of(p, line);
            view.by_id.entry(id).or_default().push(Place {
                partition: p,
                offset: offset + i as u64,
                raw,
            });
        }
        offset = batch.next_offset;
    }
    assert_eq!(offset, head, "partition {p}");
    let past = log.read(s, p, head, 10).await.unwrap();
    assert!(
        past.events.is_empty(),
        "partition {p}: events past the head"
    );
}

/// The `id` of the event in an envelope line, and the event's bytes.
fn id_of(p: u32, line: &[u8]) -> (String, String) {
    let envelope: Value = serde_json::from_slice(line)
        .unwrap_or_else(|e| panic!("partition {p}: envelope is not JSON ({e}): {line:?}"));
    let id = envelope["event"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("event without id: {envelope}"))
        .to_string();
    (id, super::gateway::event_of(line))
}

// ---------------------------------------------------------------------------
// Holding the acks to the log
// ---------------------------------------------------------------------------

/// What the log says about the requests sent: every broken promise, by kind.
#[derive(Debug, Default)]
pub struct Audit {
    /// Acked (partition, offset) pairs found holding their event.
    pub acked: HashSet<(u32, u64)>,
    /// Durably acked events missing, or not at their acked offset.
    pub lost: Vec<String>,
    /// Ids in the log more than once, and offsets acked twice.
    pub duplicated: Vec<String>,
    /// Async-accepted requests (index into `sent`) missing from the log
    /// (a request partly there is in `other`).
    pub async_missing: Vec<usize>,
    /// Anything else: unknown ids, changed bytes, requests partly or not
    /// contiguously in the log.
    pub other: Vec<String>,
}

impl Audit {
    /// Panic with the first few problems of every kind, async losses included.
    pub fn assert_clean(&self, sent: &[Sent]) {
        let missing: Vec<String> = self
            .async_missing
            .iter()
            .map(|&i| {
                format!(
                    "202 via {} but not in the log: {:?}",
                    sent[i].gateway,
                    ids(&sent[i])
                )
            })
            .collect();
        let kinds = [
            ("lost", &self.lost),
            ("duplicated", &self.duplicated),
            ("async missing", &missing),
            ("other", &self.other),
        ];
        let problems: Vec<String> = kinds
            .iter()
            .filter(|(_, list)| !list.is_empty())
            .map(|(kind, list)| {
                format!(
                    "{} {kind}, e.g. {:?}",
                    list.len(),
                    &list[..list.len().min(5)]
                )
            })
            .collect();
        assert!(problems.is_empty(), "the log breaks promises: {problems:?}");
    }
}

fn ids(s: &Sent) -> Vec<&str> {
    s.events.iter().map(|e| e.0.as_str()).collect()
}

/// Hold every request in `sent` to `view`.
pub fn audit(sent: &[Sent], view: &LogView) -> Audit {
    let mut audit = Audit::default();
    let read: u64 = view.by_id.values().map(|v| v.len() as u64).sum();
    if read != view.total {
        audit
            .other
            .push(format!("{read} events read, heads sum to {}", view.total));
    }
    check_ids(sent, view, &mut audit);
    for (i, s) in sent.iter().enumerate() {
        let found: Vec<Option<&Place>> = s
            .events
            .iter()
            .map(|(id, _)| view.by_id.get(id).map(|p| &p[0]))
            .collect();
        match &s.outcome {
            Outcome::Durable {
                partition,
                first_offset,
            } => check_durable(s, (*partition, *first_offset), &found, &mut audit),
            Outcome::Async if found.iter().all(Option::is_none) => audit.async_missing.push(i),
            Outcome::Async | Outcome::Failed(_) => check_whole(s, &found, &mut audit),
        }
    }
    audit
}

/// No id twice, nothing in the log that was never sent, bytes as sent.
fn check_ids(sent: &[Sent], view: &LogView, audit: &mut Audit) {
    let known: HashMap<&str, &str> = sent
        .iter()
        .flat_map(|s| s.events.iter().map(|(id, raw)| (id.as_str(), raw.as_str())))
        .collect();
    for (id, places) in &view.by_id {
        if places.len() > 1 {
            let at: Vec<(u32, u64)> = places.iter().map(|p| (p.partition, p.offset)).collect();
            audit.duplicated.push(format!("id {id} at {at:?}"));
        }
        match known.get(id.as_str()) {
            None => audit
                .other
                .push(format!("id {id} in the log was never sent")),
            Some(raw) if places[0].raw != *raw => audit
                .other
                .push(format!("id {id}: stored bytes differ from sent")),
            Some(_) => {}
        }
    }
}

/// A 200's events sit at the offsets it named, each offset acked once.
fn check_durable(s: &Sent, ack: (u32, u64), found: &[Option<&Place>], audit: &mut Audit) {
    for (k, ((id, _), place)) in s.events.iter().zip(found).enumerate() {
        let want = (ack.0, ack.1 + k as u64);
        match place {
            None => audit.lost.push(format!(
                "{id} (via {}, ack {want:?}) is not in the log",
                s.gateway
            )),
            Some(p) if (p.partition, p.offset) != want => audit.lost.push(format!(
                "{id} (via {}, ack {want:?}) is at {:?}",
                s.gateway,
                (p.partition, p.offset)
            )),
            Some(_) if !audit.acked.insert(want) => audit
                .duplicated
                .push(format!("offset {want:?} acked twice")),
            Some(_) => {}
        }
    }
}

/// Nothing promised, but a request's events land together or not at all,
/// as one contiguous run of one partition, in order.
fn check_whole(s: &Sent, found: &[Option<&Place>], audit: &mut Audit) {
    let present: Vec<&Place> = found.iter().flatten().copied().collect();
    if present.is_empty() {
        return;
    }
    if present.len() != found.len() {
        audit.other.push(format!(
            "request {:?} via {} is partly in the log",
            ids(s),
            s.gateway
        ));
        return;
    }
    let first = present[0];
    let contiguous = present
        .iter()
        .enumerate()
        .all(|(k, p)| (p.partition, p.offset) == (first.partition, first.offset + k as u64));
    if !contiguous {
        audit.other.push(format!(
            "request {:?} via {} is not contiguous",
            ids(s),
            s.gateway
        ));
    }
}
