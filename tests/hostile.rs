//! Hostile requests against a real `sluice serve` process: each gets its
//! documented status (and problem type) or close, and the process's peak
//! resident memory stays within its budget.
//!
//! One gateway child process with small limits (a config file), then the
//! campaign, one case at a time: decompression bombs, 10 000-deep nesting,
//! invalid UTF-8, huge headers, slowloris heads and bodies, 10 000 idle
//! connections, an oversized WebSocket frame. After each case the child's
//! `VmHWM` (peak RSS, /proc/PID/status) is read; the table
//! `| input | expected | got | peak RSS MiB |` is printed at the end, and
//! every mismatch fails the test at once with the table so far.
//! Run: `cargo test --test hostile -- --nocapture`.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Timeouts the campaign's gateway runs with (short, so slowloris is fast).
const HEADER_TIMEOUT: Duration = Duration::from_millis(5_000);
const BODY_TIMEOUT: Duration = Duration::from_millis(1_500);
/// How late after its timeout a cut-off may come (scheduling on a busy machine).
const MARGIN: Duration = Duration::from_millis(2_000);
/// Idle connections opened at once.
const IDLE: usize = 10_000;
/// Connections the gateway serves: the idle ones plus room for a few real clients.
const MAX_CONNECTIONS: usize = IDLE + 20;
/// `batch.memory_budget_bytes` of the campaign's gateway.
const BUDGET: u64 = 64 << 20;
/// Resident memory beyond the budget the process may hold: code, runtime,
/// caches, a few requests' bodies and decoded bodies (the README's
/// "memory_budget_bytes + 64 MiB").
const OVERHEAD: u64 = 64 << 20;
/// What one open, idle connection holds and the budget does not count:
/// hyper's 8 KiB read buffer and 8 KiB header write buffer, the task, the
/// socket (measured here: 19-23 KiB). README "Reliability campaigns".
const PER_CONNECTION: u64 = 32 << 10;
/// Default `limits.max_body_bytes`.
const MAX_BODY: usize = 4 << 20;

const CONFIG: &str = "
[server]
max_connections = MAX_CONNECTIONS
header_read_timeout_ms = HEADER_MS
body_read_timeout_ms = BODY_MS
max_header_bytes = 8192

[batch]
max_age_ms = 50
memory_budget_bytes = BUDGET
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_their_documented_answers_within_the_memory_budget() {
    let mut campaign = Campaign::new(Gateway::start());
    bombs(&mut campaign).await;
    nesting(&mut campaign).await;
    invalid_utf8(&mut campaign).await;
    huge_headers(&mut campaign).await;
    slowloris(&mut campaign).await;
    idle_connections(&mut campaign).await;
    websocket_frame(&mut campaign).await;
    campaign.finish();
}

// ---------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------

async fn bombs(c: &mut Campaign) {
    let gzip = gzip_bomb(1 << 30);
    let zstd = zstd_bomb(1 << 30);
    assert!(gzip.len() < MAX_BODY && zstd.len() < MAX_BODY);
    let expected = "413 too-large (decoded)";
    for (name, encoding, body) in [("gzip", "gzip", &gzip), ("zstd", "zstd", &zstd)] {
        let input = format!("{name} bomb: 1 GiB of zeros in {} KiB", body.len() >> 10);
        let answer = c.post(&[("content-encoding", encoding)], body).await;
        let ok = answer.is(413, "too-large") && answer.detail.contains("max_decoded_bytes");
        c.row(&input, expected, &answer.to_string(), ok);
    }
    // Eight at once: each costs at most its body plus max_decoded_bytes.
    let answers = futures::future::join_all((0..8).map(|_| {
        let (addr, body) = (c.addr, zstd.clone());
        async move { post(addr, &[("content-encoding", "zstd")], &body).await }
    }))
    .await;
    let ok = answers.iter().all(|a| a.is(413, "too-large"));
    let got = answers.first().map(|a| a.to_string()).unwrap_or_default();
    c.row("8 zstd bombs at once", "413 too-large ×8", &got, ok);
}

