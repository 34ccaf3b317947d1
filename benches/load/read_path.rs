//! The read-path scenarios (`delivery`, `fanout`): a paced producer, WebSocket
//! subscribers that time every event from its POST to its delivery, and the
//! gateway's store-request counter scraped at both ends of the measured window.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::plan::{Plan, ReadScenario};
use super::scrape;
use super::server::ServerProcess;

/// `batch.max_age_ms` + `read.poll_interval_ms` + 50 ms, at their defaults.
const DELIVERY_P99_TARGET_MS: f64 = 200.0 + 50.0 + 50.0;
/// How long subscribers get, after the producer's last answer, to receive
/// every event sent in the measured window.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Store req/s with N subscribers over those with 1 that still counts as
/// flat: run-to-run noise on the development VM is about ±15 %.
const FLAT_RATIO: f64 = 1.25;
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The warm-up and the measured window, on a clock the producer and the
/// subscribers share (events carry `t_ns`, nanoseconds since `base`).
#[derive(Clone, Copy)]
pub struct Window {
    base: Instant,
    pub measure_start: Instant,
    pub end: Instant,
}

impl Window {
    fn new(base: Instant, warmup: Duration, measure: Duration) -> Window {
        let measure_start = Instant::now() + warmup;
        Window {
            base,
            measure_start,
            end: measure_start + measure,
        }
    }

    /// Now, as an event's `t_ns`.
    pub fn stamp(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether an event stamped `t_ns` was sent inside the measured window.
    pub fn measured(&self, t_ns: u64) -> bool {
        let sent = self.base + Duration::from_nanos(t_ns);
        self.measure_start <= sent && sent < self.end
    }

    fn secs(&self) -> f64 {
        (self.end - self.measure_start).as_secs_f64()
    }
}

/// Where the subscribers of a step start.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// `from=latest`, as a live client would.
    Latest,
    /// Each partition's head read just before, so every later event is due.
    Head,
}

#[derive(Clone, Copy)]
struct StepSpec {
    scenario: &'static str,
    subscribers: usize,
    rate: f64,
    start: Start,
}

/// One measured window: `subscribers` on the stream named after the scenario.
pub struct Step {
    scenario: &'static str,
    subscribers: usize,
    start: Start,
    secs: f64,
    produced: produce::Produced,
    received: Vec<subscribe::Received>,
    open_errors: Vec<String>,
    /// Store requests made during the window, by `op`.
    store: BTreeMap<String, u64>,
    peak_rss_kib: Option<u64>,
}

/// What the steps of one scenario share.
struct Ctx<'a> {
    server: &'a ServerProcess,
    http: reqwest::Client,
    base: Instant,
    warmup: Duration,
    measure: Duration,
}

/// Every read scenario of the plan, each on a fresh gateway.
pub fn run(runtime: &tokio::runtime::Runtime, plan: &Plan) -> Vec<Step> {
    let mut steps = Vec::new();
    for scenario in &plan.reads {
        let server = ServerProcess::plain_gateway();
        steps.extend(runtime.block_on(run_scenario(&server, plan, scenario)));
    }
    steps
}

async fn run_scenario(server: &ServerProcess, plan: &Plan, read: &ReadScenario) -> Vec<Step> {
    let ctx = Ctx {
        server,
        http: http_client(),
        base: Instant::now(),
        warmup: plan.warmup,
        measure: plan.measure,
    };
    let (rate, counts, start, knob) = match read {
        ReadScenario::Delivery { rate } => {
            (*rate, vec![1], Start::Latest, "SLUICE_LOAD_DELIVERY_RATE")
        }
        ReadScenario::Fanout { rate, subscribers } => (
            *rate,
            subscribers.clone(),
            Start::Head,
            "SLUICE_LOAD_FANOUT_SUBSCRIBERS",
        ),
    };
    let most = counts.iter().copied().max().unwrap_or(0);
    super::limits::check_sockets(read.name(), most + producer_sockets(rate), knob);
    let mut steps = Vec::new();
    for subscribers in counts {
        let spec = StepSpec {
            scenario: read.name(),
            subscribers,
            rate,
            start,
        };
        steps.push(run_step(&ctx, spec).await);
    }
    steps
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .build()
        .expect("build the producer's HTTP client")
}

/// Connections the open-loop producer holds: a durable POST takes ~250 ms.
fn producer_sockets(rate: f64) -> usize {
    (rate * 0.5).ceil() as usize + 8
}

