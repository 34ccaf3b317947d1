//! An in-process gateway on 127.0.0.1:0 over a chosen store, and log readers.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use sluice::config::Config;
use sluice::log::retry::RetryPolicy;
use sluice::log::Log;
use sluice::server::Gateway;
use sluice::store::Store;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestGateway {
    pub addr: SocketAddr,
    pub store: Store,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestGateway {
    pub async fn start(config: Config, store: Store) -> TestGateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = Gateway::with_store(config, store.clone(), listener);
        let addr = gateway.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.run(async {
            let _ = stopped.await;
        }));
        TestGateway {
            addr,
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Graceful shutdown (as on SIGTERM); returns once everything is flushed.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

/// Every event (envelope line) of one partition of a stream.
pub async fn read_partition(store: &Store, stream: &str, partition: u32) -> Vec<Bytes> {
    let log = Log::new(store.clone(), "reader", RetryPolicy::default());
    let s = log.stream("default", stream);
    log.read(&s, partition, 0, usize::MAX).await.unwrap().events
}

/// The event bytes inside an envelope line.
pub fn event_of(line: &[u8]) -> String {
    let s = std::str::from_utf8(line).unwrap();
    let start = s.find(",\"event\":").unwrap() + ",\"event\":".len();
    s[start..s.len() - 1].to_string()
}

/// A config for tests: memory-friendly defaults, fast flushes.
pub fn test_config() -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    c.batch.max_age_ms = 20;
    c.batch.store_retry_ms = 300;
    c
}

/// Declare `stream` (global defaults) for the default tenant: its metrics
/// carry its name; an undeclared stream's fold into `_other`.
pub fn declare(config: &mut Config, stream: &str) {
    let tenant = config.tenant.clone();
    config
        .tenants
        .entry(tenant)
        .or_default()
        .streams
        .insert(stream.to_string(), Default::default());
}

/// The config in TOML `text`, on `test_config`'s listener and batch
/// settings, validated.
pub fn config_from(text: &str) -> Config {
    let mut config: Config = toml::from_str(text).unwrap();
    let base = test_config();
    (config.listen, config.batch) = (base.listen, base.batch);
    config.validate().unwrap();
    config
}

/// A fresh in-memory store.
pub fn memory() -> Store {
    Store::from_parts(
        std::sync::Arc::new(object_store::memory::InMemory::new()),
        "",
        sluice::store::StoreKind::Memory,
    )
}

/// `test_config` with one partition per stream (simple offsets).
pub fn one_partition() -> Config {
    let mut c = test_config();
    c.streams.partitions = 1;
    c
}

/// The gateway's `/metrics` text.
pub async fn scrape(gw: &TestGateway, client: &reqwest::Client) -> String {
    let resp = client.get(gw.url("/metrics")).send().await.unwrap();
    resp.text().await.unwrap()
}

/// Poll `/metrics` (bounded) until it contains `needle`; panics with `what`.
pub async fn wait_for_metric(gw: &TestGateway, client: &reqwest::Client, needle: &str, what: &str) {
    for _ in 0..2_000 {
        let text = scrape(gw, client).await;
        if text.contains(needle) {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{what}");
}

/// `sluice_http_requests_total` by `(route, status)`.
pub type RequestCounts = BTreeMap<(String, String), u64>;

/// The `sluice_http_requests_total` counters in a `/metrics` text. They are
/// process-wide: compare two readings rather than reading one.
pub fn request_counts(metrics: &str) -> RequestCounts {
    let text = super::exposition::Exposition::parse(metrics);
    text.series("sluice_http_requests_total")
        .map(|s| {
            let label = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
            ((label("route"), label("status")), s.value as u64)
        })
        .collect()
}
