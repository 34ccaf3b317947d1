//! `sluice tail`: follow a stream's events and print them as NDJSON.
//!
//! Owns the follower side of the read path: where each partition starts
//! (`--from`), one follow loop per partition against either a gateway's
//! long-poll route or the bucket itself (no gateway), retries with bounded
//! backoff, the single writer thread that prints whole envelope lines, and
//! the resume position reported on a clean stop. A position retention has
//! deleted stops the tail with [`TailError::Expired`], naming the first
//! retained offset, rather than jumping over the gap; only `earliest`
//! follows the low watermark. The envelopes are printed as
//! the bytes the gateway or the store holds, never re-serialised. The CLI
//! wiring (flags, signals, exit status) lives in `main.rs`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use url::Url;

use crate::log::record::StreamPath;
use crate::log::retry::RetryPolicy;
use crate::log::{Head, Log, LogError, ReadBatch};
use crate::store::{Store, StoreError};

/// Events asked for per read.
const READ_LIMIT: usize = 1_000;
/// How long one long-poll waits at the head (the gateway caps it too).
const LONG_POLL_WAIT_MS: u64 = 25_000;
/// A long-poll answers within its wait; this bounds a hung connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Store mode: how often an idle partition is checked for a new record.
const STORE_POLL: Duration = Duration::from_millis(200);
/// Store mode: an idle partition's head is found again (from the low
/// watermark) once per this many empty polls (every 10 s).
const STORE_REDISCOVER_POLLS: u32 = 50;
/// First and largest pause between retries of a failed request.
const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Batches queued for the writer (each up to `READ_LIMIT` lines).
const QUEUE: usize = 16;
/// After a stop signal, how long the writer may take to finish its line.
const WRITER_GRACE: Duration = Duration::from_secs(5);

