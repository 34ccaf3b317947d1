//! End-to-end ingest over a real socket: body forms, bad inputs, acks,
//! backpressure, store failures and connection hygiene.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use common::gateway::{
    declare, event_of, memory, read_partition, test_config, wait_for_metric, TestGateway,
};
use serde_json::Value;
use sluice::faults::{Fault, FaultyStore};
use sluice::store::{Store, StoreKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Request headers of a case.
type Headers<'a> = &'a [(&'a str, &'a str)];
/// A problem type's suffix.
type Kind = &'static str;

async fn post(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = client.post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json, headers)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Each body form and encoding lands in the store byte-exact, at the acked offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_form_round_trips_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("file://{}", dir.path().display())).unwrap();
    let gw = TestGateway::start(test_config(), store.clone()).await;
    let client = reqwest::Client::new();
    let url = gw.url("/v1/streams/forms/events");
    let ndjson = "{\"n\":1}\n{\"n\": 2 }\n";
    let cases: Vec<(Headers, Vec<u8>, Vec<&str>)> = vec![
        (
            &[("content-type", "application/json")],
            br#"{"a" : 1.50}"#.to_vec(),
            vec![r#"{"a" : 1.50}"#],
        ),
        (
            &[("content-type", "application/json")],
            br#"[{"b":1},{"c":"\u00e9"}]"#.to_vec(),
            vec![r#"{"b":1}"#, r#"{"c":"\u00e9"}"#],
        ),
        (
            &[("content-type", "application/x-ndjson")],
            ndjson.as_bytes().to_vec(),
            vec![r#"{"n":1}"#, r#"{"n": 2 }"#],
        ),
        (
            &[("content-type", "text/plain")],
            br#"{"beacon":true}"#.to_vec(),
            vec![r#"{"beacon":true}"#],
        ),
        (
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            gzip(br#"[{"g":1}]"#),
            vec![r#"{"g":1}"#],
        ),
        (
            &[
                ("content-type", "application/x-ndjson"),
                ("content-encoding", "zstd"),
            ],
            zstd::bulk::compress(ndjson.as_bytes(), 3).unwrap(),
            vec![r#"{"n":1}"#, r#"{"n": 2 }"#],
        ),
    ];
    let mut acked = Vec::new();
    for (headers, body, expected) in cases {
        let (status, json, _) = post(&client, &url, headers, body).await;
        assert_eq!(status, 200, "{json}");
        assert_eq!(json["accepted"], expected.len());
        assert_eq!(json["rejected"], 0);
        assert_eq!(json["errors"], serde_json::json!([]));
        let p = json["partition"].as_u64().unwrap() as u32;
        let o = json["first_offset"].as_u64().unwrap() as usize;
        acked.push((p, o, expected));
    }
    for (p, o, expected) in acked {
        let events = read_partition(&store, "forms", p).await;
        let got: Vec<String> = events[o..o + expected.len()]
            .iter()
            .map(|e| event_of(e))
            .collect();
        assert_eq!(got, expected);
    }
    // DESIGN §2 layout on disk.
    let base = dir.path().join("default/forms");
    assert!(base.join("log").read_dir().unwrap().next().is_some());
    let hours = base
        .join("data")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert!(hours.file_name().to_string_lossy().starts_with("dt="));
    gw.stop().await;
}

/// Valid events beside invalid ones are committed; each invalid one is reported by index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_keeps_valid_events() {
    let store = memory();
    let mut config = test_config();
    config.limits.max_depth = 4;
    config.limits.max_event_bytes = 64;
    let gw = TestGateway::start(config, store.clone()).await;
    let client = reqwest::Client::new();
    let body = format!(
        r#"[{{"ok":1}}, 42, {{"a":{{"b":{{"c":{{"d":{{}}}}}}}}}}, {{"big":"{}"}}, {{"ok":2}}]"#,
        "x".repeat(100)
    );
    let (status, json, _) = post(
        &client,
        &gw.url("/v1/streams/mixed/events"),
        &[],
        body.into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(
        (json["accepted"].as_u64(), json["rejected"].as_u64()),
        (Some(2), Some(3))
    );
    let errors: Vec<(u64, &str)> = json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        errors,
        vec![
            (1, "not-an-object"),
            (2, "event-too-deep"),
            (3, "event-too-large")
        ]
    );
    let p = json["partition"].as_u64().unwrap() as u32;
    let o = json["first_offset"].as_u64().unwrap() as usize;
    let events = read_partition(&store, "mixed", p).await;
    let got: Vec<String> = events[o..].iter().map(|e| event_of(e)).collect();
    assert_eq!(
        got,
        vec![r#"{"ok":1}"#, r#"{"ok":2}"#],
        "contiguous, in order"
    );
    gw.stop().await;
}

/// Each bad input gets its status and stable problem type, as problem+json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_specific_problems() {
    let mut config = test_config();
    config.limits.max_body_bytes = 4096;
    config.limits.max_decoded_bytes = 8192;
    config.limits.max_events_per_request = 3;
    let gw = TestGateway::start(config, memory()).await;
    let client = reqwest::Client::new();
    let url = gw.url("/v1/streams/bad/events");
    let bomb = gzip(&vec![b' '; 1 << 20]);
    let cases: Vec<(String, Headers, Vec<u8>, u16, Kind)> = vec![
        (
            url.clone(),
            &[("content-type", "image/png")],
            b"{}".to_vec(),
            415,
            "unsupported-media-type",
        ),
        (
            url.clone(),
            &[("content-encoding", "br")],
            b"{}".to_vec(),
            415,
            "unsupported-encoding",
        ),
        (url.clone(), &[], vec![b' '; 5000], 413, "too-large"),
        (
            url.clone(),
            &[("content-encoding", "gzip")],
            bomb,
            413,
            "too-large",
        ),
        (
            url.clone(),
            &[("content-encoding", "gzip")],
            b"not gzip".to_vec(),
            400,
            "bad-encoding",
        ),
        (
            url.clone(),
            &[],
            b"[{\"a\":1},".to_vec(),
            400,
            "malformed-json",
        ),
        (url.clone(), &[], b"  ".to_vec(), 400, "empty-body"),
        (
            url.clone(),
            &[],
            b"[{},{},{},{}]".to_vec(),
            413,
            "too-large",
        ),
        (
            url.clone(),
            &[],
            b"[1, \"x\"]".to_vec(),
            422,
            "invalid-events",
        ),
        (
            gw.url("/v1/streams/no%2Fslash/events"),
            &[],
            b"{}".to_vec(),
            400,
            "invalid-stream-name",
        ),
        (
            gw.url("/v1/streams/.hidden/events"),
            &[],
            b"{}".to_vec(),
            400,
            "invalid-stream-name",
        ),
        (gw.url("/v1/nothing"), &[], b"{}".to_vec(), 404, "not-found"),
    ];
    for (url, headers, body, status, kind) in cases {
        let (got, json, h) = post(&client, &url, headers, body).await;
        assert_eq!(got, status, "{url} {headers:?}: {json}");
        assert_eq!(json["type"], format!("urn:sluice:problem:{kind}"), "{json}");
        assert_eq!(json["status"], status);
        assert!(json["detail"].as_str().is_some_and(|d| !d.is_empty()));
        assert_eq!(h["content-type"], "application/problem+json");
    }
    let resp = client.put(url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    gw.stop().await;
}

/// `Prefer: respond-async` answers 202 before the commit; a graceful stop commits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_acks_are_flushed_on_shutdown() {
    let store = memory();
    let mut config = test_config();
    config.batch.max_age_ms = 60_000; // only the shutdown flush can commit it
    let gw = TestGateway::start(config, store.clone()).await;
    let client = reqwest::Client::new();
    let (s1, j1, _) = post(
        &client,
        &gw.url("/v1/streams/beacons/events"),
        &[("prefer", "respond-async")],
        br#"{"a":1}"#.to_vec(),
    )
    .await;
    let (s2, j2, _) = post(
        &client,
        &gw.url("/v1/streams/beacons/events?async=true"),
        &[],
        br#"{"b":2}"#.to_vec(),
    )
    .await;
    assert_eq!((s1, s2), (202, 202), "{j1} {j2}");
    assert!(j1.get("first_offset").is_none());
    gw.stop().await;
    let mut all = Vec::new();
    for p in 0..4 {
        all.extend(
            read_partition(&store, "beacons", p)
                .await
                .iter()
                .map(|e| event_of(e)),
        );
    }
    assert_eq!(all, vec![r#"{"a":1}"#, r#"{"b":2}"#]);
}

/// Many concurrent durable requests share segments: fewer segments than requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_segments() {
    let store = memory();
    let mut config = test_config();
    config.batch.max_age_ms = 50;
    let gw = TestGateway::start(config, store.clone()).await;
    let client = reqwest::Client::new();
    let url = gw.url("/v1/streams/shared/events");
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                post(&client, &url, &[], format!(r#"{{"i":{i}}}"#).into_bytes()).await
            })
        })
        .collect();
    let mut offsets = Vec::new();
    for t in tasks {
        let (status, json, _) = t.await.unwrap();
        assert_eq!(status, 200);
        offsets.push((
            json["partition"].as_u64().unwrap(),
            json["first_offset"].as_u64().unwrap(),
        ));
    }
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), 40, "every ack has its own offset");
    let log = sluice::log::Log::new(store.clone(), "r", Default::default());
    let s = log.stream("default", "shared");
    let p = offsets[0].0 as u32;
    let segments = log.head(&s, p).await.unwrap().next_seq;
    assert!(segments < 40, "{segments} segments for 40 requests");
    gw.stop().await;
}

/// Past the memory budget new writes get 503 + Retry-After; the buffered ones still commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_budget_sheds_load_without_dropping() {
    let inner = memory();
    let faulty = Arc::new(FaultyStore::new(inner.inner.clone()));
    // The first commit is held until the test lets it go: its bytes stay buffered.
    faulty.inject("/log/", Fault::Hold, 1);
    let store = Store::from_parts(faulty.clone(), "", StoreKind::Memory);
    let mut config = test_config();
    config.batch.memory_budget_bytes = 300;
    config.batch.max_bytes = 300;
    let gw = TestGateway::start(config, store.clone()).await;
    let client = reqwest::Client::new();
    let url = gw.url("/v1/streams/full/events");
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(200)).into_bytes();
    let (s1, _, _) = post(&client, &url, &[("prefer", "respond-async")], big.clone()).await;
    let (s2, j2, h2) = post(&client, &url, &[("prefer", "respond-async")], big).await;
    assert_eq!(s1, 202);
    assert_eq!(s2, 503, "{j2}");
    assert_eq!(j2["type"], "urn:sluice:problem:overloaded");
    assert_eq!(h2["retry-after"], "1");
    faulty.release();
    gw.stop().await;
    let mut n = 0;
    for p in 0..4 {
        n += read_partition(&store, "full", p).await.len();
    }
    assert_eq!(
        n, 1,
        "the accepted event was committed, the shed one was not"
    );
}

