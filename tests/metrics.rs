//! `/metrics` after real traffic: every DESIGN §5 metric with its type and
//! labels, stream labels bounded to declared streams, and histogram buckets
//! that resolve a 5 ms commit and a 200 ms flush. One test in this binary:
//! the recorder is process-wide, so nothing else may add series here.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::exposition::{wait_for, Exposition};
use common::gateway::{config_from, memory, TestGateway};

const CONFIG: &str = r#"
[limits]
max_event_bytes = 256
[tenants.default.streams.orders]
partitions = 1
[tenants.default.streams.audited]
dead_letter = true
schema = '{"type":"object","required":["id"]}'
[tenants.default.streams.limited]
rate = { events_per_sec = 1, events_burst = 2 }
[tenants.default.streams.slow]
max_age_ms = 600000
"#;

/// Each DESIGN §5 metric: its type and its label names (`le` aside).
const EXPECTED: &[(&str, &str, &[&str])] = &[
    (
        "sluice_http_requests_total",
        "counter",
        &["route", "status"],
    ),
    (
        "sluice_events_total",
        "counter",
        &["tenant", "stream", "outcome"],
    ),
    (
        "sluice_ingest_bytes_total",
        "counter",
        &["tenant", "stream"],
    ),
    (
        "sluice_segments_committed_total",
        "counter",
        &["tenant", "stream"],
    ),
    (
        "sluice_commit_conflicts_total",
        "counter",
        &["tenant", "stream"],
    ),
    ("sluice_store_errors_total", "counter", &["op"]),
    (
        "sluice_http_request_duration_seconds",
        "histogram",
        &["route"],
    ),
    ("sluice_ack_latency_seconds", "histogram", &[]),
    ("sluice_flush_duration_seconds", "histogram", &[]),
    ("sluice_segment_bytes", "histogram", &[]),
    ("sluice_buffered_bytes", "gauge", &[]),
    ("sluice_buffered_events", "gauge", &[]),
    ("sluice_inflight_requests", "gauge", &[]),
    ("sluice_websocket_connections", "gauge", &["kind"]),
    ("sluice_draining", "gauge", &[]),
];

/// A name no configuration knows: it must never reach `/metrics`.
fn free_text() -> String {
    format!("free-{}", ulid::Ulid::new()).to_lowercase()
}

async fn post(gw: &TestGateway, stream: &str, body: &str) -> u16 {
    let resp = reqwest::Client::new()
        .post(gw.url(&format!("/v1/streams/{stream}/events")))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    resp.status().as_u16()
}

