//! WebSocket ingest and subscriptions over real sockets.

mod common;

use std::time::Duration;

use common::gateway::{
    declare, event_of, memory, one_partition, read_partition, wait_for_metric, TestGateway,
};
use common::{Backend, Place};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(gw: &TestGateway, path: &str) -> Ws {
    let url = format!("ws://{}{path}", gw.addr);
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// The next text frame as JSON (bounded wait).
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("no frame within 15 s")
            .expect("socket ended")
            .unwrap();
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Frames of events get acks whose offsets hold exactly those events; a bad
/// frame gets an error frame and the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_frames_are_acked_with_their_offsets() {
    let store = memory();
    let gw = TestGateway::start(one_partition(), store.clone()).await;
    let mut ws = connect(&gw, "/v1/streams/wsin/ws").await;
    let frames = [
        (r#"{"one":1}"#, vec![r#"{"one":1}"#]),
        (r#"[{"a":1},{"a":2}]"#, vec![r#"{"a":1}"#, r#"{"a":2}"#]),
        ("{\"n\":1}\n{\"n\":2}\n", vec![r#"{"n":1}"#, r#"{"n":2}"#]),
    ];
    for (text, _) in &frames {
        ws.send(Message::text(*text)).await.unwrap();
    }
    ws.send(Message::text("{not json")).await.unwrap();
    ws.send(Message::text(r#"{"after":"error"}"#))
        .await
        .unwrap();
    let mut acks = Vec::new();
    for _ in 0..5 {
        acks.push(next_json(&mut ws).await);
    }
    acks.sort_by_key(|a| a["frame"].as_u64().unwrap());
    assert_eq!(acks[3]["status"], 400, "{}", acks[3]);
    assert_eq!(acks[3]["type"], "urn:sluice:problem:malformed-json");
    assert_eq!(acks[4]["accepted"], 1, "still open after a bad frame");
    let log = read_partition(&store, "wsin", 0).await;
    for (i, (_, expected)) in frames.iter().enumerate() {
        assert_eq!(acks[i]["accepted"], expected.len(), "{}", acks[i]);
        let o = acks[i]["first_offset"].as_u64().unwrap() as usize;
        let got: Vec<String> = log[o..o + expected.len()]
            .iter()
            .map(|e| event_of(e))
            .collect();
        assert_eq!(&got, expected);
    }
    ws.close(None).await.unwrap();
    gw.stop().await;
}

/// With `envelope=true` the client's id comes back; `async=true` acks early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_ids_and_async_acks() {
    let gw = TestGateway::start(one_partition(), memory()).await;
    let mut ws = connect(&gw, "/v1/streams/env/ws?envelope=true").await;
    ws.send(Message::text(r#"{"id":"batch-7","events":[{"x":1}]}"#))
        .await
        .unwrap();
    let ack = next_json(&mut ws).await;
    assert_eq!(
        (ack["id"].as_str(), ack["accepted"].as_u64()),
        (Some("batch-7"), Some(1))
    );
    assert!(ack["first_offset"].is_u64());
    let mut fast = connect(&gw, "/v1/streams/env/ws?async=true").await;
    fast.send(Message::text(r#"{"y":1}"#)).await.unwrap();
    let ack = next_json(&mut fast).await;
    assert_eq!(ack["accepted"], 1);
    assert!(
        ack.get("first_offset").is_none(),
        "async acks carry no offsets: {ack}"
    );
    gw.stop().await;
}

/// A subscriber of gateway B sees what gateway A committed, in order, and
/// resumes from its last offset with nothing missed or repeated.
async fn subscribe_across_gateways(b: Backend) {
    let place = Place::new(b);
    let a = TestGateway::start(one_partition(), place.store()).await;
    let b = TestGateway::start(one_partition(), place.store()).await;
    let client = reqwest::Client::new();
    let post = |i: u32| {
        let client = client.clone();
        let url = a.url("/v1/streams/sub/events");
        async move {
            let r = client
                .post(url)
                .body(format!(r#"{{"k":{i}}}"#))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
        }
    };
    post(0).await;
    let mut sub = connect(&b, "/v1/streams/sub/subscribe?from=earliest").await;
    post(1).await;
    post(2).await;
    let (mut got, mut next) = (Vec::new(), 0u64);
    while got.len() < 3 {
        let frame = next_json(&mut sub).await;
        assert_eq!(frame["first_offset"].as_u64(), Some(next), "{frame}");
        for e in frame["events"].as_array().unwrap() {
            got.push(e["event"].to_string());
            next += 1;
        }
    }
    assert_eq!(got, vec![r#"{"k":0}"#, r#"{"k":1}"#, r#"{"k":2}"#]);
    sub.close(None).await.unwrap();
    post(3).await;
    let mut resumed = connect(&b, &format!("/v1/streams/sub/subscribe?from=0:{next}")).await;
    let frame = next_json(&mut resumed).await;
    assert_eq!(frame["first_offset"].as_u64(), Some(3));
    assert_eq!(frame["events"][0]["event"].to_string(), r#"{"k":3}"#);
    drop(resumed);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_across_gateways_on_the_file_store() {
    subscribe_across_gateways(Backend::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_across_gateways_on_s3() {
    subscribe_across_gateways(Backend::S3).await;
}

/// Read frames until the server closes (or all 400 events arrived), checking
/// each frame starts where the last ended; the offset reached and the close code.
async fn drain_until_close(ws: &mut Ws, mut next: u64) -> (u64, Option<u16>) {
    loop {
        if next == 400 {
            return (next, None);
        }
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("subscriber neither fed nor closed")
            .expect("socket ended without a close frame")
            .unwrap();
        match msg {
            Message::Text(t) => {
                let frame: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(frame["first_offset"].as_u64(), Some(next));
                next += frame["events"].as_array().unwrap().len() as u64;
            }
            Message::Close(c) => return (next, c.map(|c| u16::from(c.code))),
            _ => {}
        }
    }
}

/// A subscriber that does not read is closed with 4008 once its queue is
/// full; what it did receive is a prefix of the log, and it resumes from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_is_cut_off_and_resumes() {
    let mut config = one_partition();
    config.websocket.subscriber_queue_frames = 1;
    let gw = TestGateway::start(config, memory()).await;
    let client = reqwest::Client::new();
    let mut sub = connect(&gw, "/v1/streams/slow/subscribe?from=earliest").await;
    // ~24 MB of events: far more than the socket buffers hold.
    let pad = "x".repeat(60_000);
    for batch in 0..8 {
        let body: Vec<String> = (0..50)
            .map(|i| format!(r#"{{"b":{batch},"i":{i},"pad":"{pad}"}}"#))
            .collect();
        let r = client
            .post(gw.url("/v1/streams/slow/events"))
            .body(format!("[{}]", body.join(",")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let (mut next, code) = drain_until_close(&mut sub, 0).await;
    drop(sub); // no close reply: the server stops waiting for one at EOF
    assert_eq!(code, Some(4008));
    assert!(next < 400, "it was cut off before the end ({next})");
    // Resume from the last offset, as often as it takes (a queue of one frame
    // can cut off even a reading client); nothing is missed or repeated.
    for _ in 0..400 {
        if next == 400 {
            break;
        }
        let mut resumed = connect(&gw, &format!("/v1/streams/slow/subscribe?from=0:{next}")).await;
        let (reached, _) = drain_until_close(&mut resumed, next).await;
        assert!(reached > next, "a resumed subscriber made no progress");
        next = reached;
    }
    assert_eq!(next, 400);
    gw.stop().await;
}

/// Ingest and subscribe routes answer 426 to a plain GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_get_gets_426() {
    let gw = TestGateway::start(one_partition(), memory()).await;
    let r = reqwest::get(gw.url("/v1/streams/s/ws")).await.unwrap();
    assert_eq!(r.status().as_u16(), 426);
    gw.stop().await;
}

/// A frame over `limits.max_body_bytes` closes the connection with 1009.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_with_1009() {
    let mut config = one_partition();
    config.limits.max_body_bytes = 1024;
    let gw = TestGateway::start(config, memory()).await;
    let mut ws = connect(&gw, "/v1/streams/big/ws").await;
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(4096));
    ws.send(Message::text(big)).await.unwrap();
    let code = loop {
        let msg = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("no close within 15 s")
            .expect("socket ended without a close frame")
            .unwrap();
        if let Message::Close(Some(c)) = msg {
            break u16::from(c.code);
        }
    };
    assert_eq!(code, 1009);
    gw.stop().await;
}

/// `from=latest` is fixed when the subscription is answered: an event
/// committed right after the upgrade is delivered, older ones are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_starts_at_the_head_when_answered() {
    let gw = TestGateway::start(one_partition(), memory()).await;
    let client = reqwest::Client::new();
    let url = gw.url("/v1/streams/late/events");
    let r = client.post(&url).body(r#"{"old":1}"#).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut sub = connect(&gw, "/v1/streams/late/subscribe").await;
    let r = client.post(&url).body(r#"{"new":1}"#).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let frame = next_json(&mut sub).await;
    assert_eq!(frame["first_offset"], 1);
    assert_eq!(frame["events"][0]["event"].to_string(), r#"{"new":1}"#);
    drop(sub);
    gw.stop().await;
}

/// On drain, a durable frame still waiting for its commit gets its ack (with
/// offsets) before the 1001 close; a subscriber gets 1001 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_acks_frames_then_closes_with_1001() {
    let mut config = one_partition();
    config.batch.max_age_ms = 3_600_000; // only the shutdown flush commits
    declare(&mut config, "drain");
    let gw = TestGateway::start(config, memory()).await;
    let mut sub = connect(&gw, "/v1/streams/drain/subscribe").await;
    let mut ws = connect(&gw, "/v1/streams/drain/ws").await;
    ws.send(Message::text(r#"{"last":1}"#)).await.unwrap();
    // The frame is in the buffer once the gateway counted it.
    let needle = r#"sluice_events_total{tenant="default",stream="drain",outcome="accepted"} 1"#;
    wait_for_metric(&gw, needle, "the frame never reached the buffer").await;
    let stopping = tokio::spawn(gw.stop());
    let ack = next_json(&mut ws).await;
    assert_eq!(
        (ack["accepted"].as_u64(), ack["first_offset"].as_u64()),
        (Some(1), Some(0)),
        "{ack}"
    );
    for socket in [&mut ws, &mut sub] {
        let code = loop {
            let msg = tokio::time::timeout(Duration::from_secs(15), socket.next())
                .await
                .expect("no close within 15 s")
                .expect("socket ended without a close frame")
                .unwrap();
            if let Message::Close(c) = msg {
                break c.map(|c| u16::from(c.code));
            }
        };
        assert_eq!(code, Some(1001));
    }
    drop((ws, sub)); // no close replies: the server stops waiting at EOF
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .expect("drain did not finish")
        .unwrap();
}

/// The subscribe route answers 426 to a plain GET without doing any work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_get_on_subscribe_gets_426() {
    let gw = TestGateway::start(one_partition(), memory()).await;
    let r = reqwest::get(gw.url("/v1/streams/s/subscribe"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 426);
    gw.stop().await;
}
