//! A real browser writes cross-origin: headless Chromium loads a page from
//! another local origin that sends one event with `navigator.sendBeacon`
//! (`?key=`, a string body, so `text/plain;charset=UTF-8` and no preflight)
//! and one with `fetch` (`Authorization: Bearer` and `application/json`, so a
//! CORS preflight first). From the origin the key allows, both are committed
//! to the key's tenant; the same page from an origin the key does not allow
//! gets its preflight refused (the `fetch` rejects) and its beacon answered
//! 403 (nothing is committed).
//!
//! Needs `/usr/bin/chromium` (Debian package `chromium`; `tests/run.sh`
//! installs it). Without it the test fails, it does not skip. The browser
//! runs with its normal security model: no `--disable-web-security`.
//!
//! Origins: the gateway listens on `127.0.0.1:G`; two in-test page servers on
//! `127.0.0.1:A` (in the key's `origins`) and `127.0.0.1:B` (in no key's)
//! serve the same page, which talks to `http://127.0.0.1:G`.
//!
//! Results: the page POSTs `/result` to its own server (same-origin) with the
//! beacon's return value and the fetch's status and JSON (or its error), and
//! `/error` on a script error; the test waits on those reports with
//! deadlines and fails early if Chromium exits. A beacon is fire-and-forget
//! and its answer invisible to the page, so the test then waits, bounded, for
//! the gateway to have answered it: `sluice_http_requests_total` on
//! `/metrics` (read with a second, `metrics`-scoped key) by route and status,
//! `ingest` 200 for the allowed beacon, `ingest` 403 for the refused one. A
//! request is counted after its handler returns, so an ingest 200 counted is
//! an event committed; the store is then read to check exactly which events
//! are there. The counters are process-wide, so they are read as deltas, and
//! both pages run in one test, one after the other, so that nothing else in
//! this binary moves them.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::gateway::{event_of, memory, test_config, TestGateway};
use serde_json::{json, Value};
use sluice::auth::keys;
use sluice::config::{KeyConfig, Scope, TenantConfig};
use sluice::log::retry::RetryPolicy;
use sluice::log::Log;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

const CHROMIUM: &str = "/usr/bin/chromium";
const TENANT: &str = "acme";
/// Partitions per stream (the tests' reads cover all of them).
const PARTITIONS: u32 = 1;

/// The test page: one beacon, one fetch, then one `/result` report.
fn page_html(gateway: SocketAddr, key: &str) -> String {
    format!(
        r#"<!doctype html>
<meta charset="utf-8">
<title>sluice CORS</title>
<script>
const G = "http://{gateway}";
const KEY = "{key}";
const report = (what, body) =>
  fetch("/" + what, {{ method: "POST", body: JSON.stringify(body) }});
window.onerror = (message) => report("error", {{ script: String(message) }});
window.onunhandledrejection = (e) => report("error", {{ rejection: String(e.reason) }});
(async () => {{
  const beacon = navigator.sendBeacon(
    G + "/v1/streams/beacons/events?key=" + KEY,
    JSON.stringify({{ kind: "beacon", n: 1 }}));
  let fetched;
  try {{
    const r = await fetch(G + "/v1/streams/clicks/events", {{
      method: "POST",
      headers: {{ "Authorization": "Bearer " + KEY, "Content-Type": "application/json" }},
      body: JSON.stringify({{ kind: "fetch" }}),
    }});
    const text = await r.text();
    let body;
    try {{ body = JSON.parse(text); }} catch (_) {{ body = text; }}
    fetched = {{ status: r.status, body }};
  }} catch (e) {{
    fetched = {{ error: e.name, message: String(e.message) }};
  }}
  report("result", {{ beacon, fetch: fetched }});
}})();
</script>
"#
    )
}

/// One report from the page: the path without `/`, and the JSON body.
type Report = (String, Value);

/// One page origin: serves `html` at `/` and forwards the page's reports.
/// Every answer closes its connection.
async fn serve_page(listener: TcpListener, html: String, reports: mpsc::UnboundedSender<Report>) {
    while let Ok((conn, _)) = listener.accept().await {
        tokio::spawn(handle(conn, html.clone(), reports.clone()));
    }
}

/// Read one request head and its `Content-Length` body: method, path, body.
async fn read_request(conn: &mut TcpStream) -> Option<(String, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut words = head.split_whitespace();
    let (method, path) = (words.next()?.to_string(), words.next()?.to_string());
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((method, path, buf[head_end..head_end + length].to_vec()))
}

