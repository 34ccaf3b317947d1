//! The gateway's own answers: partition heads and the store-request counter
//! on `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use reqwest::StatusCode;
use serde::Deserialize;
use tokio::time::{sleep_until, Instant};

const STORE_REQUESTS: &str = "sluice_store_requests_total";

#[derive(Deserialize)]
struct Described {
    partitions: Vec<PartitionHead>,
}

#[derive(Deserialize)]
struct PartitionHead {
    partition: u32,
    head_offset: u64,
}

async fn get(http: &reqwest::Client, url: &str) -> (StatusCode, bytes::Bytes) {
    let response = http
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status();
    let body = response.bytes().await;
    (status, body.unwrap_or_else(|e| panic!("GET {url}: {e}")))
}

/// `from` that starts every partition at its current head
/// (`0:120,1:98,…`), or `earliest` while the stream has no events.
pub async fn heads(http: &reqwest::Client, addr: SocketAddr, stream: &str) -> String {
    let url = format!("http://{addr}/v1/streams/{stream}");
    let (status, body) = get(http, &url).await;
    if status == StatusCode::NOT_FOUND {
        return "earliest".to_string();
    }
    assert!(status.is_success(), "GET {url}: HTTP {status}");
    let described: Described = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("GET {url}: not the documented shape ({e})"));
    let positions: Vec<String> = described
        .partitions
        .iter()
        .map(|p| format!("{}:{}", p.partition, p.head_offset))
        .collect();
    positions.join(",")
}

/// Store requests made between the window's start and end, by `op`.
pub async fn store_requests_over(
    http: &reqwest::Client,
    addr: SocketAddr,
    start: std::time::Instant,
    end: std::time::Instant,
) -> BTreeMap<String, u64> {
    sleep_until(Instant::from_std(start)).await;
    let before = store_requests(http, addr).await;
    sleep_until(Instant::from_std(end)).await;
    let after = store_requests(http, addr).await;
    after
        .into_iter()
        .map(|(op, n)| {
            let earlier = before.get(&op).copied().unwrap_or(0);
            (op, n.saturating_sub(earlier))
        })
        .collect()
}

/// `sluice_store_requests_total` by `op`, from `GET /metrics`.
async fn store_requests(http: &reqwest::Client, addr: SocketAddr) -> BTreeMap<String, u64> {
    let url = format!("http://{addr}/metrics");
    let (status, body) = get(http, &url).await;
    assert!(status.is_success(), "GET {url}: HTTP {status}");
    let mut by_op = BTreeMap::new();
    for (op, n) in String::from_utf8_lossy(&body).lines().filter_map(sample) {
        *by_op.entry(op).or_insert(0) += n;
    }
    by_op
}

/// `(op, value)` from a line `sluice_store_requests_total{op="…",…} 12`.
fn sample(line: &str) -> Option<(String, u64)> {
    let rest = line.strip_prefix(STORE_REQUESTS)?;
    let (labels, value) = match rest.strip_prefix('{') {
        Some(labelled) => labelled.split_once('}')?,
        None => ("", rest),
    };
    let value: f64 = value.split_whitespace().next()?.parse().ok()?;
    let op = labels.split(',').find_map(|pair| {
        let quoted = pair.trim().strip_prefix("op=\"")?;
        quoted.strip_suffix('"')
    });
    Some((op.unwrap_or("").to_string(), value as u64))
}