/// Why tailing stopped with an error (the CLI exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("--from {spec:?}: {reason} (use earliest, latest or PARTITION:OFFSET,…)")]
    BadStart { spec: String, reason: String },
    #[error("--url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("--store {url:?}: no such directory")]
    NoStoreDir { url: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The gateway refused the request (4xx); `detail` is the problem's.
    #[error("{url}: {status}: {detail}")]
    Rejected {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{url}: unexpected answer: {reason}")]
    BadAnswer { url: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot list the partitions of {prefix}: {source}")]
    List {
        prefix: String,
        source: object_store::Error,
    },
    #[error("partition {partition}: {source}")]
    Log { partition: u32, source: LogError },
    #[error("partition {partition}: offset {offset} has expired (deleted by retention); the first retained offset is {first_offset}. To go on without the deleted events: --from {partition}:{first_offset} (or --from earliest)")]
    Expired {
        partition: u32,
        offset: u64,
        first_offset: u64,
    },
    #[error("partition {partition}: offset {offset} is past the head {head}")]
    PastHead {
        partition: u32,
        offset: u64,
        head: u64,
    },
    #[error("cannot write to stdout: {0}")]
    Output(#[source] std::io::Error),
    #[error("internal error: {0}")]
    Task(String),
}

/// Where one partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The partition's head when tailing starts: only new events.
    Latest,
    /// The first retained offset (the low watermark) when tailing starts.
    Earliest,
    Offset(u64),
}

/// Where every partition starts (`--from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
    /// Named partitions; the others start at latest.
    At(BTreeMap<u32, Position>),
}

impl Start {
    pub fn position(&self, partition: u32) -> Position {
        match self {
            Start::Earliest => Position::Earliest,
            Start::Latest => Position::Latest,
            Start::At(named) => named.get(&partition).copied().unwrap_or(Position::Latest),
        }
    }

    /// Every named partition exists among `partitions`.
    fn check(&self, partitions: u32) -> Result<(), TailError> {
        let Start::At(named) = self else {
            return Ok(());
        };
        match named.keys().find(|p| **p >= partitions) {
            None => Ok(()),
            Some(p) => Err(TailError::BadStart {
                spec: self.to_string(),
                reason: format!("partition {p} does not exist; the stream has {partitions}"),
            }),
        }
    }
}

impl FromStr for Start {
    type Err = TailError;

    fn from_str(spec: &str) -> Result<Self, TailError> {
        match spec {
            "earliest" => return Ok(Start::Earliest),
            "latest" => return Ok(Start::Latest),
            _ => {}
        }
        let bad = |reason: String| TailError::BadStart {
            spec: spec.to_string(),
            reason,
        };
        let mut named = BTreeMap::new();
        for part in spec.split(',') {
            let (p, o) = part
                .split_once(':')
                .ok_or_else(|| bad(format!("{part:?} is not PARTITION:OFFSET")))?;
            let p: u32 = p
                .parse()
                .map_err(|_| bad(format!("partition {p:?} is not a number")))?;
            let o = match o {
                "latest" => Position::Latest,
                "earliest" => Position::Earliest,
                o => Position::Offset(
                    o.parse()
                        .map_err(|_| bad(format!("offset {o:?} is not a number")))?,
                ),
            };
            if named.insert(p, o).is_some() {
                return Err(bad(format!("partition {p} is named twice")));
            }
        }
        Ok(Start::At(named))
    }
}

impl std::fmt::Display for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Start::Earliest => f.write_str("earliest"),
            Start::Latest => f.write_str("latest"),
            Start::At(named) => {
                let parts: Vec<String> = named
                    .iter()
                    .map(|(p, o)| match o {
                        Position::Latest => format!("{p}:latest"),
                        Position::Earliest => format!("{p}:earliest"),
                        Position::Offset(o) => format!("{p}:{o}"),
                    })
                    .collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

/// What to read: a gateway's HTTP API or the bucket directly.
#[derive(Debug, Clone)]
pub enum Source {
    /// Base URL of a gateway (`http://127.0.0.1:8080`) and the API key
    /// (read scope) it wants, if auth is on.
    Gateway { url: String, key: Option<String> },
    /// A store URL as `SLUICE_STORE` takes it, and the tenant to read.
    Store { url: String, tenant: String },
}

/// One `sluice tail` invocation.
#[derive(Debug, Clone)]
pub struct TailOptions {
    pub stream: String,
    pub source: Source,
    pub start: Start,
    /// Partitions when the source cannot say (gateway: the stream has no
    /// events yet; store: at least this many, more if the bucket has them).
    pub partitions: u32,
}

/// How tailing ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// The stop signal: `resume` is the `--from` that continues exactly
    /// after the last printed line of each partition.
    Signal { resume: Start },
    /// The reader of stdout went away (broken pipe).
    OutputClosed,
}

/// Print the stream's events to `out` until `shutdown` resolves or an error.
///
/// `out` is written by one dedicated thread (a blocked stdout then never
/// holds up the runtime or the exit).
pub async fn run<W>(
    opts: TailOptions,
    out: W,
    shutdown: impl Future<Output = ()>,
) -> Result<Stopped, TailError>
where
    W: Write + Send + 'static,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = spawn_writer(out, rx, stop.clone())?;
    let (mut written, mut partitions) = (None, None);
    let mut followers = JoinSet::new();
    tokio::pin!(shutdown);
    let ended = tokio::select! {
        biased;
        _ = &mut shutdown => Ended::Signal,
        r = follow_all(&opts, tx, &mut followers, &mut partitions) => Ended::Followers(r),
        _ = output_gone(&mut writer, &mut written) => Ended::OutputGone,
    };
    // Stop first: a chunk that reaches the writer from now on is not printed.
    stop.store(true, Ordering::SeqCst);
    followers.shutdown().await;
    let written = match written {
        Some(w) => w,
        None => finish_writer(writer).await,
    };
    if let Ended::Followers(Err(e)) = ended {
        return Err(e);
    }
    match (ended, written?) {
        (Ended::Signal, Written::Stopped(printed)) => Ok(Stopped::Signal {
            resume: resume(&opts.start, partitions, printed),
        }),
        _ => Ok(Stopped::OutputClosed),
    }
}

/// Resolves when the writer ended on its own: stdout closed or failed. A
/// writer that ended because every follower did (its queue closed) never
/// resolves here, so the followers' own result decides.
async fn output_gone(
    writer: &mut oneshot::Receiver<Result<Written, TailError>>,
    result: &mut Option<Result<Written, TailError>>,
) {
    let w = writer_result(writer.await);
    let queue_closed = matches!(w, Ok(Written::Stopped(_)));
    *result = Some(w);
    if queue_closed {
        std::future::pending::<()>().await;
    }
}

/// The `--from` that continues after the last printed line: each
/// partition's printed position, else where it was told to start. A
/// partition told `latest` whose head was never learned is left out (latest).
fn resume(start: &Start, partitions: Option<u32>, printed: BTreeMap<u32, Position>) -> Start {
    let Some(partitions) = partitions else {
        return start.clone();
    };
    let positions = (0..partitions).filter_map(|p| {
        let at = printed.get(&p).copied().unwrap_or(start.position(p));
        (at != Position::Latest).then_some((p, at))
    });
    Start::At(positions.collect())
}