async fn nesting(c: &mut Campaign) {
    let depth = 10_000;
    let deep = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    let array = format!("[{deep}]");
    // Too deep is a per-event fault (limits.max_depth); all invalid → 422.
    let expected = "422 invalid-events [event-too-deep]";
    for (input, body) in [
        ("object 10 000 deep", &deep),
        ("array of one object 10 000 deep", &array),
    ] {
        let answer = c.post(&[], body.as_bytes()).await;
        let ok = answer.is(422, "invalid-events") && answer.error_types == ["event-too-deep"];
        c.row(input, expected, &answer.with_errors(), ok);
    }
    let ndjson = format!("{{\"ok\":1}}\n{deep}\n");
    let answer = c
        .post(
            &[("content-type", "application/x-ndjson")],
            ndjson.as_bytes(),
        )
        .await;
    let ok = answer.status == 200 && answer.error_types == ["event-too-deep"];
    c.row(
        "NDJSON: one line 10 000 deep",
        "200 [event-too-deep]",
        &answer.with_errors(),
        ok,
    );
}

async fn invalid_utf8(c: &mut Campaign) {
    let answer = c.post(&[], b"{\"a\":\"\xff\xfe\"}").await;
    let ok = answer.is(400, "malformed-json");
    c.row(
        "invalid UTF-8 object",
        "400 malformed-json",
        &answer.to_string(),
        ok,
    );
    let ndjson = b"{\"ok\":1}\n{\"a\":\"\xc3\x28\"}\n";
    let answer = c
        .post(&[("content-type", "application/x-ndjson")], ndjson)
        .await;
    let ok = answer.status == 200 && answer.error_types == ["malformed-event"];
    c.row(
        "invalid UTF-8 NDJSON line",
        "200 [malformed-event]",
        &answer.with_errors(),
        ok,
    );
}

async fn huge_headers(c: &mut Campaign) {
    let one = format!("x-filler: {}\r\n", "y".repeat(64 << 10));
    let many: String = (0..2_000).map(|i| format!("x-h{i}: {i}\r\n")).collect();
    for (input, headers) in [("one 64 KiB header", one), ("2 000 headers", many)] {
        let head = format!(
            "POST /v1/streams/hostile/events HTTP/1.1\r\nhost: x\r\n{headers}content-length: 2\r\n\r\n{{}}"
        );
        let answer = exchange(c.addr, head.as_bytes(), Duration::from_secs(10)).await;
        let ok = answer.status == 431;
        c.row(input, "431", &answer.to_string(), ok);
    }
}

async fn slowloris(c: &mut Campaign) {
    // A head that keeps coming, a byte every 20 ms, for far longer than the timeout.
    let head = format!(
        "POST /v1/streams/hostile/events HTTP/1.1\r\nhost: x\r\nx-slow: {}",
        "a".repeat(1_000)
    );
    let cut = trickle(c.addr, b"", head.as_bytes(), HEADER_TIMEOUT).await;
    let ok = cut
        .closed_after
        .is_some_and(|t| in_window(t, HEADER_TIMEOUT))
        && cut.status.is_none();
    let expected = format!("closed, no answer, ≈{} ms", HEADER_TIMEOUT.as_millis());
    c.row("head: 1 byte / 20 ms", &expected, &cut.to_string(), ok);

    let start =
        b"POST /v1/streams/hostile/events HTTP/1.1\r\nhost: x\r\ncontent-length: 4096\r\n\r\n";
    let body = [b' '; 4096];
    let cut = trickle(c.addr, start, &body, BODY_TIMEOUT).await;
    let ok = cut.closed_after.is_some_and(|t| in_window(t, BODY_TIMEOUT))
        && cut.status == Some(408)
        && cut.text.contains("body-timeout");
    let expected = format!("408 body-timeout, ≈{} ms", BODY_TIMEOUT.as_millis());
    c.row("body: 1 byte / 20 ms", &expected, &cut.to_string(), ok);
}

async fn idle_connections(c: &mut Campaign) {
    open_files::ensure(IDLE as u64 + 512);
    let before = c.gw.memory().now;
    let opened = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let conn = TcpStream::connect(c.addr).await;
        idle.push(conn.expect("connect an idle socket"));
    }
    let open_for = opened.elapsed();
    answered_while_idle(c, opened, before).await;
    let extra = past_max_connections(c, opened, open_for).await;
    let limit = HEADER_TIMEOUT + open_for + MARGIN;
    let closed = all_closed(idle.into_iter().chain(extra), limit).await;
    let got = format!("{closed} of {MAX_CONNECTIONS} closed");
    let ok = closed == MAX_CONNECTIONS;
    c.row(
        "the idle connections",
        "all closed by the header timeout",
        &got,
        ok,
    );
}

