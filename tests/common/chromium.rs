//! A real browser for tests: headless Chromium, the in-test web origin that
//! serves it a page, and the page's reports back to the test.
//!
//! - [`PageServer`] binds a fresh `127.0.0.1` port (its [`origin`] is known
//!   before the page is written, for keys' `origins`), then [`serve`]s one
//!   HTML page at `/`, optionally splicing `/v1/…` connections to a gateway
//!   ([`serve_with_api`]) so the page can be same-origin with it.
//! - The page reports by `POST /<what>` with a JSON body (non-JSON is kept as
//!   a string); they come out of [`Reports`] as `(what, body)`.
//! - [`Chromium::open`] starts headless Chromium on a URL, on a fresh profile
//!   and in its own process group, killed whole on drop.
//! - [`Reports::next`] waits for the next report, with a deadline, failing
//!   early (with the end of Chromium's output) if Chromium exits or the page
//!   reports `error`; `progress` reports are remembered for the failure
//!   messages, any other report is returned.
//!
//! Needs `/usr/bin/chromium` (Debian package `chromium`; `tests/run.sh`
//! installs it). Without it a test fails, it does not skip.
//!
//! [`origin`]: PageServer::origin
//! [`serve`]: PageServer::serve
//! [`serve_with_api`]: PageServer::serve_with_api

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How often [`Reports::next`] checks Chromium and the deadline.
const POLL: Duration = Duration::from_millis(250);

/// Headless Chromium on a fresh profile, in its own process group; the whole
/// group is killed on drop (renderers included), pass or fail.
pub struct Chromium {
    child: Child,
    log: PathBuf,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Start it on `url`; panics if Chromium is missing or cannot start.
    pub fn open(url: &str) -> Chromium {
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
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // Without a D-Bus (containers, CI) Chromium logs this on every start.
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains("dbus/")).collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Panic (with Chromium's output) if the browser has exited.
    pub fn check_running(&mut self, waiting_for: &str) {
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

/// One report from the page: the path without `/`, and the JSON body.
pub type Report = (String, Value);

/// The reports of one page, in the order they arrived.
pub struct Reports(mpsc::UnboundedReceiver<Report>);

impl Reports {
    /// The next report other than `progress` (those are only remembered),
    /// failing on the deadline, on Chromium exiting, and on any `error`
    /// report. Checks every 250 ms.
    pub async fn next(
        &mut self,
        chromium: &mut Chromium,
        deadline: Instant,
        waiting_for: &str,
    ) -> Report {
        let mut progress = Value::Null;
        let progress_note = |progress: &Value| match progress {
            Value::Null => String::new(),
            p => format!(" (page progress: {p})"),
        };
        loop {
            match tokio::time::timeout(POLL, self.0.recv()).await {
                Ok(Some((what, body))) if what == "progress" => progress = body,
                Ok(Some((what, body))) if what == "error" => panic!(
                    "the page reported an error while waiting for {waiting_for}: {body}{}; \
                     Chromium's output:\n{}",
                    progress_note(&progress),
                    chromium.log_tail()
                ),
                Ok(Some(report)) => return report,
                Ok(None) => panic!("the page server stopped while waiting for {waiting_for}"),
                Err(_) => {}
            }
            chromium.check_running(waiting_for);
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {waiting_for}{}; Chromium's output:\n{}",
                progress_note(&progress),
                chromium.log_tail()
            );
        }
    }
}

/// A page's origin on a fresh `127.0.0.1` port. Every answer it makes itself
/// closes its connection, so each request the browser makes arrives on a new
/// one.
pub struct PageServer {
    listener: TcpListener,
    origin: String,
}

impl PageServer {
    /// Listen on a fresh `127.0.0.1` port; nothing is served until
    /// [`serve`](Self::serve) or [`serve_with_api`](Self::serve_with_api).
    pub async fn bind() -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        PageServer { listener, origin }
    }

    /// `http://127.0.0.1:<port>`, no trailing `/`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Serve `html` at `/` and take the page's reports (any other request:
    /// 404).
    pub fn serve(self, html: String) -> Reports {
        self.spawn(html, None)
    }

    /// As [`serve`](Self::serve), and also a same-origin reverse proxy: a
    /// connection whose first request is for `/v1/…` is spliced to `gateway`
    /// byte for byte, so the browser sees the gateway's bytes unchanged.
    pub fn serve_with_api(self, html: String, gateway: SocketAddr) -> Reports {
        self.spawn(html, Some(gateway))
    }

    fn spawn(self, html: String, gateway: Option<SocketAddr>) -> Reports {
        let (tx, rx) = mpsc::unbounded_channel();
        let html: Arc<str> = html.into();
        tokio::spawn(async move {
            while let Ok((conn, _)) = self.listener.accept().await {
                tokio::spawn(handle(conn, html.clone(), gateway, tx.clone()));
            }
        });
        Reports(rx)
    }
}

async fn handle(
    mut conn: TcpStream,
    html: Arc<str>,
    gateway: Option<SocketAddr>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let Some(mut request) = read_head(&mut conn).await else {
        return;
    };
    if let Some(gateway) = gateway.filter(|_| request.path.starts_with("/v1/")) {
        // Replay what was read of the request, then pipe both ways.
        let Ok(mut upstream) = TcpStream::connect(gateway).await else {
            return;
        };
        if upstream.write_all(&request.raw).await.is_ok() {
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
        }
        return;
    }
    let Some(body) = read_body(&mut conn, &mut request).await else {
        return;
    };
    let answer = match (request.method.as_str(), request.path.as_str()) {
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

/// One request's head as read from a connection.
struct Request {
    method: String,
    path: String,
    /// `Content-Length`, 0 without one.
    length: usize,
    /// Where the head ends in `raw`.
    head_end: usize,
    /// Every byte read so far: the head and perhaps part of the body.
    raw: Vec<u8>,
}

/// Read one request head (at most about 64 KiB).
async fn read_head(conn: &mut TcpStream) -> Option<Request> {
    let mut raw = Vec::new();
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if raw.len() > 64 * 1024 {
            return None;
        }
        read_more(conn, &mut raw).await?;
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut words = head.split_whitespace();
    let method = words.next()?.to_string();
    let path = words.next()?.to_string();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    Some(Request {
        method,
        path,
        length,
        head_end,
        raw,
    })
}

/// Read the rest of `request`'s `Content-Length` body; returns the body.
async fn read_body(conn: &mut TcpStream, request: &mut Request) -> Option<Vec<u8>> {
    let end = request.head_end + request.length;
    while request.raw.len() < end {
        read_more(conn, &mut request.raw).await?;
    }
    Some(request.raw[request.head_end..end].to_vec())
}

/// Append what the next read brings; `None` on end of stream or an error.
async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    let n = conn.read(&mut chunk).await.ok()?;
    if n == 0 {
        return None;
    }
    buf.extend_from_slice(&chunk[..n]);
    Some(())
}