enum Ended {
    Signal,
    Followers(Result<(), TailError>),
    OutputGone,
}

/// What the writer did: stopped on request (with the position after the
/// last printed line of each partition), or found stdout closed.
enum Written {
    Stopped(BTreeMap<u32, Position>),
    Closed,
}

type WriterResult = Result<Result<Written, TailError>, oneshot::error::RecvError>;

fn joined<T>(r: Result<Result<T, TailError>, tokio::task::JoinError>) -> Result<T, TailError> {
    r.map_err(|e| TailError::Task(e.to_string()))?
}

fn writer_result(r: WriterResult) -> Result<Written, TailError> {
    r.map_err(|_| TailError::Task("the stdout writer stopped unexpectedly".into()))?
}

/// The writer's result once it has finished its chunk and flushed; a writer
/// stuck on a stdout nobody reads is left behind after `WRITER_GRACE`.
async fn finish_writer(
    writer: oneshot::Receiver<Result<Written, TailError>>,
) -> Result<Written, TailError> {
    match tokio::time::timeout(WRITER_GRACE, writer).await {
        Ok(w) => writer_result(w),
        Err(_) => Ok(Written::Closed),
    }
}

/// Whole lines of one partition, and that partition's position after them.
struct Chunk {
    partition: u32,
    next_offset: u64,
    lines: Bytes,
}

fn spawn_writer<W>(
    out: W,
    rx: mpsc::Receiver<Chunk>,
    stop: Arc<AtomicBool>,
) -> Result<oneshot::Receiver<Result<Written, TailError>>, TailError>
where
    W: Write + Send + 'static,
{
    let (done, result) = oneshot::channel();
    std::thread::Builder::new()
        .name("sluice-tail-writer".into())
        .spawn(move || {
            let _ = done.send(write_lines(out, rx, &stop));
        })
        .map_err(|e| TailError::Task(format!("cannot start the stdout writer: {e}")))?;
    Ok(result)
}

/// The only writer of `out`: a chunk is written whole or not at all, so
/// partitions never interleave mid-line. After `stop`, nothing more starts.
fn write_lines<W: Write>(
    out: W,
    mut rx: mpsc::Receiver<Chunk>,
    stop: &AtomicBool,
) -> Result<Written, TailError> {
    let mut out = std::io::BufWriter::new(out);
    let mut printed = BTreeMap::new();
    while let Some(chunk) = rx.blocking_recv() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let mut wrote = out.write_all(&chunk.lines);
        if wrote.is_ok() && rx.is_empty() {
            wrote = out.flush();
        }
        match wrote {
            Ok(()) => printed.insert(chunk.partition, Position::Offset(chunk.next_offset)),
            Err(e) => return output_error(e),
        };
    }
    match out.flush() {
        Ok(()) => Ok(Written::Stopped(printed)),
        Err(e) => output_error(e),
    }
}

/// A closed stdout (`sluice tail … | head`) ends tailing cleanly.
fn output_error(e: std::io::Error) -> Result<Written, TailError> {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe => Ok(Written::Closed),
        _ => Err(TailError::Output(e)),
    }
}

/// Find the partitions, start one follower each, and wait for the first
/// error (or for all of them to end, which they do only when stdout closed).
async fn follow_all(
    opts: &TailOptions,
    tx: mpsc::Sender<Chunk>,
    followers: &mut JoinSet<Result<(), TailError>>,
    count: &mut Option<u32>,
) -> Result<(), TailError> {
    match &opts.source {
        Source::Gateway { url, key } => {
            let gateway = Arc::new(Gateway::new(url, key.as_deref(), &opts.stream)?);
            let partitions = gateway.partitions(opts.partitions).await?;
            opts.start.check(partitions)?;
            *count = Some(partitions);
            for p in 0..partitions {
                let follow = follow_gateway(gateway.clone(), p, opts.start.position(p), tx.clone());
                followers.spawn(follow);
            }
        }
        Source::Store { url, tenant } => {
            let reader = Arc::new(StoreReader::open(url, tenant, &opts.stream).await?);
            let partitions = reader.partitions(opts.partitions).await?;
            opts.start.check(partitions)?;
            *count = Some(partitions);
            for p in 0..partitions {
                let follow = follow_store(reader.clone(), p, opts.start.position(p), tx.clone());
                followers.spawn(follow);
            }
        }
    }
    drop(tx);
    while let Some(done) = followers.join_next().await {
        joined(done)?;
    }
    Ok(())
}