/// A store that keeps failing never yields a false 200: durable requests get 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_store_gets_503_never_200() {
    let inner = memory();
    let faulty = Arc::new(FaultyStore::new(inner.inner.clone()));
    faulty.inject("/log/", Fault::FailBefore, u32::MAX);
    let store = Store::from_parts(faulty.clone(), "", StoreKind::Memory);
    let mut config = test_config();
    config.batch.ack_timeout_ms = 400;
    let gw = TestGateway::start(config, store.clone()).await;
    let client = reqwest::Client::new();
    let url = gw.url("/v1/streams/down/events");
    let (status, json, headers) = post(&client, &url, &[], br#"{"a":1}"#.to_vec()).await;
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["type"], "urn:sluice:problem:store-unavailable");
    assert!(headers.contains_key("retry-after"));
    // The store recovers: ingest resumes without a restart.
    faulty.clear();
    let (status, json, _) = post(&client, &url, &[], br#"{"b":2}"#.to_vec()).await;
    assert_eq!(status, 200, "{json}");
    let p = json["partition"].as_u64().unwrap() as u32;
    let o = json["first_offset"].as_u64().unwrap() as usize;
    let events = read_partition(&store, "down", p).await;
    assert_eq!(event_of(&events[o]), r#"{"b":2}"#);
    gw.stop().await;
}

/// Health, readiness and metrics answer; readiness is true while serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics() {
    let gw = TestGateway::start(test_config(), memory()).await;
    let client = reqwest::Client::new();
    let get = |p: &str| client.get(gw.url(p)).send();
    assert_eq!(get("/healthz").await.unwrap().status().as_u16(), 200);
    assert_eq!(get("/readyz").await.unwrap().status().as_u16(), 200);
    let (s, _, _) = post(
        &client,
        &gw.url("/v1/streams/m/events"),
        &[],
        br#"{"a":1}"#.to_vec(),
    )
    .await;
    assert_eq!(s, 200);
    // Invalid events for a stream this gateway does not serve: no new label value.
    let (s, _, _) = post(
        &client,
        &gw.url("/v1/streams/never-seen-xyz/events"),
        &[],
        b"[1]".to_vec(),
    )
    .await;
    assert_eq!(s, 422);
    let text = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        !text.contains("never-seen-xyz"),
        "free text became a label value"
    );
    assert!(
        text.contains(r#"sluice_events_total{tenant="default",stream="_other",outcome="invalid"}"#),
        "{text}"
    );
    for name in [
        "sluice_events_total",
        "sluice_http_requests_total",
        "sluice_segments_committed_total",
        "sluice_ack_latency_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    gw.stop().await;
}

/// A client that never finishes its headers is disconnected after the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let mut config = test_config();
    config.server.header_read_timeout_ms = 200;
    let gw = TestGateway::start(config, memory()).await;
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(b"POST /v1/streams/s/events HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection still open after 10 s");
    gw.stop().await;
}