/// Subscribes, then runs the producer through the warm-up and the
/// measured window, then gives the subscribers time to catch up.
async fn run_step(ctx: &Ctx<'_>, spec: StepSpec) -> Step {
    let addr = ctx.server.addr;
    eprintln!(
        "load: {} against the gateway at {addr}: {} subscribers, {} POST/s, {:?} warm-up, {:?} measured",
        spec.scenario, spec.subscribers, spec.rate, ctx.warmup, ctx.measure
    );
    let (sockets, open_errors) = open_subscriptions(ctx, spec).await;
    let window = Window::new(ctx.base, ctx.warmup, ctx.measure);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let subscribers: Vec<_> = sockets
        .into_iter()
        .map(|socket| subscribe::spawn(socket, window, stopped.clone()))
        .collect();
    let url = format!("http://{addr}/v1/streams/{}/events", spec.scenario);
    let producer = tokio::spawn(produce::run(ctx.http.clone(), url, spec.rate, window));
    let store =
        scrape::store_requests_over(&ctx.http, addr, window.measure_start, window.end).await;
    let produced = producer.await.expect("the producer panicked");
    subscribe::drain(&subscribers, produced.measured_ok, DRAIN_TIMEOUT).await;
    stop.send_replace(true);
    Step {
        scenario: spec.scenario,
        subscribers: spec.subscribers,
        start: spec.start,
        secs: window.secs(),
        produced,
        received: subscribe::join(subscribers).await,
        open_errors,
        store,
        peak_rss_kib: ctx.server.peak_rss_kib(),
    }
}

async fn open_subscriptions(
    ctx: &Ctx<'_>,
    spec: StepSpec,
) -> (Vec<subscribe::Socket>, Vec<String>) {
    let addr = ctx.server.addr;
    let from = match spec.start {
        Start::Latest => "latest".to_string(),
        Start::Head => scrape::heads(&ctx.http, addr, spec.scenario).await,
    };
    subscribe::connect(addr, spec.scenario, &from, spec.subscribers).await
}

impl Step {
    fn store_per_sec(&self) -> f64 {
        self.store.values().sum::<u64>() as f64 / self.secs
    }

    /// Measured events received by the subscriber that got the fewest.
    fn fewest_delivered(&self) -> u64 {
        let fewest = self.received.iter().map(|r| r.measured).min();
        if self.open_errors.is_empty() {
            fewest.unwrap_or(0)
        } else {
            0
        }
    }

    fn latency_us(&self) -> Histogram<u64> {
        let mut all = subscribe::latency_histogram();
        for received in &self.received {
            all.add(&received.latency_us)
                .expect("histograms with the same bounds merge");
        }
        all
    }

    fn first_error(&self) -> Option<&str> {
        let received = self.received.iter().find_map(|r| r.error.as_deref());
        self.open_errors.first().map(String::as_str).or(received)
    }
}

/// The read-path table, after the write-path one.
pub fn print(plan: &Plan, steps: &[Step]) {
    if steps.is_empty() {
        return;
    }
    println!();
    println!(
        "sluice read path: {:?} measured after {:?} warm-up per step, file store, \
         one gateway per scenario (its steps share it)",
        plan.measure, plan.warmup
    );
    println!();
    println!(
        "| scenario | subscribers | POST/s | events sent | delivered (fewest per subscriber) \
         | p50 ms | p99 ms | p99.9 ms | max ms | store req/s | ÷ 1 subscriber \
         | server peak RSS MiB | target |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|");
    for step in steps {
        print_row(step, steps);
    }
    println!();
    println!(
        "Events sent: 2xx POSTs (one event each) sent in the measured window; latency: \
         POST sent → event parsed from a subscriber's frame, for those events, every \
         subscriber merged; store req/s: rise of sluice_store_requests_total (every op) \
         over the window, the producer's own commits included."
    );
    print_notes(steps);
}

fn print_row(step: &Step, steps: &[Step]) {
    let latency = step.latency_us();
    let ms = |quantile: f64| {
        if latency.is_empty() {
            return "–".to_string();
        }
        format!("{:.1}", latency.value_at_quantile(quantile) as f64 / 1000.0)
    };
    println!(
        "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} |",
        step.scenario,
        step.subscribers,
        step.produced.measured_ok as f64 / step.secs,
        step.produced.measured_ok,
        step.fewest_delivered(),
        ms(0.5),
        ms(0.99),
        ms(0.999),
        ms(1.0),
        step.store_per_sec(),
        versus_one_subscriber(step, steps),
        step.peak_rss_kib.map_or("–".to_string(), |kib| format!(
            "{:.0}",
            kib as f64 / 1024.0
        )),
        target(step, steps, &latency),
    );
}