/// A failed attempt: worth retrying, or final.
enum Failure {
    Transient(String),
    Fatal(TailError),
}

impl From<TailError> for Failure {
    fn from(e: TailError) -> Self {
        Failure::Fatal(e)
    }
}

/// Exponential pause between retries, capped at `BACKOFF_MAX`.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(BACKOFF_INITIAL)
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
    }
}

/// Run `op` until it succeeds or fails for good; transient failures are
/// reported on stderr and retried with backoff, forever (a tail outlives
/// gateway restarts).
async fn retrying<T, F, Fut>(what: &str, mut op: F) -> Result<T, TailError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let (mut backoff, mut attempt) = (Backoff::new(), 0u64);
    loop {
        attempt += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(Failure::Fatal(e)) => return Err(e),
            // The first failure, then about one line per BACKOFF_MAX.
            Err(Failure::Transient(why)) if attempt == 1 || backoff.0 == BACKOFF_MAX => {
                tracing::warn!("{what}: {why}; retrying in {:?}", backoff.0);
            }
            Err(Failure::Transient(why)) => tracing::debug!("{what}: {why}"),
        }
        backoff.wait().await;
    }
}

/// Hand a chunk to the writer; `false` once the writer has gone.
async fn deliver(tx: &mpsc::Sender<Chunk>, chunk: Chunk) -> bool {
    tx.send(chunk).await.is_ok()
}

/// Newline-terminated lines from raw envelope texts.
fn lines_of<'a>(envelopes: impl Iterator<Item = &'a [u8]>) -> Bytes {
    let mut out = BytesMut::new();
    for e in envelopes {
        out.extend_from_slice(e);
        out.extend_from_slice(b"\n");
    }
    out.freeze()
}

/// An error and its sources on one line (reqwest's own text omits the cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

/// A gateway's read API for one stream.
struct Gateway {
    http: reqwest::Client,
    /// `{url}/v1/streams/{stream}`
    stream_url: Url,
    /// `{url}/v1/streams/{stream}/events`
    events_url: Url,
}

#[derive(Deserialize)]
struct Description {
    partitions: Vec<IgnoredAny>,
}

/// One long-poll answer; `events` borrow the body's bytes.
#[derive(Deserialize)]
struct Page<'a> {
    next_offset: u64,
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct ProblemBody {
    detail: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    first_offset: Option<u64>,
}

/// The `type` of a 410 for an offset retention deleted.
const OFFSET_EXPIRED: &str = "urn:sluice:problem:offset-expired";

impl Gateway {
    fn new(base: &str, key: Option<&str>, stream: &str) -> Result<Self, TailError> {
        let bad = |reason: String| TailError::BadUrl {
            url: base.to_string(),
            reason,
        };
        let mut stream_url = Url::parse(base).map_err(|e| bad(e.to_string()))?;
        if !matches!(stream_url.scheme(), "http" | "https") {
            return Err(bad("the gateway URL must be http:// or https://".into()));
        }
        stream_url
            .path_segments_mut()
            .map_err(|()| bad("the URL cannot have a path".into()))?
            .pop_if_empty()
            .extend(["v1", "streams", stream]);
        let mut events_url = stream_url.clone();
        events_url
            .path_segments_mut()
            .map_err(|()| bad("the URL cannot have a path".into()))?
            .push("events");
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = key {
            let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| bad("the API key has characters a header cannot carry".into()))?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("sluice-tail/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(TailError::Client)?;
        Ok(Gateway {
            http,
            stream_url,
            events_url,
        })
    }

    /// GET `url`: the status and body, or a transient failure (no answer).
    async fn get(&self, url: &Url) -> Result<(u16, Bytes), Failure> {
        let sent = self.http.get(url.clone()).send().await;
        let resp = sent.map_err(|e| Failure::Transient(chain(&e)))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Failure::Transient(chain(&e)))?;
        Ok((status, body))
    }

    /// The stream's partition count; `fallback` when it has no events yet.
    async fn partitions(&self, fallback: u32) -> Result<u32, TailError> {
        let url = &self.stream_url;
        retrying("describe", || async {
            match self.get(url).await? {
                (200, body) => {
                    let d: Description = parse(url, &body)?;
                    let n = u32::try_from(d.partitions.len()).unwrap_or(u32::MAX);
                    Ok(if n == 0 { fallback } else { n })
                }
                (404, _) => Ok(fallback),
                (status, body) => Err(refused(url, status, &body)),
            }
        })
        .await
    }

