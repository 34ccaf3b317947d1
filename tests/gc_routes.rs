//! What readers see after garbage collection, over real sockets and real
//! processes (file store and moto S3): `410 offset-expired` naming the first
//! retained offset on long-poll and SSE, a problem frame and close 4010 on a
//! WebSocket subscription, `earliest` starting at the watermark, appends
//! continuing at the right offset; `sluice gc`, `sluice tail` and
//! `sluice consume` as processes; and the schedule inside `serve`.

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::gateway::{event_of, one_partition, TestGateway};
use common::{Backend, Place};
use futures::StreamExt;
use serde_json::Value;
use sluice::config::Config;
use sluice::gc::{Gc, Scope};
use sluice::log::record::StreamPath;
use sluice::log::retry::RetryPolicy;
use sluice::log::segment::{ReceivedAt, SegmentBuilder};
use sluice::log::Log;
use sluice::store::Store;
use tokio_tungstenite::tungstenite::Message;

const DAY: i64 = 86_400_000;
const EXPIRED: &str = "urn:sluice:problem:offset-expired";
const WITHIN: Duration = Duration::from_secs(30);

/// One partition per stream, every stream kept 7 days.
fn config() -> Config {
    let mut c = one_partition();
    c.streams.retention = Some("7d".into());
    c
}

/// Append `n` records of two events each, `age_days` old, to `clicks` partition 0.
async fn append(store: &Store, age_days: i64, tag: &str, n: usize) -> Vec<String> {
    let log = Log::new(store.clone(), "w", RetryPolicy::default());
    let s = log.stream("default", "clicks");
    let at = Utc::now().timestamp_millis() - age_days * DAY;
    let mut all = Vec::new();
    for r in 0..n {
        let mut b = SegmentBuilder::default();
        for i in 0..2 {
            let e = format!(r#"{{"tag":"{tag}","r":{r},"i":{i}}}"#);
            b.push(ReceivedAt::from_millis(at), e.as_bytes());
            all.push(e);
        }
        let seg = b.seal(1).unwrap().unwrap();
        log.append(&s, 0, &seg, &ulid::Ulid::new().to_string())
            .await
            .unwrap();
    }
    all
}

/// Three old records (offsets 0..6) and two young ones (6..10), then gc:
/// the watermark is offset 6. Returns the young events.
async fn collected(store: &Store) -> Vec<String> {
    append(store, 10, "old", 3).await;
    let young = append(store, 0, "young", 2).await;
    let log = Arc::new(Log::new(store.clone(), "gc", RetryPolicy::default()));
    let report = Gc::new(log, &config())
        .run(&Scope::default(), Utc::now())
        .await
        .unwrap();
    assert_eq!(report.streams[0].partitions[0].to, (3, 6), "{report:?}");
    young
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String, Value) {
    let resp = client.get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    let kind = resp.headers()["content-type"].to_str().unwrap().to_string();
    (
        status,
        kind,
        serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap(),
    )
}

fn events_of(v: &Value) -> Vec<String> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].to_string())
        .collect()
}

fn compact(events: &[String]) -> Vec<String> {
    events
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap().to_string())
        .collect()
}

