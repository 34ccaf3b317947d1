//! A loopback TCP proxy in front of moto that cuts connections on command:
//! the torn connections a real S3 client sees, on the real S3 protocol.
//!
//! Each client connection gets its own upstream connection; bytes pass
//! through untouched until a rule matches a request (its method, and its
//! request line containing a pattern). Then the connection is cut mid-request
//! (the server never gets it whole), or after the server started answering
//! (the request landed; the client never hears), or halfway through the
//! answer. It only ever closes connections; it never alters a byte.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Where a matched request's connection is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Pass at most half of the request's first chunk on, then close: the
    /// server never gets the whole request.
    MidRequest,
    /// Pass the request on, wait for the server's first answer byte, then
    /// close without passing it back: the request landed, the client
    /// cannot know.
    BeforeResponse,
    /// Pass half of the answer's first chunk back, then close.
    MidResponse,
}

struct Rule {
    method: String,
    pattern: String,
    cut: Cut,
    remaining: u32,
}

/// The proxy; it serves until the test's runtime ends.
pub struct Proxy {
    pub endpoint: String,
    rules: Arc<Mutex<Vec<Rule>>>,
    cuts: Arc<AtomicU64>,
}

impl Proxy {
    /// Listen on a free loopback port and relay to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::default();
        let cuts: Arc<AtomicU64> = Arc::default();
        let (r, c) = (rules.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (r, c) = (r.clone(), c.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, r, c).await;
                    }
                });
            }
        });
        Proxy {
            endpoint,
            rules,
            cuts,
        }
    }

    /// Cut the next `times` requests whose method is `method` (`""`: any)
    /// and whose request line contains `pattern`.
    pub fn cut(&self, method: &str, pattern: &str, cut: Cut, times: u32) {
        self.rules.lock().unwrap().push(Rule {
            method: method.to_string(),
            pattern: pattern.to_string(),
            cut,
            remaining: times,
        });
    }

    /// Drop every rule not yet used up.
    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::SeqCst)
    }

    /// An S3 client for `bucket` that goes through this proxy.
    pub fn s3_client(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_bucket_name(bucket)
                .with_region("us-east-1")
                .with_access_key_id("test")
                .with_secret_access_key("test")
                .build()
                .unwrap(),
        )
    }
}

/// The cut for a chunk that starts a request, if a rule wants one.
fn matching(rules: &Mutex<Vec<Rule>>, chunk: &[u8]) -> Option<Cut> {
    let line_end = chunk.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&chunk[..line_end]).ok()?;
    let method = line.split(' ').next()?;
    if !line.trim_end().ends_with("HTTP/1.1") {
        return None;
    }
    let mut rules = rules.lock().unwrap();
    let rule = rules.iter_mut().find(|r| {
        r.remaining > 0 && (r.method.is_empty() || r.method == method) && line.contains(&r.pattern)
    })?;
    rule.remaining -= 1;
    Some(rule.cut)
}

/// Relay both ways until either side closes or a rule cuts the connection.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    rules: Arc<Mutex<Vec<Rule>>>,
    cuts: Arc<AtomicU64>,
) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let (armed, watch_armed) = watch::channel(None::<Cut>);
    let up = tokio::spawn(requests(client_read, server_write, rules, armed));
    answers(server_read, client_write, watch_armed)
        .await
        .then(|| cuts.fetch_add(1, Ordering::SeqCst));
    up.abort();
}

/// Client → server. A matched request arms its cut for [`answers`].
async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    rules: Arc<Mutex<Vec<Rule>>>,
    armed: watch::Sender<Option<Cut>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let cut = matching(&rules, &buf[..n]);
        let pass = match cut {
            Some(Cut::MidRequest) => n / 2,
            _ => n,
        };
        // Armed before the request goes on, so its answer cannot slip past.
        if cut.is_some() {
            armed.send_replace(cut);
        }
        if to.write_all(&buf[..pass]).await.is_err() {
            return;
        }
        if cut == Some(Cut::MidRequest) {
            return;
        }
    }
}

/// Server → client, until a close or an armed cut; `true` when cut.
async fn answers(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut armed: watch::Receiver<Option<Cut>>,
) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            r = from.read(&mut buf) => r,
            _ = armed.wait_for(|c| *c == Some(Cut::MidRequest)) => return true,
        };
        let n = match read {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let cut = *armed.borrow();
        let pass = match cut {
            Some(Cut::BeforeResponse) => 0,
            Some(Cut::MidResponse) => n / 2,
            _ => n,
        };
        if to.write_all(&buf[..pass]).await.is_err() {
            return false;
        }
        if cut.is_some() {
            // A moment for the half answer to leave before the close.
            let _ = tokio::time::timeout(Duration::from_millis(50), to.flush()).await;
            return true;
        }
    }
}