    /// One long-poll from `at` (waiting up to `wait_ms` at the head): the
    /// lines and the offset to ask for next.
    async fn poll(
        &self,
        partition: u32,
        at: Position,
        wait_ms: u64,
    ) -> Result<(Bytes, u64), Failure> {
        let mut url = self.events_url.clone();
        let offset = match at {
            Position::Latest => "latest".to_string(),
            Position::Earliest => "earliest".to_string(),
            Position::Offset(o) => o.to_string(),
        };
        url.query_pairs_mut()
            .append_pair("partition", &partition.to_string())
            .append_pair("offset", &offset)
            .append_pair("limit", &READ_LIMIT.to_string())
            .append_pair("wait", &wait_ms.to_string());
        match self.get(&url).await? {
            (200, body) => {
                let page: Page = parse(&url, &body)?;
                let lines = lines_of(page.events.iter().map(|e| e.get().as_bytes()));
                Ok((lines, page.next_offset))
            }
            (410, body) => Err(expired(partition, at, &url, &body)),
            (status, body) => Err(refused(&url, status, &body)),
        }
    }
}

/// A 410: [`TailError::Expired`] when it is the documented `offset-expired`.
fn expired(partition: u32, at: Position, url: &Url, body: &[u8]) -> Failure {
    let problem = serde_json::from_slice::<ProblemBody>(body).ok();
    match (problem, at) {
        (Some(p), Position::Offset(offset)) if p.kind == OFFSET_EXPIRED => {
            Failure::Fatal(TailError::Expired {
                partition,
                offset,
                first_offset: p.first_offset.unwrap_or(offset),
            })
        }
        _ => refused(url, 410, body),
    }
}

