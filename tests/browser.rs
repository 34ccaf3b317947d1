//! A real browser reads the SSE route: headless Chromium opens an
//! `EventSource` from a test page and must receive the events posted while it
//! listens, in order, each once, with the right `lastEventId`.
//!
//! Needs `/usr/bin/chromium` (Debian package `chromium`; `tests/run.sh`
//! installs it). Without it the test fails, it does not skip.
//!
//! Origin: the gateway has no CORS yet, so the page must be same-origin with
//! the SSE route. Rather than weakening the browser (`--disable-web-security`),
//! the test's page server plays a same-origin reverse proxy: it answers the
//! page and the page's reports itself and splices any connection whose first
//! request is for `/v1/…` to the gateway byte for byte. The browser thus runs
//! with its normal security model and sees the gateway's bytes unchanged, and
//! the test stays valid once CORS exists.
//!
//! Results: the page POSTs `/open` on `es.onopen`, `/error` on `es.onerror`
//! or a script error, `/progress` after each frame, and `/result` (every frame
//! it got, as JSON) once it has all events; the test waits on those reports
//! with deadlines, and fails early if Chromium exits or the page errors.

mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::gateway::{test_config, TestGateway};
use object_store::memory::InMemory;
use serde_json::Value;
use sluice::store::{Store, StoreKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

const CHROMIUM: &str = "/usr/bin/chromium";
/// Events posted while the browser listens.
const N: usize = 5;
const STREAM: &str = "browser";

/// The test page. `from=earliest`: the stream is empty when the page opens,
/// so it must get exactly the N events posted afterwards. (`from=latest` would
/// race: `onopen` fires on the response headers, which the gateway sends
/// before its pump has fixed the start position at the head.)
fn page_html() -> String {
    format!(
        r#"<!doctype html>
<meta charset="utf-8">
<title>sluice SSE</title>
<script>
const N = {N};
const report = (what, body) =>
  fetch("/" + what, {{ method: "POST", body: JSON.stringify(body) }});
const frames = [];
let events = 0, opens = 0, errors = 0;
window.onerror = (message) => report("error", {{ script: String(message) }});
const es = new EventSource("/v1/streams/{STREAM}/events?from=earliest");
es.onopen = () => {{ opens++; report("open", {{ opens }}); }};
es.onerror = () => {{
  errors++;
  report("error", {{ errors, readyState: es.readyState }});
}};
es.addEventListener("events", (m) => {{
  const data = JSON.parse(m.data);
  frames.push({{ lastEventId: m.lastEventId, data }});
  events += data.events.length;
  report("progress", {{ events, lastEventId: m.lastEventId }});
  if (events >= N) {{
    es.close();
    report("result", {{ opens, errors, frames }});
  }}
}});
</script>
"#
    )
}

/// One report from the page: the path without `/`, and the JSON body.
type Report = (String, Value);

/// The page's origin: serves the page, takes the page's reports, and splices
/// `/v1/…` connections to the gateway. Every non-spliced answer closes its
/// connection, so each request the browser makes arrives on a new one.
async fn serve_page(
    listener: TcpListener,
    gateway: SocketAddr,
    reports: mpsc::UnboundedSender<Report>,
) {
    while let Ok((conn, _)) = listener.accept().await {
        tokio::spawn(handle(conn, gateway, reports.clone()));
    }
}

/// Read one request head (and its `Content-Length` body); returns the method,
/// the path, the body, and every byte read (to replay to the gateway).
async fn read_request(conn: &mut TcpStream) -> Option<(String, String, Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut words = head.split_whitespace();
    let method = words.next()?.to_string();
    let path = words.next()?.to_string();
    if path.starts_with("/v1/") {
        return Some((method, path, Vec::new(), buf));
    }
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + length].to_vec();
    Some((method, path, body, buf))
}