/// While they are open (and within max_connections) the gateway answers,
/// and each costs at most [`PER_CONNECTION`] of resident memory.
async fn answered_while_idle(c: &mut Campaign, opened: Instant, before: u64) {
    let asked = Instant::now();
    let answer = c.post(&[], br#"{"while":"idle"}"#).await;
    let each = c.gw.memory().now.saturating_sub(before) / IDLE as u64;
    let ok = answer.status == 200 && opened.elapsed() < HEADER_TIMEOUT && each <= PER_CONNECTION;
    let took = asked.elapsed().as_millis();
    let got = format!(
        "{} after {took} ms; {:.1} KiB RSS per connection",
        answer.status,
        each as f64 / 1024.0
    );
    let expected = format!(
        "200 while they are open; ≤ {} KiB each",
        PER_CONNECTION >> 10
    );
    let input = format!(
        "{IDLE} idle connections (opened in {} ms), then a POST",
        (asked - opened).as_millis()
    );
    c.row(&input, &expected, &got, ok);
}

/// Past max_connections a connection waits in the backlog: with every slot
/// taken, a new request is answered only once the header timeout frees
/// one. Hands back the connections that filled the slots.
async fn past_max_connections(
    c: &mut Campaign,
    opened: Instant,
    open_for: Duration,
) -> Vec<TcpStream> {
    let mut extra = Vec::new();
    for _ in 0..(MAX_CONNECTIONS - IDLE) {
        extra.push(TcpStream::connect(c.addr).await.expect("connect"));
    }
    let waited = Instant::now();
    let answer = c.post(&[], br#"{"past":"max_connections"}"#).await;
    let late = opened.elapsed();
    let ok =
        answer.status == 200 && late >= HEADER_TIMEOUT && late < HEADER_TIMEOUT + open_for + MARGIN;
    let got = format!(
        "{} after {} ms",
        answer.status,
        waited.elapsed().as_millis()
    );
    let expected = format!(
        "waits for the {} ms header timeout, then 200",
        HEADER_TIMEOUT.as_millis()
    );
    c.row("one more past max_connections", &expected, &got, ok);
    extra
}

async fn websocket_frame(c: &mut Campaign) {
    let url = format!("ws://{}/v1/streams/hostile/ws", c.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket upgrade");
    let _ = ws.send(Message::text("x".repeat(MAX_BODY + 1))).await;
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .unwrap_or(None);
    let got = close.map_or("no close frame".to_string(), |code| format!("close {code}"));
    let ok = close == Some(sluice::ingest::ws::CLOSE_TOO_BIG);
    c.row(
        "WebSocket text frame of max_body_bytes + 1",
        "close 1009",
        &got,
        ok,
    );
}

// ---------------------------------------------------------------------------
// The campaign: rows, memory, the table
// ---------------------------------------------------------------------------

struct Campaign {
    gw: Gateway,
    addr: SocketAddr,
    rows: Vec<[String; 4]>,
}

impl Campaign {
    fn new(gw: Gateway) -> Campaign {
        let mut c = Campaign {
            addr: gw.addr,
            gw,
            rows: Vec::new(),
        };
        c.row("(gateway started, idle)", "", "", true);
        c
    }

    async fn post(&self, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        post(self.addr, headers, body).await
    }

    /// One line of the table; a mismatch fails the test here, table printed.
    fn row(&mut self, input: &str, expected: &str, got: &str, ok: bool) {
        let peak = self.gw.memory().peak;
        let mib = format!("{:.0}", peak as f64 / f64::from(1 << 20));
        self.rows
            .push([input.into(), expected.into(), got.into(), mib]);
        if !ok {
            self.print();
            panic!(
                "{input}: expected {expected}, got {got}\n{}",
                self.gw.stderr()
            );
        }
    }

    fn print(&self) {
        println!("\n| input | expected | got | peak RSS MiB |\n|---|---|---|--:|");
        for [input, expected, got, peak] in &self.rows {
            println!("| {input} | {expected} | {got} | {peak} |");
        }
    }

    /// The table, and the memory bound over the whole campaign.
    fn finish(self) {
        let memory = self.gw.memory();
        self.print();
        let connections = MAX_CONNECTIONS as u64 * PER_CONNECTION;
        let bound = BUDGET + OVERHEAD + connections;
        println!(
            "peak RSS {} MiB, now {} MiB; bound {} MiB: memory_budget_bytes {} MiB + {} MiB + max_connections × {} KiB ({} MiB)",
            memory.peak >> 20,
            memory.now >> 20,
            bound >> 20,
            BUDGET >> 20,
            OVERHEAD >> 20,
            PER_CONNECTION >> 10,
            connections >> 20,
        );
        assert!(
            memory.peak <= bound,
            "peak RSS {} B is past {bound} B",
            memory.peak
        );
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP: requests as bytes, answers parsed just enough
// ---------------------------------------------------------------------------

/// What came back: status (0: none), problem `type` suffix, detail, and the
/// `errors[].type` of a 200.
#[derive(Debug, Default)]
struct Answer {
    status: u16,
    problem: String,
    detail: String,
    error_types: Vec<String>,
}

impl Answer {
    /// Status, problem and the per-event error types.
    fn with_errors(&self) -> String {
        format!("{} {} {:?}", self.status, self.problem, self.error_types)
    }

    fn is(&self, status: u16, problem: &str) -> bool {
        self.status == status && self.problem == problem
    }

    fn parse(bytes: &[u8]) -> Answer {
        let text = String::from_utf8_lossy(bytes);
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|t| t.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let str_of = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
        let problem = str_of(&json["type"]);
        Answer {
            status,
            problem: problem.rsplit(':').next().unwrap_or("").to_string(),
            detail: str_of(&json["detail"]),
            error_types: json["errors"]
                .as_array()
                .map(|a| a.iter().map(|e| str_of(&e["type"])).collect())
                .unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.status, self.problem.as_str()) {
            (0, _) => write!(f, "no answer"),
            (s, "") => write!(f, "{s}"),
            (s, p) => write!(f, "{s} {p}: {}", self.detail),
        }
    }
}

async fn post(addr: SocketAddr, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut request = format!(
        "POST /v1/streams/hostile/events HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in headers {
        request.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    exchange(addr, &request, Duration::from_secs(30)).await
}

/// Send `request` on a new connection, read until the server closes it.
async fn exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> Answer {
    let run = async {
        let mut conn = TcpStream::connect(addr).await.ok()?;
        // The server may answer (and close) before it read everything.
        let _ = conn.write_all(request).await;
        let mut out = Vec::new();
        let _ = conn.read_to_end(&mut out).await;
        Some(out)
    };
    match tokio::time::timeout(limit, run).await {
        Ok(Some(bytes)) => Answer::parse(&bytes),
        _ => Answer::default(),
    }
}

/// What a trickling client saw: when the server closed on it, what it said.
struct Cut {
    closed_after: Option<Duration>,
    status: Option<u16>,
    text: String,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.status, self.closed_after) {
            (_, None) => write!(f, "still open"),
            (None, Some(t)) => write!(f, "closed, no answer, after {} ms", t.as_millis()),
            (Some(s), Some(t)) => {
                let problem = Answer::parse(self.text.as_bytes()).problem;
                write!(f, "{s} {problem}, after {} ms", t.as_millis())
            }
        }
    }
}

/// Send `start` at once, then `slow` one byte every 20 ms, until the server
/// answers or closes (bounded: `timeout` + [`MARGIN`]). Timed from connect.
async fn trickle(addr: SocketAddr, start: &[u8], slow: &[u8], timeout: Duration) -> Cut {
    let began = Instant::now();
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(start).await.expect("write the start");
    let (mut rx, mut tx) = conn.into_split();
    let slow = slow.to_vec();
    let writer = tokio::spawn(async move {
        for b in slow {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if tx.write_all(&[b]).await.is_err() {
                break;
            }
        }
        tx
    });
    let mut out = Vec::new();
    let read = tokio::time::timeout(timeout + MARGIN, rx.read_to_end(&mut out)).await;
    writer.abort();
    let closed_after = read.is_ok().then(|| began.elapsed());
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = Some(Answer::parse(&out).status).filter(|s| *s != 0);
    Cut {
        closed_after,
        status,
        text,
    }
}

/// Cut off by a timeout: not before it, and not much after.
fn in_window(t: Duration, timeout: Duration) -> bool {
    t >= timeout.saturating_sub(Duration::from_millis(50)) && t <= timeout + MARGIN
}

/// How many of `conns` the server closes (EOF or reset) within `limit`.
async fn all_closed(conns: impl Iterator<Item = TcpStream>, limit: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + limit;
    let waits = conns.map(|mut conn| async move {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout_at(deadline, conn.read(&mut buf)).await;
        matches!(read, Ok(Ok(0)) | Ok(Err(_)))
    });
    futures::future::join_all(waits)
        .await
        .into_iter()
        .filter(|closed| *closed)
        .count()
}

// ---------------------------------------------------------------------------
// Bombs
// ---------------------------------------------------------------------------

/// `size` zero bytes, gzip'd (one member, one deflate stream).
fn gzip_bomb(size: usize) -> Vec<u8> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..size / chunk.len() {
        z.write_all(&chunk).unwrap();
    }
    z.finish().unwrap()
}

/// `size` zero bytes, zstd'd (one frame, its size unknown to the decoder).
fn zstd_bomb(size: usize) -> Vec<u8> {
    let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..size / chunk.len() {
        z.write_all(&chunk).unwrap();
    }
    z.finish().unwrap()
}

// ---------------------------------------------------------------------------
// The gateway process
// ---------------------------------------------------------------------------

struct Gateway {
    process: common::process::Gateway,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Resident memory of the gateway, in bytes.
struct Memory {
    now: u64,
    peak: u64,
}

impl Gateway {
    /// `sluice serve` with [`CONFIG`] on a file store in a temporary directory.
    fn start() -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let config = CONFIG
            .replace("MAX_CONNECTIONS", &MAX_CONNECTIONS.to_string())
            .replace("HEADER_MS", &HEADER_TIMEOUT.as_millis().to_string())
            .replace("BODY_MS", &BODY_TIMEOUT.as_millis().to_string())
            .replace("BUDGET", &BUDGET.to_string());
        let file = dir.path().join("sluice.toml");
        std::fs::write(&file, config).unwrap();
        open_files::ensure(IDLE as u64 + 512);
        let env = [
            ("SLUICE_CONFIG", file.display().to_string()),
            (
                "SLUICE_STORE",
                format!("file://{}", dir.path().join("data").display()),
            ),
            ("SLUICE_LOG", "warn".to_string()),
        ];
        let env: Vec<_> = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let process = common::process::Gateway::spawn("hostile", &env, None);
        let addr = process.addr.parse().expect("a socket address");
        Gateway {
            process,
            addr,
            _dir: dir,
        }
    }

    fn memory(&self) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))
            .expect("read /proc/PID/status");
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Memory {
            now: kib("VmRSS:") << 10,
            peak: kib("VmHWM:") << 10,
        }
    }

    fn stderr(&self) -> String {
        self.process.stderr()
    }
}

/// The open-file limit: 10 000 idle sockets need as many descriptors in
/// this process and in the gateway (which inherits the limit).
mod open_files {
    use std::process::Command;

    /// Raise the soft limit to `needed` (up to the hard limit), or fail
    /// saying how to raise it.
    pub fn ensure(needed: u64) {
        let (soft, hard) = limits();
        if soft >= needed {
            return;
        }
        let raised = Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={}:{hard}", needed.min(hard)))
            .status()
            .is_ok_and(|s| s.success());
        let (soft, _) = limits();
        assert!(
            raised && soft >= needed,
            "{needed} open files needed but `ulimit -n` is {soft} (hard {hard}); raise it"
        );
    }

    /// Soft and hard `Max open files` from /proc/self/limits.
    fn limits() -> (u64, u64) {
        let text = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap_or("");
        let mut fields = line
            .split_whitespace()
            .skip(3)
            .map(|v| v.parse().unwrap_or(u64::MAX));
        (fields.next().unwrap_or(0), fields.next().unwrap_or(0))
    }
}
