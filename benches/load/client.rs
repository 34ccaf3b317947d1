//! The client: keep-alive connections, each a task sending requests back to back.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{watch, Barrier};
use tokio::time::{sleep_until, timeout_at, Instant};

/// The stream every load request posts to (the auth gateway's key may
/// write it); `EVENTS_PATH` names it too.
pub const STREAM: &str = "pageviews";
const EVENTS_PATH: &str = "/v1/streams/pageviews/events";
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
pub const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// Latencies above a minute are recorded as a minute.
const MAX_LATENCY_US: u64 = 60_000_000;
/// 2 significant figures (1 %): small enough for one histogram per connection.
const HISTOGRAM_SIGFIG: u8 = 2;

pub type Sender = SendRequest<Full<Bytes>>;

pub struct LoadSpec {
    pub addr: SocketAddr,
    pub host: String,
    /// `Authorization` of every request, rendered once (a clone shares it).
    pub authorization: Option<HeaderValue>,
    pub body: Bytes,
    pub respond_async: bool,
    pub websocket: bool,
}

impl LoadSpec {
    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::post(EVENTS_PATH)
            .header(HOST, &self.host)
            .header(CONTENT_TYPE, "application/json");
        if self.respond_async {
            request = request.header("prefer", "respond-async");
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        request
            .body(Full::new(self.body.clone()))
            .expect("the request's parts are valid")
    }
}

#[derive(Clone, Copy)]
pub struct PhaseLengths {
    pub warmup: Duration,
    pub measure: Duration,
}

/// When measuring starts and when every task stops, fixed once all are connected.
#[derive(Clone, Copy)]
pub struct Phases {
    pub measure_start: Instant,
    pub end: Instant,
}

#[derive(Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
    pub close: bool,
}

/// What one connection (or, merged, a whole run) saw. Answers and latencies
/// count only inside the measured window; connection errors count throughout.
pub struct Tally {
    /// Latency of 2xx answers, in microseconds.
    pub latency_us: Histogram<u64>,
    pub ok: u64,
    pub non_2xx: u64,
    pub overloaded: u64,
    pub conn_errors: u64,
    pub first_failure: Option<String>,
    /// The first 2xx answer, for the smoke run's contract checks.
    pub sample: Option<Answer>,
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, HISTOGRAM_SIGFIG)
                .expect("the latency histogram's bounds are valid"),
            ok: 0,
            non_2xx: 0,
            overloaded: 0,
            conn_errors: 0,
            first_failure: None,
            sample: None,
        }
    }

    pub fn record(&mut self, answer: &Answer, latency: Duration) {
        if answer.status.is_success() {
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.latency_us.saturating_record(micros);
            self.ok += 1;
            if self.sample.is_none() {
                self.sample = Some(answer.clone());
            }
            return;
        }
        self.non_2xx += 1;
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            self.overloaded += 1;
        }
        if self.first_failure.is_none() {
            let shown = &answer.body[..answer.body.len().min(300)];
            let text = String::from_utf8_lossy(shown);
            self.first_failure = Some(format!("HTTP {}: {text}", answer.status));
        }
    }

    pub fn connection_error(&mut self, what: String) {
        self.conn_errors += 1;
        self.first_failure.get_or_insert(what);
    }

    pub fn merge(&mut self, other: Tally) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with the same bounds merge");
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.overloaded += other.overloaded;
        self.conn_errors += other.conn_errors;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        if self.sample.is_none() {
            self.sample = other.sample;
        }
    }
}

/// Opens `conns` connections, then drives them through the warm-up and the
/// measured window, and returns everything they saw. `start` announces the
/// window once every connection is open.
pub async fn run(
    spec: Arc<LoadSpec>,
    conns: usize,
    lengths: PhaseLengths,
    start: watch::Sender<Option<Phases>>,
) -> Tally {
    let connected = Arc::new(Barrier::new(conns + 1));
    let started = start.subscribe();
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            tokio::spawn(connection_task(
                spec.clone(),
                connected.clone(),
                started.clone(),
            ))
        })
        .collect();
    let opening = Instant::now();
    connected.wait().await;
    eprintln!("load:   connections opened in {:.2?}", opening.elapsed());
    let measure_start = Instant::now() + lengths.warmup;
    start.send_replace(Some(Phases {
        measure_start,
        end: measure_start + lengths.measure,
    }));
    let mut total = Tally::new();
    for task in tasks {
        total.merge(task.await.expect("a load task panicked"));
    }
    total
}

async fn connection_task(
    spec: Arc<LoadSpec>,
    connected: Arc<Barrier>,
    mut started: watch::Receiver<Option<Phases>>,
) -> Tally {
    if spec.websocket {
        return super::ws_load::connection_task(spec, connected, started).await;
    }
    let mut tally = Tally::new();
    let mut sender = connect(&spec, &mut tally, Instant::now() + CONNECT_TIMEOUT).await;
    connected.wait().await;
    let phases = wait_for_start(&mut started).await;
    loop {
        if let Some(open) = sender.take() {
            drive(open, &spec, &phases, &mut tally).await;
        }
        if Instant::now() >= phases.end {
            return tally;
        }
        sender = connect(&spec, &mut tally, phases.end).await;
        if sender.is_none() {
            sleep_until((Instant::now() + RECONNECT_BACKOFF).min(phases.end)).await;
        }
    }
}

pub async fn wait_for_start(started: &mut watch::Receiver<Option<Phases>>) -> Phases {
    let signal = started
        .wait_for(Option::is_some)
        .await
        .expect("the harness keeps the start signal open");
    (*signal).expect("wait_for returns a started signal")
}

pub async fn connect(spec: &LoadSpec, tally: &mut Tally, deadline: Instant) -> Option<Sender> {
    try_connect(spec, deadline)
        .await
        .map_err(|why| tally.connection_error(why))
        .ok()
}

/// A new connection, or why none could be opened by `deadline`.
pub async fn try_connect(spec: &LoadSpec, deadline: Instant) -> Result<Sender, String> {
    match timeout_at(deadline, handshake(spec.addr)).await {
        Ok(Ok(sender)) => Ok(sender),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect: timed out".to_string()),
    }
}

async fn handshake(addr: SocketAddr) -> Result<Sender, Box<dyn Error + Send + Sync>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    // The connection's own errors surface through `sender`.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends requests back to back until the run ends or the connection is
/// gone (an error, or the server asked to close it).
async fn drive(mut sender: Sender, spec: &LoadSpec, phases: &Phases, tally: &mut Tally) {
    loop {
        let sent = Instant::now();
        if sent >= phases.end {
            return;
        }
        let Ok(outcome) = timeout_at(phases.end, send_one(&mut sender, spec)).await else {
            return; // in flight when the run ended: not counted
        };
        match outcome {
            Ok(answer) => {
                if sent >= phases.measure_start {
                    tally.record(&answer, sent.elapsed());
                }
                if answer.close {
                    return;
                }
            }
            Err(e) => {
                tally.connection_error(format!("request: {e}"));
                return;
            }
        }
    }
}

pub async fn send_one(sender: &mut Sender, spec: &LoadSpec) -> Result<Answer, hyper::Error> {
    sender.ready().await?;
    let response = sender.send_request(spec.request()).await?;
    let status = response.status();
    let close = response
        .headers()
        .get(CONNECTION)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        body,
        close,
    })
}