async fn handle(mut conn: TcpStream, html: String, reports: mpsc::UnboundedSender<Report>) {
    let Some((method, path, body)) = read_request(&mut conn).await else {
        return;
    };
    let answer = match (method.as_str(), path.as_str()) {
        ("GET", "/") => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
             Cache-Control: no-store\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
            html.len()
        ),
        ("POST", p) => {
            let value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
            let _ = reports.send((p.trim_start_matches('/').to_string(), value));
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_string()
        }
        _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
    };
    let _ = conn.write_all(answer.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// Headless Chromium on a fresh profile, in its own process group; the whole
/// group is killed on drop (renderers included), pass or fail.
struct Chromium {
    child: Child,
    log: PathBuf,
    _profile: tempfile::TempDir,
}

impl Chromium {
    fn open(url: &str) -> Chromium {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: this test needs a real browser; install it with \
             `apt-get install -y chromium` (tests/run.sh does)"
        );
        let profile = tempfile::tempdir().unwrap();
        let log = profile.path().join("chromium.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--password-store=basic",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));
        Chromium {
            child,
            log,
            _profile: profile,
        }
    }

    /// The end of Chromium's output, for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // Without a D-Bus (containers, CI) Chromium logs this on every start.
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains("dbus/")).collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Panic (with Chromium's output) if the browser has exited.
    fn check_running(&mut self, waiting_for: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "Chromium exited ({status}) while waiting for {waiting_for}; its output:\n{}",
                self.log_tail()
            );
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The group id is the child's pid (`process_group(0)`).
        let _ = Command::new("sh")
            .args([
                "-c",
                "kill -s KILL -- -\"$0\"",
                &self.child.id().to_string(),
            ])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The page's `/result`, failing on the deadline, on Chromium exiting and on
/// an `error` report. Checks every 250 ms.
async fn page_result(
    reports: &mut mpsc::UnboundedReceiver<Report>,
    chromium: &mut Chromium,
    deadline: Instant,
    page: &str,
) -> Value {
    let waiting_for = format!("the result of {page}");
    loop {
        match tokio::time::timeout(Duration::from_millis(250), reports.recv()).await {
            Ok(Some((what, body))) if what == "result" => return body,
            Ok(Some((what, body))) => panic!(
                "{page} reported {what:?}: {body}; Chromium's output:\n{}",
                chromium.log_tail()
            ),
            Ok(None) => panic!("the page server of {page} stopped"),
            Err(_) => {}
        }
        chromium.check_running(&waiting_for);
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {waiting_for}; Chromium's output:\n{}",
            chromium.log_tail()
        );
    }
}

/// A key of tenant acme for every stream.
fn key(id: &str, secret: &str, scopes: Vec<Scope>, origins: Vec<String>) -> KeyConfig {
    KeyConfig {
        id: id.into(),
        tenant: TENANT.into(),
        hash: keys::hash_text(secret),
        scopes,
        streams: vec!["*".into()],
        origins,
        rate: None,
    }
}

/// `sluice_http_requests_total` by `(route, status)`.
type Counts = BTreeMap<(String, String), u64>;

/// Requests counted for `route` and `status` since `base`.
fn delta(now: &Counts, base: &Counts, route: &str, status: &str) -> u64 {
    let key = (route.to_string(), status.to_string());
    let get = |c: &Counts| c.get(&key).copied().unwrap_or(0);
    get(now) - get(base)
}

/// The gateway under test and what the test reads it with.
struct Harness {
    gw: TestGateway,
    client: reqwest::Client,
    /// A server key with the `metrics` scope (no origins).
    metrics_key: String,
    /// One deadline for every wait of the test.
    deadline: Instant,
}

impl Harness {
    /// Every event (the bytes inside its envelope) of an acme stream.
    async fn events(&self, stream: &str) -> Vec<String> {
        let log = Log::new(self.gw.store.clone(), "reader", RetryPolicy::default());
        let s = log.stream(TENANT, stream);
        let mut out = Vec::new();
        for p in 0..PARTITIONS {
            let batch = log.read(&s, p, 0, usize::MAX).await.unwrap();
            out.extend(batch.events.iter().map(|e| event_of(e)));
        }
        out
    }

    /// The request counters, from `/metrics`.
    async fn counts(&self) -> Counts {
        let resp = self
            .client
            .get(self.gw.url("/metrics"))
            .bearer_auth(&self.metrics_key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "/metrics with the metrics key");
        let text = resp.text().await.unwrap();
        let label = |line: &str, name: &str| {
            let start = line.find(&format!("{name}=\""))? + name.len() + 2;
            Some(line[start..].split('"').next()?.to_string())
        };
        text.lines()
            .filter(|l| l.starts_with("sluice_http_requests_total{"))
            .filter_map(|l| {
                let count = l.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
                Some(((label(l, "route")?, label(l, "status")?), count))
            })
            .collect()
    }