fn parse<'a, T: Deserialize<'a>>(url: &Url, body: &'a [u8]) -> Result<T, TailError> {
    serde_json::from_slice(body).map_err(|e| TailError::BadAnswer {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

/// A non-200 answer: its problem `detail`; 5xx, 408 and 429 are retried.
fn refused(url: &Url, status: u16, body: &[u8]) -> Failure {
    let detail = match serde_json::from_slice::<ProblemBody>(body) {
        Ok(p) => p.detail,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    };
    if status >= 500 || status == 408 || status == 429 {
        return Failure::Transient(format!("{status}: {detail}"));
    }
    Failure::Fatal(TailError::Rejected {
        url: url.to_string(),
        status,
        detail,
    })
}

/// Follow one partition through the gateway's long-poll route.
///
/// The position is known before the first long-poll (for `latest`, one read
/// without waiting finds the head), so a stop at any time can name it.
async fn follow_gateway(
    gateway: Arc<Gateway>,
    partition: u32,
    start: Position,
    tx: mpsc::Sender<Chunk>,
) -> Result<(), TailError> {
    let what = format!("partition {partition}");
    let (mut lines, mut offset) = match start {
        Position::Offset(o) => (Bytes::new(), o),
        Position::Latest | Position::Earliest => {
            retrying(&what, || gateway.poll(partition, start, 0)).await?
        }
    };
    loop {
        let chunk = Chunk {
            partition,
            next_offset: offset,
            lines,
        };
        if !deliver(&tx, chunk).await {
            return Ok(());
        }
        loop {
            let at = Position::Offset(offset);
            let (more, next) =
                retrying(&what, || gateway.poll(partition, at, LONG_POLL_WAIT_MS)).await?;
            if !more.is_empty() || next != offset {
                (lines, offset) = (more, next);
                break;
            }
        }
    }
}

/// The bucket read directly, for one stream.
struct StoreReader {
    log: Log,
    path: StreamPath,
}

impl StoreReader {
    async fn open(url: &str, tenant: &str, stream: &str) -> Result<Self, TailError> {
        // Store::open creates a missing local directory; a tail must not.
        if let Some(dir) = url.strip_prefix("file://").filter(|d| !d.is_empty()) {
            if !std::path::Path::new(dir).is_dir() {
                return Err(TailError::NoStoreDir {
                    url: url.to_string(),
                });
            }
        }
        let store = Store::open(url)?;
        store.check(url).await?;
        let log = Log::new(store, "tail", RetryPolicy::default());
        let path = log.stream(tenant, stream);
        Ok(StoreReader { log, path })
    }

    /// At least `at_least`; more when the bucket holds a higher partition.
    async fn partitions(&self, at_least: u32) -> Result<u32, TailError> {
        self.log
            .partitions(&self.path, at_least)
            .await
            .map_err(|(prefix, source)| TailError::List { prefix, source })
    }

    async fn head(&self, partition: u32) -> Result<Head, Failure> {
        let head = self.log.head(&self.path, partition).await;
        head.map_err(|e| log_failure(partition, e))
    }

    /// The first retained offset (the low watermark), read now.
    async fn first_offset(&self, partition: u32) -> Result<u64, Failure> {
        let mark = self.log.refresh_watermark(&self.path, partition).await;
        mark.map(|w| w.first_offset)
            .map_err(|e| log_failure(partition, e))
    }

    async fn read(&self, partition: u32, offset: u64) -> Result<ReadBatch, Failure> {
        let batch = self
            .log
            .read(&self.path, partition, offset, READ_LIMIT)
            .await;
        batch.map_err(|e| log_failure(partition, e))
    }

    /// The head after the record at `head.next_seq`, if that record exists yet.
    async fn advance(&self, partition: u32, head: Head) -> Result<Option<Head>, Failure> {
        let record = self.log.record(&self.path, partition, head.next_seq).await;
        let record = record.map_err(|e| log_failure(partition, e))?;
        Ok(record.map(|r| Head {
            next_seq: head.next_seq + 1,
            next_offset: r.next_offset(),
        }))
    }
}

fn log_failure(partition: u32, e: LogError) -> Failure {
    match e {
        LogError::Unavailable { .. } => Failure::Transient(e.to_string()),
        LogError::Expired {
            partition,
            offset,
            first_offset,
        } => Failure::Fatal(TailError::Expired {
            partition,
            offset,
            first_offset,
        }),
        source => Failure::Fatal(TailError::Log { partition, source }),
    }
}

/// Follow one partition in the bucket: read up to the known head, then
/// check for the next record every `STORE_POLL` (one GET when idle).
async fn follow_store(
    reader: Arc<StoreReader>,
    partition: u32,
    start: Position,
    tx: mpsc::Sender<Chunk>,
) -> Result<(), TailError> {
    let what = format!("partition {partition}");
    let mut head = retrying(&what, || reader.head(partition)).await?;
    let mut earliest = start == Position::Earliest;
    let mut offset = match start {
        Position::Latest => head.next_offset,
        Position::Earliest => retrying(&what, || reader.first_offset(partition)).await?,
        Position::Offset(o) if o <= head.next_offset => o,
        Position::Offset(offset) => {
            let head = head.next_offset;
            return Err(TailError::PastHead {
                partition,
                offset,
                head,
            });
        }
    };
    let mut chunk = Chunk {
        partition,
        next_offset: offset,
        lines: Bytes::new(),
    };
    loop {
        if !deliver(&tx, chunk).await {
            return Ok(());
        }
        let mut idle = 0u32;
        while offset >= head.next_offset {
            match retrying(&what, || reader.advance(partition, head)).await? {
                Some(next) => head = next,
                None => {
                    idle = idle.wrapping_add(1);
                    // The seq polled may have been garbage collected (only
                    // records older than the retention are): find the head again.
                    if idle % STORE_REDISCOVER_POLLS == 0 {
                        let found = retrying(&what, || reader.head(partition)).await?;
                        if found.next_seq > head.next_seq {
                            head = found;
                            continue;
                        }
                    }
                    tokio::time::sleep(STORE_POLL).await
                }
            }
        }
        let batch = match retrying(&what, || reader.read(partition, offset)).await {
            // `earliest` moved before anything was printed: it means the new watermark.
            Err(TailError::Expired { first_offset, .. }) if earliest && first_offset > offset => {
                offset = first_offset;
                chunk = Chunk {
                    partition,
                    next_offset: offset,
                    lines: Bytes::new(),
                };
                continue;
            }
            other => other?,
        };
        earliest &= batch.events.is_empty();
        if batch.events.is_empty() {
            // The head moved but the record is not readable yet: wait, not spin.
            tokio::time::sleep(STORE_POLL).await;
        }
        offset = batch.next_offset;
        chunk = Chunk {
            partition,
            next_offset: offset,
            lines: lines_of(batch.events.iter().map(|e| e.as_ref())),
        };
    }
}
