//! The read path over real sockets: long-poll, SSE with resume, list and
//! describe, and events crossing gateways that share one store.

mod common;

use std::time::Duration;

use common::gateway::{event_of, memory, one_partition, test_config, TestGateway};
use common::{Backend, Place};
use futures::StreamExt;
use serde_json::Value;

async fn post(client: &reqwest::Client, url: &str, body: String) -> Value {
    let resp = client.post(url).body(body).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let resp = client.get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null),
    )
}

/// The event JSON texts of a read answer.
fn events_of(answer: &Value) -> Vec<String> {
    answer["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].to_string())
        .collect()
}

/// Feeding `next_offset` back yields every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_walks_the_log_exactly_once() {
    let gw = TestGateway::start(one_partition(), memory()).await;
    let client = reqwest::Client::new();
    let ingest = gw.url("/v1/streams/walk/events");
    let mut sent = Vec::new();
    for i in 0..12 {
        let body = format!(r#"[{{"i":{i},"j":0}},{{"i":{i},"j":1}}]"#);
        post(&client, &ingest, body).await;
        sent.push(format!(r#"{{"i":{i},"j":0}}"#));
        sent.push(format!(r#"{{"i":{i},"j":1}}"#));
    }
    let (mut offset, mut got) = (0, Vec::new());
    while got.len() < sent.len() {
        let url = gw.url(&format!(
            "/v1/streams/walk/events?partition=0&offset={offset}&limit=5"
        ));
        let (status, answer) = get(&client, &url).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["first_offset"], offset);
        let batch = events_of(&answer);
        assert!(!batch.is_empty() && batch.len() <= 5, "{answer}");
        offset = answer["next_offset"].as_u64().unwrap();
        got.extend(batch);
    }
    assert_eq!(got, sent);
    let (status, answer) = get(
        &client,
        &gw.url(&format!("/v1/streams/walk/events?offset={offset}")),
    )
    .await;
    assert_eq!(
        (status, events_of(&answer).len()),
        (200, 0),
        "at the head: nothing, at once"
    );
    let (status, answer) = get(&client, &gw.url("/v1/streams/walk/events?offset=999")).await;
    assert_eq!(status, 416);
    assert_eq!(answer["type"], "urn:sluice:problem:offset-out-of-range");
    let (status, answer) = get(&client, &gw.url("/v1/streams/walk/events?partition=7")).await;
    assert_eq!(
        (status, answer["type"].as_str()),
        (400, Some("urn:sluice:problem:bad-query"))
    );
    gw.stop().await;
}

/// A long-poll at the head returns as soon as an event is committed: the
/// tailer polls only once a minute here, so only the commit's wake-up can
/// deliver in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_commit() {
    let mut config = one_partition();
    config.read.poll_interval_ms = 60_000;
    config.read.idle_poll_max_ms = 60_000;
    let gw = TestGateway::start(config, memory()).await;
    let client = reqwest::Client::new();
    // Start the partition's tailer (head 0) before anything is committed.
    let (status, _) = get(
        &client,
        &gw.url("/v1/streams/wake/events?partition=0&offset=0"),
    )
    .await;
    assert_eq!(status, 200);
    let poll_url = gw.url("/v1/streams/wake/events?partition=0&offset=0&wait=20000");
    let poll = tokio::spawn({
        let client = client.clone();
        async move { get(&client, &poll_url).await }
    });
    post(
        &client,
        &gw.url("/v1/streams/wake/events"),
        r#"{"hello":1}"#.into(),
    )
    .await;
    let (status, answer) = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("long-poll did not wake within its wait")
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(events_of(&answer), vec![r#"{"hello":1}"#]);
    assert_eq!(answer["next_offset"], 1);
    gw.stop().await;
}

/// A gateway whose tailer lags the log (another gateway just acked) asks
/// the store before calling an offset out of range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_gateway_does_not_answer_416() {
    let place = Place::new(Backend::File);
    let mut slow = one_partition();
    slow.read.poll_interval_ms = 60_000;
    slow.read.idle_poll_max_ms = 60_000;
    let a = TestGateway::start(one_partition(), place.store()).await;
    let b = TestGateway::start(slow, place.store()).await;
    let client = reqwest::Client::new();
    let (status, _) = get(&client, &b.url("/v1/streams/lag/events")).await;
    assert_eq!(status, 200, "B follows the empty partition");
    post(
        &client,
        &a.url("/v1/streams/lag/events"),
        r#"[{"x":0},{"x":1}]"#.into(),
    )
    .await;
    let (status, answer) = get(&client, &b.url("/v1/streams/lag/events?offset=1")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(events_of(&answer), vec![r#"{"x":1}"#]);
    let (status, answer) = get(&client, &b.url("/v1/streams/lag/events?offset=2")).await;
    assert_eq!(
        (status, answer["next_offset"].as_u64()),
        (200, Some(2)),
        "{answer}"
    );
    let (status, _) = get(&client, &b.url("/v1/streams/lag/events?offset=3")).await;
    assert_eq!(status, 416, "past the store's head it is out of range");
    a.stop().await;
    b.stop().await;
}

/// Events posted to gateway A reach a long-poller on gateway B, in order.
async fn crosses_gateways(b: Backend) {
    let place = Place::new(b);
    let a = TestGateway::start(one_partition(), place.store()).await;
    let b = TestGateway::start(one_partition(), place.store()).await;
    let client = reqwest::Client::new();
    let mut sent = Vec::new();
    let (mut offset, mut got) = (0, Vec::new());
    for i in 0..6 {
        let body = format!(r#"{{"n":{i}}}"#);
        let target = if i % 2 == 0 { &a } else { &b };
        post(&client, &target.url("/v1/streams/x/events"), body.clone()).await;
        sent.push(body);
    }
    while got.len() < sent.len() {
        let url = b.url(&format!(
            "/v1/streams/x/events?partition=0&offset={offset}&wait=10000"
        ));
        let (status, answer) = get(&client, &url).await;
        assert_eq!(status, 200, "{answer}");
        offset = answer["next_offset"].as_u64().unwrap();
        let batch = events_of(&answer);
        assert!(!batch.is_empty(), "no new events within the wait");
        got.extend(batch);
    }
    assert_eq!(got, sent);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crosses_gateways_on_the_file_store() {
    crosses_gateways(Backend::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crosses_gateways_on_s3() {
    crosses_gateways(Backend::S3).await;
}

/// Read SSE frames until `n` events arrived; returns the events and the last id.
async fn sse_events(resp: reqwest::Response, n: usize) -> (Vec<String>, String) {
    let mut stream = resp.bytes_stream();
    let (mut text, mut events, mut last_id) = (String::new(), Vec::new(), String::new());
    while events.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(15), stream.next())
            .await
            .expect("no SSE frame within 15 s")
            .expect("SSE stream ended")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find("\n\n") {
            let frame: String = text.drain(..end + 2).collect();
            for line in frame.lines() {
                if let Some(id) = line.strip_prefix("id: ") {
                    last_id = id.to_string();
                }
                if let Some(data) = line.strip_prefix("data: ") {
                    let v: Value = serde_json::from_str(data).unwrap();
                    events.extend(events_of(&v));
                }
            }
        }
    }
    (events, last_id)
}

/// SSE delivers in order and resumes after `Last-Event-ID` with nothing
/// missed and nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_and_resumes() {
    let gw = TestGateway::start(one_partition(), memory()).await;
    let client = reqwest::Client::new();
    let ingest = gw.url("/v1/streams/sse/events");
    let sse_url = gw.url("/v1/streams/sse/events?from=earliest");
    for i in 0..3 {
        post(&client, &ingest, format!(r#"{{"s":{i}}}"#)).await;
    }
    let resp = client
        .get(&sse_url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (first, last_id) = sse_events(resp, 3).await;
    assert_eq!(first, vec![r#"{"s":0}"#, r#"{"s":1}"#, r#"{"s":2}"#]);
    assert_eq!(last_id, "0:3");
    // Disconnected; more events arrive; resume from the last id.
    for i in 3..5 {
        post(&client, &ingest, format!(r#"{{"s":{i}}}"#)).await;
    }
    let resp = client
        .get(gw.url("/v1/streams/sse/events"))
        .header("accept", "text/event-stream")
        .header("last-event-id", last_id)
        .send()
        .await
        .unwrap();
    let (rest, last_id) = sse_events(resp, 2).await;
    assert_eq!(rest, vec![r#"{"s":3}"#, r#"{"s":4}"#]);
    assert_eq!(last_id, "0:5");
    gw.stop().await;
}

/// List and describe show streams, partitions and heads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_describe() {
    let gw = TestGateway::start(test_config(), memory()).await;
    let client = reqwest::Client::new();
    let ack = post(
        &client,
        &gw.url("/v1/streams/orders/events"),
        r#"[{"a":1},{"a":2}]"#.into(),
    )
    .await;
    post(
        &client,
        &gw.url("/v1/streams/clicks/events"),
        r#"{"a":1}"#.into(),
    )
    .await;
    let (status, list) = get(&client, &gw.url("/v1/streams")).await;
    assert_eq!(
        (status, list["streams"].clone()),
        (200, serde_json::json!(["clicks", "orders"]))
    );
    let (status, d) = get(&client, &gw.url("/v1/streams/orders")).await;
    assert_eq!(status, 200, "{d}");
    let parts = d["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 4);
    let p = ack["partition"].as_u64().unwrap() as usize;
    assert_eq!(parts[p]["head_offset"], 2);
    let total: u64 = parts
        .iter()
        .map(|x| x["head_offset"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 2);
    assert!(d["created_at"].as_str().unwrap().ends_with('Z'));
    let (status, missing) = get(&client, &gw.url("/v1/streams/nothing-here")).await;
    assert_eq!(
        (status, missing["type"].as_str()),
        (404, Some("urn:sluice:problem:not-found"))
    );
    gw.stop().await;
}

/// The envelope lines served are the stored bytes, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_events_are_the_stored_bytes() {
    let store = memory();
    let gw = TestGateway::start(one_partition(), store.clone()).await;
    let client = reqwest::Client::new();
    post(
        &client,
        &gw.url("/v1/streams/exact/events"),
        r#"{ "spaced" : 1.50 }"#.into(),
    )
    .await;
    let text = client
        .get(gw.url("/v1/streams/exact/events"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stored = common::gateway::read_partition(&store, "exact", 0).await;
    let line = std::str::from_utf8(&stored[0]).unwrap();
    assert!(text.contains(line), "{text} does not hold {line}");
    assert_eq!(event_of(&stored[0]), r#"{ "spaced" : 1.50 }"#);
    gw.stop().await;
}