/// Oversized request heads get 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_headers_get_431() {
    let mut config = test_config();
    config.server.max_header_bytes = 2048;
    let gw = TestGateway::start(config, memory()).await;
    let client = reqwest::Client::new();
    let resp = client
        .post(gw.url("/v1/streams/s/events"))
        .header("x-filler", "y".repeat(4096))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 431);
    gw.stop().await;
}

/// `max_events` and `max_bytes` flush without waiting for `max_age`, and a
/// request's events are never split across segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_triggers_flush_before_max_age() {
    let store = memory();
    let mut config = test_config();
    config.batch.max_age_ms = 3_600_000; // an hour: only size can flush in time
    config.batch.max_events = 4;
    config.batch.max_bytes = 2_000;
    declare(&mut config, "sized");
    let gw = TestGateway::start(config, store.clone()).await;
    let client = reqwest::Client::new();
    let url = gw.url("/v1/streams/sized/events");
    let three = br#"[{"a":1},{"a":2},{"a":3}]"#.to_vec();
    let first = tokio::spawn({
        let (client, url, body) = (client.clone(), url.clone(), three.clone());
        async move { post(&client, &url, &[], body).await }
    });
    // Wait (bounded) until the first request is buffered, then send the second:
    // 3 + 3 > max_events flushes the first on its own.
    let needle = r#"sluice_events_total{tenant="default",stream="sized",outcome="accepted"} 3"#;
    wait_for_metric(&gw, needle, "the first request never reached the buffer").await;
    let (s2, _, _) = post(&client, &url, &[("prefer", "respond-async")], three).await;
    assert_eq!(s2, 202);
    let (s1, j1, _) = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("max_events did not flush")
        .unwrap();
    assert_eq!((s1, j1["accepted"].as_u64()), (200, Some(3)), "{j1}");
    // One event past max_bytes, into an empty buffer, flushes at once.
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2_100)).into_bytes();
    let big_url = gw.url("/v1/streams/sized-bytes/events");
    let sized =
        tokio::time::timeout(Duration::from_secs(10), post(&client, &big_url, &[], big)).await;
    assert_eq!(sized.expect("max_bytes did not flush").0, 200);
    gw.stop().await;
    let p = j1["partition"].as_u64().unwrap() as u32;
    let log = sluice::log::Log::new(store.clone(), "r", Default::default());
    let s = log.stream("default", "sized");
    let counts: Vec<u64> = {
        let mut v = Vec::new();
        let mut seq = 0;
        while let Some(r) = log.record(&s, p, seq).await.unwrap() {
            v.push(r.count);
            seq += 1;
        }
        v
    };
    assert_eq!(counts, vec![3, 3], "each request whole, never split");
}