async fn handle(mut conn: TcpStream, gateway: SocketAddr, reports: mpsc::UnboundedSender<Report>) {
    let Some((method, path, body, raw)) = read_request(&mut conn).await else {
        return;
    };
    if path.starts_with("/v1/") {
        // Same-origin reverse proxy: replay the request, then pipe both ways.
        let Ok(mut upstream) = TcpStream::connect(gateway).await else {
            return;
        };
        if upstream.write_all(&raw).await.is_ok() {
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
        }
        return;
    }
    let answer = match (method.as_str(), path.as_str()) {
        ("GET", "/") => {
            let html = page_html();
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                 Cache-Control: no-store\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                html.len()
            )
        }
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

/// The next report from the page (`progress` reports only remembered),
/// failing on the deadline, on Chromium exiting, and on any `error` report (a
/// healthy loopback stream never errors). Checks every 250 ms.
async fn next_report(
    reports: &mut mpsc::UnboundedReceiver<Report>,
    chromium: &mut Chromium,
    deadline: Instant,
    waiting_for: &str,
) -> Report {
    let mut progress = Value::Null;
    loop {
        match tokio::time::timeout(Duration::from_millis(250), reports.recv()).await {
            Ok(Some((what, body))) if what == "progress" => progress = body,
            Ok(Some((what, body))) if what == "error" => panic!(
                "the page reported an error while waiting for {waiting_for}: {body} \
                 (progress: {progress}); Chromium's output:\n{}",
                chromium.log_tail()
            ),
            Ok(Some(report)) => return report,
            Ok(None) => panic!("the page server stopped"),
            Err(_) => {}
        }
        chromium.check_running(waiting_for);
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {waiting_for} (page progress: {progress}); \
             Chromium's output:\n{}",
            chromium.log_tail()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_event_source_receives_posted_events_in_order() {
    let started = Instant::now();
    let mut config = test_config();
    config.streams.partitions = 1;
    let store = Store::from_parts(Arc::new(InMemory::new()), "", StoreKind::Memory);
    let gw = TestGateway::start(config, store).await;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page = format!("http://{}/", listener.local_addr().unwrap());
    let (tx, mut reports) = mpsc::unbounded_channel();
    tokio::spawn(serve_page(listener, gw.addr, tx));

    let mut chromium = Chromium::open(&page);
    // First start of a fresh profile can be slow on a loaded 2-core machine.
    let (what, body) = next_report(
        &mut reports,
        &mut chromium,
        started + Duration::from_secs(60),
        "the EventSource to open",
    )
    .await;
    assert_eq!((what.as_str(), &body["opens"]), ("open", &Value::from(1)));

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for i in 0..N {
        let resp = client
            .post(gw.url(&format!("/v1/streams/{STREAM}/events")))
            .header("content-type", "application/json")
            .body(format!(r#"{{"n":{i}}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "durable post {i}");
        let ack: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!(
            (&ack["accepted"], &ack["partition"], &ack["first_offset"]),
            (&Value::from(1), &Value::from(0), &Value::from(i)),
            "{ack}"
        );
    }

    let (what, result) = next_report(
        &mut reports,
        &mut chromium,
        Instant::now() + Duration::from_secs(30),
        "the page's result",
    )
    .await;
    assert_eq!(what, "result", "{result}");
    assert_eq!(result["opens"], 1, "the EventSource reconnected: {result}");
    assert_eq!(result["errors"], 0, "{result}");
    let frames = result["frames"].as_array().expect("frames");
    let mut next = 0u64;
    for frame in frames {
        let data = &frame["data"];
        assert_eq!(data["partition"], 0, "{frame}");
        assert_eq!(data["first_offset"], next, "a gap or a repeat: {frame}");
        for event in data["events"].as_array().expect("events") {
            assert!(event["received_at"].is_string(), "{event}");
            assert_eq!(event["event"], serde_json::json!({ "n": next }), "{event}");
            next += 1;
        }
        assert_eq!(
            frame["lastEventId"],
            format!("0:{next}"),
            "the id is the position after the frame: {frame}"
        );
    }
    assert_eq!(next, N as u64, "{result}");
    assert_eq!(frames.last().unwrap()["lastEventId"], format!("0:{N}"));

    drop(chromium);
    gw.stop().await;
}