/// Long-poll, describe, SSE and WebSocket on a collected partition, on a
/// fresh gateway (its caches start empty).
async fn readers_get_expired_or_events(b: Backend) {
    let place = Place::new(b);
    let store = place.store();
    let young = collected(&store).await;
    let gw = TestGateway::start(config(), store).await;
    let client = reqwest::Client::new();
    let events = |q: &str| gw.url(&format!("/v1/streams/clicks/events?partition=0{q}"));

    for offset in [0, 5] {
        let (status, kind, body) = get(&client, &events(&format!("&offset={offset}"))).await;
        assert_eq!(
            (status, kind.as_str()),
            (410, "application/problem+json"),
            "{body}"
        );
        assert_eq!(body["type"], EXPIRED);
        assert_eq!(
            (body["offset"].as_u64(), body["first_offset"].as_u64()),
            (Some(offset), Some(6))
        );
        assert!(body["detail"]
            .as_str()
            .unwrap()
            .contains("first retained offset is 6"));
    }
    for q in ["&offset=6", "&offset=earliest", ""] {
        let (status, _, body) = get(&client, &events(q)).await;
        assert_eq!(status, 200, "{q}: {body}");
        assert_eq!(
            (body["first_offset"].as_u64(), body["next_offset"].as_u64()),
            (Some(6), Some(10))
        );
        assert_eq!(events_of(&body), compact(&young));
    }
    let (status, _, d) = get(&client, &gw.url("/v1/streams/clicks")).await;
    assert_eq!(status, 200);
    let p = &d["partitions"][0];
    assert_eq!(
        (
            p["first_offset"].as_u64(),
            p["head_offset"].as_u64(),
            p["records"].as_u64()
        ),
        (Some(6), Some(10), Some(2))
    );

    // Appends go on after the head.
    let resp = client
        .post(gw.url("/v1/streams/clicks/events"))
        .body(r#"{"after":"gc"}"#)
        .send()
        .await
        .unwrap();
    let ack: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(ack["first_offset"], 10, "{ack}");

    // SSE: a start below the watermark is a 410 before the stream starts.
    let sse = |from: &str| {
        client
            .get(gw.url(&format!("/v1/streams/clicks/events?from={from}")))
            .header("accept", "text/event-stream")
            .send()
    };
    let resp = sse("0:0").await.unwrap();
    assert_eq!(resp.status().as_u16(), 410);
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (body["type"].as_str(), body["first_offset"].as_u64()),
        (Some(EXPIRED), Some(6))
    );
    let resp = sse("earliest").await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let frame = first_sse_frame(resp).await;
    assert_eq!(frame["first_offset"], 6, "{frame}");

    // WebSocket: a problem frame, then close 4010.
    let url = format!("ws://{}/v1/streams/clicks/subscribe?from=0:2", gw.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let (frame, code) = until_close(&mut ws).await;
    assert_eq!(code, Some(4010));
    let frame = frame.expect("a problem frame before the close");
    assert_eq!(
        (
            frame["type"].as_str(),
            frame["offset"].as_u64(),
            frame["first_offset"].as_u64()
        ),
        (Some(EXPIRED), Some(2), Some(6))
    );
    let url = format!("ws://{}/v1/streams/clicks/subscribe?from=earliest", gw.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let first = next_text(&mut ws).await;
    assert_eq!(first["first_offset"], 6, "{first}");
    gw.stop().await;
}

async fn first_sse_frame(resp: reqwest::Response) -> Value {
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let deadline = Instant::now() + WITHIN;
    loop {
        if let Some(data) = text
            .split("\n\n")
            .filter(|f| f.contains("event: events"))
            .find_map(|f| f.lines().find_map(|l| l.strip_prefix("data: ")))
        {
            return serde_json::from_str(data).unwrap();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, body.next())
            .await
            .expect("no SSE frame");
        text.push_str(std::str::from_utf8(&chunk.unwrap().unwrap()).unwrap());
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_text(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WITHIN, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// The last text frame before the close, and the close code.
async fn until_close(ws: &mut Ws) -> (Option<Value>, Option<u16>) {
    let mut last = None;
    loop {
        let msg = tokio::time::timeout(WITHIN, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match msg {
            Message::Text(t) => last = Some(serde_json::from_str(t.as_str()).unwrap()),
            Message::Close(c) => return (last, c.map(|c| u16::from(c.code))),
            _ => {}
        }
    }
}

/// `sluice …` as a process, to its end (bounded).
fn sluice(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_LOG", "warn")
        .env_remove("SLUICE_CONFIG")
        .env_remove("SLUICE_STORE")
        .env_remove("SLUICE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WITHIN;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "sluice {args:?} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `sluice tail` until it printed `n` lines (bounded), then killed.
fn tail_lines(args: &[&str], n: usize) -> Vec<String> {
    let mut tail = common::tail::Tail::spawn(args);
    tail.wait_for(n);
    tail.seen.clone()
}

/// The command-line side on the file store: `sluice gc` with a config
/// file; `sluice tail` (store and gateway) stops on an expired position
/// and says how to go on, and `--from earliest` starts at the watermark;
/// `sluice consume` stops (exit 5) on a checkpoint below the watermark and
/// `--skip-expired` moves on, saying what it skipped.
#[test]
fn commands_report_expiry_and_skip_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let store = Store::open(&url).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(append(&store, 10, "old", 3));
    let young = rt.block_on(append(&store, 0, "young", 2));
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, "[streams]\npartitions = 1\nretention = \"7d\"\n").unwrap();
    let config = file.to_str().unwrap();

    let gc = sluice(&["gc", "--config", config, "--store", &url]);
    assert!(gc.status.success(), "{}", text(&gc.stderr));
    let out = text(&gc.stdout);
    assert!(
        out.contains("default/clicks") && out.contains("first retained offset 0 -> 6"),
        "{out}"
    );

    let tail = sluice(&[
        "tail",
        "clicks",
        "--store",
        &url,
        "--from",
        "0:2",
        "--partitions",
        "1",
    ]);
    assert_eq!(tail.status.code(), Some(1));
    let err = text(&tail.stderr);
    assert!(
        err.contains("offset 2 has expired") && err.contains("--from 0:6"),
        "{err}"
    );
    let lines = tail_lines(
        &[
            "clicks",
            "--store",
            &url,
            "--from",
            "earliest",
            "--partitions",
            "1",
        ],
        4,
    );
    let printed: Vec<String> = lines.iter().map(|l| event_of(l.as_bytes())).collect();
    assert_eq!(printed, young);

    let consume = |extra: &[&str]| {
        let mut args = vec![
            "consume",
            "--group",
            "g",
            "--stream",
            "clicks",
            "--store",
            &url,
            "--partitions",
            "1",
        ];
        args.extend_from_slice(extra);
        sluice(&args)
    };
    let stopped = consume(&[]);
    assert_eq!(stopped.status.code(), Some(5), "{}", text(&stopped.stderr));
    let err = text(&stopped.stderr);
    assert!(
        err.contains("below the first retained offset 6") && err.contains("--skip-expired"),
        "{err}"
    );
    assert!(stopped.stdout.is_empty());
    let skipped = consume(&["--skip-expired"]);
    assert!(skipped.status.success(), "{}", text(&skipped.stderr));
    let err = text(&skipped.stderr);
    assert!(
        err.contains("skipped 6 events deleted by retention (offsets 0..6)"),
        "{err}"
    );
    let got: Vec<String> = text(&skipped.stdout)
        .lines()
        .map(|l| event_of(l.as_bytes()))
        .collect();
    assert_eq!(got, young);
    let again = consume(&[]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        again.stdout.is_empty(),
        "the checkpoint moved past the skipped offsets"
    );

    // Through a gateway.
    rt.block_on(async {
        let gw = TestGateway::start(config_for_cli(), store.clone()).await;
        let base = format!("http://{}", gw.addr);
        let tail = tokio::task::spawn_blocking({
            let base = base.clone();
            move || sluice(&["tail", "clicks", "--url", &base, "--from", "0:0"])
        })
        .await
        .unwrap();
        assert_eq!(tail.status.code(), Some(1));
        let err = text(&tail.stderr);
        assert!(
            err.contains("offset 0 has expired") && err.contains("--from 0:6"),
            "{err}"
        );
        let lines = tokio::task::spawn_blocking(move || {
            tail_lines(&["clicks", "--url", &base, "--from", "earliest"], 4)
        })
        .await
        .unwrap();
        let printed: Vec<String> = lines.iter().map(|l| event_of(l.as_bytes())).collect();
        assert_eq!(printed, young);
        gw.stop().await;
    });
}

fn config_for_cli() -> Config {
    config()
}

/// `[gc] enabled` runs gc inside the gateway on its schedule; the metrics
/// say so.
async fn the_schedule_collects(b: Backend) {
    let place = Place::new(b);
    let store = place.store();
    append(&store, 10, "old", 3).await;
    append(&store, 0, "young", 1).await;
    let mut config = config();
    config.gc.enabled = true;
    config.gc.interval = "1s".into();
    let gw = TestGateway::start(config, place.store()).await;
    let log = Log::new(place.store(), "check", RetryPolicy::default());
    let s: StreamPath = log.stream("default", "clicks");
    let deadline = Instant::now() + WITHIN;
    while log.refresh_watermark(&s, 0).await.unwrap().first_seq != 3 {
        assert!(
            Instant::now() < deadline,
            "the schedule never raised the watermark"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The run that raised the watermark counts itself when it ends: wait
    // (bounded) for that, not just for its deletions.
    let client = reqwest::Client::new();
    let metrics = loop {
        let metrics = common::gateway::scrape(&gw, &client).await;
        let done = metrics.contains("sluice_gc_deleted_total{kind=\"record\"}")
            && metrics.contains("sluice_gc_runs_total{outcome=\"ok\"}");
        if done {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "gc metrics never appeared:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        metrics.contains("sluice_gc_last_success_timestamp_seconds"),
        "{metrics}"
    );
    gw.stop().await;
}

macro_rules! backends {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn readers() {
                readers_get_expired_or_events($backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn schedule() {
                the_schedule_collects($backend).await;
            }
        }
    };
}

backends!(file, Backend::File);
backends!(s3, Backend::S3);