/// The record lands but the gateway is told it failed until the deadline: the
/// client gets 503, the retried commit finds its own record, and the event is
/// in the log exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_commit_is_never_duplicated() {
    let inner = memory();
    let faulty = Arc::new(FaultyStore::new(inner.inner.clone()));
    faulty.inject("/log/", Fault::FailAfter, 1);
    faulty.inject("/log/", Fault::FailBefore, 1_000_000);
    let store = Store::from_parts(faulty.clone(), "", StoreKind::Memory);
    let mut config = test_config();
    config.batch.ack_timeout_ms = 1_000;
    config.streams.partitions = 1;
    let gw = TestGateway::start(config, store.clone()).await;
    let client = reqwest::Client::new();
    let url = gw.url("/v1/streams/ambiguous/events");
    let (status, json, _) = post(&client, &url, &[], br#"{"a":1}"#.to_vec()).await;
    assert_eq!(status, 503, "{json}");
    faulty.clear();
    let (status, json, _) = post(&client, &url, &[], br#"{"b":2}"#.to_vec()).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(
        json["first_offset"], 1,
        "the first event holds offset 0, once"
    );
    gw.stop().await;
    let events: Vec<String> = read_partition(&store, "ambiguous", 0)
        .await
        .iter()
        .map(|e| event_of(e))
        .collect();
    assert_eq!(events, vec![r#"{"a":1}"#, r#"{"b":2}"#]);
}

/// A client that sends headers and then stalls its body gets 408, and a
/// stuck connection does not stop the shutdown flush of accepted events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_times_out_and_shutdown_still_flushes() {
    let store = memory();
    let mut config = test_config();
    // The stuck client outlasts the drain's first phase.
    config.server.body_read_timeout_ms = 1_500;
    config.server.drain_timeout_ms = 200;
    config.batch.max_age_ms = 3_600_000;
    let gw = TestGateway::start(config, store.clone()).await;
    let head = "POST /v1/streams/stall/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{";
    let mut timed = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    timed.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), timed.read(&mut answer))
        .await
        .expect("no answer to a stalled body")
        .unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 408"));

    let client = reqwest::Client::new();
    let (s, _, _) = post(
        &client,
        &gw.url("/v1/streams/stall/events"),
        &[("prefer", "respond-async")],
        br#"{"kept":1}"#.to_vec(),
    )
    .await;
    assert_eq!(s, 202);
    // A second stalled body holds its connection open through the drain.
    let mut stuck = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stuck.write_all(head.as_bytes()).await.unwrap();
    gw.stop().await;
    let events = read_partition(&store, "stall", 0).await.len()
        + read_partition(&store, "stall", 1).await.len()
        + read_partition(&store, "stall", 2).await.len()
        + read_partition(&store, "stall", 3).await.len();
    assert_eq!(
        events, 1,
        "the async event was flushed despite the stuck client"
    );
    drop(stuck);
}