/// One request for each outcome of `sluice_events_total`.
async fn traffic(gw: &TestGateway, free: &str) {
    assert_eq!(
        post(gw, "orders", r#"[{"id":1},{"id":2},{"id":3}]"#).await,
        200
    );
    let big = format!(r#"[{{"id":4}},{{"pad":"{}"}},5]"#, "x".repeat(300));
    assert_eq!(post(gw, "orders", &big).await, 200, "partial success");
    assert_eq!(post(gw, "audited", r#"[{"id":1},{"no_id":2}]"#).await, 200);
    assert_eq!(post(gw, "limited", r#"[{"a":1},{"a":2}]"#).await, 200);
    assert_eq!(post(gw, "limited", r#"[{"a":3},{"a":4}]"#).await, 429);
    assert_eq!(post(gw, free, r#"[{"a":1},{"a":2}]"#).await, 200);
    assert_eq!(post(gw, &format!("{free}-bad"), "[7]").await, 422);
}

fn label_names(e: &Exposition, name: &str) -> BTreeSet<String> {
    let series = match e.types.get(name).map(String::as_str) {
        Some("histogram") => format!("{name}_bucket"),
        _ => name.to_string(),
    };
    e.series(&series)
        .flat_map(|s| s.labels.keys().filter(|k| *k != "le").cloned())
        .collect()
}

/// How long a scrape loop waits for what the traffic implies.
const SETTLE: Duration = Duration::from_secs(5);

/// Poll (bounded) until both WebSocket kinds show one connection.
async fn scrape_with_sockets(gw: &TestGateway) -> Exposition {
    let what = "the WebSocket connections never showed in sluice_websocket_connections";
    wait_for(&gw.url("/metrics"), SETTLE, what, |e| {
        let open = |kind| e.value("sluice_websocket_connections", &[("kind", kind)]);
        open("ingest") == Some(1.0) && open("subscribe") == Some(1.0)
    })
    .await
}

/// Poll (bounded) until `/metrics` shows `want` requests in flight (the
/// scrape included) and `closed` answers of 499 on ingest.
async fn wait_for_inflight(gw: &TestGateway, want: f64, closed: f64) {
    let what = format!("{want} in flight and {closed} answers of 499 on ingest");
    wait_for(&gw.url("/metrics"), SETTLE, &what, |e| {
        let labels = [("route", "ingest"), ("status", "499")];
        let gone = e
            .value("sluice_http_requests_total", &labels)
            .unwrap_or(0.0);
        e.value("sluice_inflight_requests", &[]) == Some(want) && gone == closed
    })
    .await;
}

/// A durable POST whose client hangs up before its ack leaves the in-flight
/// gauge (the autoscaling metric) and counts as a 499.
async fn a_client_that_hangs_up_leaves_inflight(gw: &TestGateway) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"held":1}"#;
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/streams/slow/events HTTP/1.1\r\nHost: sluice\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    wait_for_inflight(gw, 2.0, 0.0).await;
    drop(conn);
    wait_for_inflight(gw, 1.0, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_design_metric_is_exported_with_bounded_labels() {
    let gw = TestGateway::start(config_from(CONFIG), memory()).await;
    let free = free_text();
    traffic(&gw, &free).await;
    let ws = |path: &str| format!("ws://{}/v1/streams/orders/{path}", gw.addr);
    let (ingest, _) = tokio_tungstenite::connect_async(ws("ws")).await.unwrap();
    let (subscribe, _) = tokio_tungstenite::connect_async(ws("subscribe"))
        .await
        .unwrap();
    let e = scrape_with_sockets(&gw).await;
    let text = &e.text;

    for (name, kind, labels) in EXPECTED {
        assert_eq!(
            e.types.get(*name).map(String::as_str),
            Some(*kind),
            "# TYPE of {name}"
        );
        let want: BTreeSet<String> = labels.iter().map(|l| l.to_string()).collect();
        assert_eq!(label_names(&e, name), want, "labels of {name}");
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no help text"
        );
    }
    assert!(
        !text.contains(&free),
        "a stream name a client chose became a label value"
    );

    let events = |stream, outcome| {
        let labels = [
            ("tenant", "default"),
            ("stream", stream),
            ("outcome", outcome),
        ];
        e.value("sluice_events_total", &labels)
    };
    assert_eq!(events("orders", "accepted"), Some(4.0));
    assert_eq!(events("orders", "too_large"), Some(1.0));
    assert_eq!(events("orders", "invalid"), Some(1.0));
    assert_eq!(events("audited", "dead_lettered"), Some(1.0));
    assert_eq!(events("limited", "rate_limited"), Some(2.0));
    assert_eq!(
        events("_other", "accepted"),
        Some(2.0),
        "undeclared streams fold"
    );
    assert_eq!(events("_other", "invalid"), Some(1.0));

    let orders = [("tenant", "default"), ("stream", "orders")];
    assert_eq!(
        e.value("sluice_segments_committed_total", &orders),
        Some(2.0)
    );
    assert_eq!(e.value("sluice_commit_conflicts_total", &orders), Some(0.0));
    let sent = r#"{"id":1}{"id":2}{"id":3}{"id":4}"#.len() as f64;
    assert_eq!(e.value("sluice_ingest_bytes_total", &orders), Some(sent));
    assert_eq!(
        e.value("sluice_store_errors_total", &[("op", "put_segment")]),
        Some(0.0)
    );
    assert_eq!(
        e.value("sluice_inflight_requests", &[]),
        Some(1.0),
        "the scrape itself"
    );
    assert_eq!(e.value("sluice_draining", &[]), Some(0.0));
    assert_eq!(
        e.value(
            "sluice_http_requests_total",
            &[("route", "ingest"), ("status", "429")]
        ),
        Some(1.0)
    );
    let acks = e
        .value("sluice_ack_latency_seconds_count", &[])
        .unwrap_or(0.0);
    assert!(acks >= 5.0, "every durable request's ack is timed: {acks}");

    for name in [
        "sluice_ack_latency_seconds",
        "sluice_flush_duration_seconds",
    ] {
        let bounds: Vec<f64> = e
            .series(&format!("{name}_bucket"))
            .filter_map(|s| s.labels.get("le")?.parse().ok())
            .collect();
        for edge in [0.005, 0.2] {
            assert!(
                bounds.contains(&edge),
                "{name} has no bucket at {edge} s: {bounds:?}"
            );
        }
        assert!(
            bounds.iter().filter(|b| **b <= 0.01).count() >= 3,
            "{name} resolves ms"
        );
    }
    drop((ingest, subscribe));
    a_client_that_hangs_up_leaves_inflight(&gw).await;
    gw.stop().await;
}