/// This step's store req/s over those of its scenario's 1-subscriber step.
fn ratio_to_one(step: &Step, steps: &[Step]) -> Option<f64> {
    let one = steps
        .iter()
        .find(|s| s.scenario == step.scenario && s.subscribers == 1 && s.start == Start::Head)?;
    let fits = step.start == Start::Head && one.store_per_sec() > 0.0;
    fits.then(|| step.store_per_sec() / one.store_per_sec())
}

fn versus_one_subscriber(step: &Step, steps: &[Step]) -> String {
    ratio_to_one(step, steps).map_or("–".to_string(), |r| format!("{r:.2}"))
}

fn target(step: &Step, steps: &[Step], latency: &Histogram<u64>) -> String {
    if step.start == Start::Head {
        let verdict = match ratio_to_one(step, steps) {
            _ if step.subscribers == 1 => "baseline",
            Some(r) if r <= FLAT_RATIO => "flat",
            Some(_) => "NOT flat",
            None => "no 1-subscriber step",
        };
        return format!("÷ 1 subscriber ≤ {FLAT_RATIO}: {verdict}");
    }
    let p99_ms = latency.value_at_quantile(0.99) as f64 / 1000.0;
    let verdict = if !latency.is_empty() && p99_ms <= DELIVERY_P99_TARGET_MS {
        "met"
    } else {
        "MISSED"
    };
    format!("p99 ≤ {DELIVERY_P99_TARGET_MS:.0} ms: {verdict}")
}

fn print_notes(steps: &[Step]) {
    for step in steps {
        let ops: Vec<String> = step
            .store
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(op, &n)| format!("{op} {:.1}", n as f64 / step.secs))
            .collect();
        println!(
            "- {} ×{}: store req/s by op: {}",
            step.scenario,
            step.subscribers,
            ops.join(", ")
        );
        if let Some(failure) = &step.produced.first_failure {
            println!("  {} POSTs failed; first: {failure}", step.produced.failed);
        }
        if let Some(error) = step.first_error() {
            println!("  first subscriber error: {error}");
        }
    }
}

/// The smoke run's checks: the events reached every subscriber.
pub fn check(steps: &[Step]) {
    for step in steps {
        let name = format!("{} ×{}", step.scenario, step.subscribers);
        let error = step.first_error().unwrap_or("none");
        let sent = step.produced.measured_ok;
        assert!(
            sent > 0,
            "{name}: no POST succeeded ({} failed; first: {})",
            step.produced.failed,
            step.produced.first_failure.as_deref().unwrap_or("none")
        );
        let fewest = step.fewest_delivered();
        assert!(
            fewest > 0,
            "{name}: a subscriber got none of the {sent} events (first error: {error})"
        );
        // Subscribers that start at the head are owed every later event.
        assert!(
            step.start == Start::Latest || fewest == sent,
            "{name}: a subscriber got {fewest} of the {sent} events (first error: {error})"
        );
    }
    println!("load smoke: read path ok ({} steps delivered)", steps.len());
}

/// The producer: single durable events at a fixed rate.
mod produce {
    use std::time::Duration;

    use reqwest::header::CONTENT_TYPE;
    use tokio::task::JoinSet;

    use super::Window;

    #[derive(Default)]
    pub struct Produced {
        /// 2xx answers to POSTs sent inside the measured window.
        pub measured_ok: u64,
        /// Failed POSTs, warm-up included.
        pub failed: u64,
        pub first_failure: Option<String>,
    }

    struct Sent {
        measured: bool,
        outcome: Result<(), String>,
    }

    /// POSTs one event every `1 / rate` s until the window ends. Open loop:
    /// each POST is its own task, so a slow answer never delays the next.
    pub async fn run(http: reqwest::Client, url: String, rate: f64, window: Window) -> Produced {
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        let mut posts = JoinSet::new();
        while ticks.tick().await.into_std() < window.end {
            posts.spawn(post(http.clone(), url.clone(), window));
        }
        let mut produced = Produced::default();
        while let Some(sent) = posts.join_next().await {
            let sent = sent.expect("a POST task panicked");
            match sent.outcome {
                Ok(()) => produced.measured_ok += u64::from(sent.measured),
                Err(e) => {
                    produced.failed += 1;
                    produced.first_failure.get_or_insert(e);
                }
            }
        }
        produced
    }