    /// Poll the counters (bounded) until `done`: a request is counted after
    /// its handler returned, so after an ingest's commit.
    async fn wait_counts(
        &self,
        chromium: &mut Chromium,
        what: &str,
        done: impl Fn(&Counts) -> bool,
    ) -> Counts {
        loop {
            let counts = self.counts().await;
            if done(&counts) {
                return counts;
            }
            chromium.check_running(what);
            assert!(
                Instant::now() < self.deadline,
                "timed out waiting for {what}; requests by (route, status): {counts:?}; \
                 Chromium's output:\n{}",
                chromium.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A page origin on a fresh `127.0.0.1` port: its listener and its origin.
async fn bind_origin() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    (listener, origin)
}

/// Serve `html` on `listener`; the page's reports come out of the receiver.
fn spawn_page(listener: TcpListener, html: &str) -> mpsc::UnboundedReceiver<Report> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(serve_page(listener, html.to_string(), tx));
    rx
}

const BEACON: &str = r#"{"kind":"beacon","n":1}"#;
const CLICK: &str = r#"{"kind":"fetch"}"#;

/// The page from the key's origin: the preflighted fetch gets a durable 200,
/// the beacon is committed. Returns the counters once both are counted.
async fn allowed_origin_commits(
    h: &Harness,
    origin: &str,
    reports: &mut mpsc::UnboundedReceiver<Report>,
    base: &Counts,
) -> Counts {
    let mut chromium = Chromium::open(&format!("{origin}/"));
    let result = page_result(reports, &mut chromium, h.deadline, "page A").await;
    assert_eq!(result["beacon"], true, "sendBeacon queued it: {result}");
    assert_eq!(result["fetch"]["status"], 200, "{result}");
    let ack = &result["fetch"]["body"];
    assert_eq!(
        (&ack["accepted"], &ack["rejected"]),
        (&json!(1), &json!(0)),
        "{result}"
    );
    // The beacon's answer is invisible to the page: wait for its 200.
    let what = format!("the fetch's and the beacon's 200s from {origin}");
    let counts = h
        .wait_counts(&mut chromium, &what, |c| {
            delta(c, base, "ingest", "200") >= 2
        })
        .await;
    assert_eq!(delta(&counts, base, "ingest", "200"), 2, "{counts:?}");
    assert_eq!(delta(&counts, base, "ingest", "403"), 0, "{counts:?}");
    // Counted before the browser saw the 204, so before the fetch resolved.
    assert_eq!(
        delta(&counts, base, "preflight", "204"),
        1,
        "one preflight, for the fetch (none for a text/plain beacon): {counts:?}"
    );
    assert_eq!(h.events("beacons").await, [BEACON]);
    assert_eq!(h.events("clicks").await, [CLICK]);
    counts
}

/// The same page from an origin no key allows: the preflight is refused, so
/// the fetch rejects; the beacon (no preflight) is answered 403.
async fn other_origin_is_refused(
    h: &Harness,
    origin: &str,
    reports: &mut mpsc::UnboundedReceiver<Report>,
    base: &Counts,
) {
    let mut chromium = Chromium::open(&format!("{origin}/"));
    let result = page_result(reports, &mut chromium, h.deadline, "page B").await;
    assert_eq!(result["beacon"], true, "sendBeacon queued it: {result}");
    assert_eq!(result["fetch"]["error"], "TypeError", "must fail: {result}");
    let what = format!("the beacon's 403 from {origin}");
    let counts = h
        .wait_counts(&mut chromium, &what, |c| {
            delta(c, base, "ingest", "403") >= 1
        })
        .await;
    assert_eq!(delta(&counts, base, "ingest", "403"), 1, "{counts:?}");
    assert_eq!(delta(&counts, base, "preflight", "403"), 1, "{counts:?}");
    assert_eq!(delta(&counts, base, "ingest", "200"), 0, "{counts:?}");
    assert_eq!(
        h.events("beacons").await,
        [BEACON],
        "only origin A's beacon"
    );
    assert_eq!(h.events("clicks").await, [CLICK], "only origin A's fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_writes_cross_origin_only_from_allowed_origins() {
    // Two Chromium starts on a loaded 2-core machine: generous, but bounded.
    let deadline = Instant::now() + Duration::from_secs(50);
    // The page needs the gateway's address and the key, the key's config the
    // page's origin: bind the page servers first, give them the page after.
    let (listener_a, origin_a) = bind_origin().await;
    let (listener_b, origin_b) = bind_origin().await;
    let web_key = keys::generate().unwrap();
    let metrics_key = keys::generate().unwrap();
    let mut config = test_config();
    config.streams.partitions = PARTITIONS;
    let acme = TenantConfig::default();
    config.tenants.insert(TENANT.into(), acme);
    config.keys = vec![
        key("web", &web_key, vec![Scope::Write], vec![origin_a.clone()]),
        key("ops", &metrics_key, vec![Scope::Metrics], vec![]),
    ];
    let gw = TestGateway::start(config, memory()).await;
    let html = page_html(gw.addr, &web_key);
    let mut reports_a = spawn_page(listener_a, &html);
    let mut reports_b = spawn_page(listener_b, &html);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let h = Harness {
        gw,
        client,
        metrics_key,
        deadline,
    };

    // One after the other: the counters are process-wide.
    let before = h.counts().await;
    let after_a = allowed_origin_commits(&h, &origin_a, &mut reports_a, &before).await;
    other_origin_is_refused(&h, &origin_b, &mut reports_b, &after_a).await;

    // Why the beacon was refused, as the gateway says it (the browser hides it).
    let resp = h
        .client
        .post(h.gw.url(&format!("/v1/streams/beacons/events?key={web_key}")))
        .header("origin", &origin_b)
        .header("content-type", "text/plain;charset=UTF-8")
        .body(BEACON)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    let problem: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let kind = "urn:sluice:problem:forbidden-origin";
    assert_eq!(problem["type"], kind, "{problem}");

    h.gw.stop().await;
}