    async fn post(http: reqwest::Client, url: String, window: Window) -> Sent {
        let t_ns = window.stamp();
        let body = format!(r#"{{"t_ns":{t_ns},"page":"/load/read-path","kind":"probe"}}"#);
        let request = http.post(url).header(CONTENT_TYPE, "application/json");
        Sent {
            measured: window.measured(t_ns),
            outcome: answer(request.body(body).send().await).await,
        }
    }

    async fn answer(sent: reqwest::Result<reqwest::Response>) -> Result<(), String> {
        let response = sent.map_err(|e| format!("POST: {e}"))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| format!("POST: {e}"))?;
        if status.is_success() {
            return Ok(());
        }
        let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        Err(format!("HTTP {status}: {shown}"))
    }
}

/// WebSocket subscribers that count and time the events they receive.
mod subscribe {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use futures::StreamExt;
    use hdrhistogram::Histogram;
    use serde::Deserialize;
    use tokio::net::TcpStream;
    use tokio::sync::watch;
    use tokio::task::JoinHandle;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    use super::Window;

    pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

    /// Latencies above a minute are recorded as a minute.
    const MAX_LATENCY_US: u64 = 60_000_000;

    /// A pushed frame, as far as the harness reads it.
    #[derive(Deserialize)]
    struct Frame {
        events: Vec<Envelope>,
    }

    #[derive(Deserialize)]
    struct Envelope {
        event: Probe,
    }

    #[derive(Deserialize)]
    struct Probe {
        t_ns: u64,
    }

    /// What one subscriber saw.
    pub struct Received {
        /// POST → delivery of the measured events, in microseconds.
        pub latency_us: Histogram<u64>,
        /// Events received that were sent inside the measured window.
        pub measured: u64,
        pub error: Option<String>,
    }

    pub fn latency_histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .expect("the latency histogram's bounds are valid")
    }

    impl Received {
        fn frame(&mut self, text: &str, window: &Window, measured: &AtomicU64) {
            let now = window.stamp();
            let frame = match serde_json::from_str::<Frame>(text) {
                Ok(frame) => frame,
                Err(e) => {
                    let shown = text.chars().take(200).collect::<String>();
                    self.error
                        .get_or_insert(format!("unexpected frame ({e}): {shown}"));
                    return;
                }
            };
            for envelope in frame.events {
                let sent = envelope.event.t_ns;
                if window.measured(sent) {
                    let micros = now.saturating_sub(sent) / 1_000;
                    self.latency_us.saturating_record(micros);
                    self.measured += 1;
                    measured.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    pub struct Subscriber {
        task: JoinHandle<Received>,
        measured: Arc<AtomicU64>,
    }

    /// Opens `n` subscriptions one after another; the errors of those that failed.
    pub async fn connect(
        addr: SocketAddr,
        stream: &str,
        from: &str,
        n: usize,
    ) -> (Vec<Socket>, Vec<String>) {
        let url = format!("ws://{addr}/v1/streams/{stream}/subscribe?from={from}");
        let mut sockets = Vec::with_capacity(n);
        let mut errors = Vec::new();
        for _ in 0..n {
            match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok((socket, _)) => sockets.push(socket),
                Err(e) => errors.push(format!("subscribe {url}: {e}")),
            }
        }
        (sockets, errors)
    }

    /// Reads `socket` until `stop` changes.
    pub fn spawn(socket: Socket, window: Window, stop: watch::Receiver<bool>) -> Subscriber {
        let measured = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(read(socket, window, stop, measured.clone()));
        Subscriber { task, measured }
    }

    async fn read(
        mut socket: Socket,
        window: Window,
        mut stop: watch::Receiver<bool>,
        measured: Arc<AtomicU64>,
    ) -> Received {
        let mut received = Received {
            latency_us: latency_histogram(),
            measured: 0,
            error: None,
        };
        loop {
            let message = tokio::select! {
                _ = stop.changed() => break,
                message = socket.next() => message,
            };
            let ended = match message {
                Some(Ok(Message::Text(text))) => {
                    received.frame(text.as_str(), &window, &measured);
                    continue;
                }
                Some(Ok(Message::Close(close))) => format!("the gateway closed it: {close:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => format!("subscription: {e}"),
                None => "the subscription ended".to_string(),
            };
            received.error.get_or_insert(ended);
            break;
        }
        let _ = socket.close(None).await;
        received
    }

    /// Waits until every live subscriber has `expected` measured events,
    /// or `timeout` passed.
    pub async fn drain(subscribers: &[Subscriber], expected: u64, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let behind = || {
            subscribers
                .iter()
                .any(|s| !s.task.is_finished() && s.measured.load(Ordering::Relaxed) < expected)
        };
        while behind() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn join(subscribers: Vec<Subscriber>) -> Vec<Received> {
        let mut all = Vec::with_capacity(subscribers.len());
        for subscriber in subscribers {
            all.push(subscriber.task.await.expect("a subscriber task panicked"));
        }
        all
    }
}
