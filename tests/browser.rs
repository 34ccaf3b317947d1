//! A real browser reads the SSE route: headless Chromium opens an
//! `EventSource` from a test page and must receive the events posted while it
//! listens, in order, each once, with the right `lastEventId`.
//!
//! Needs `/usr/bin/chromium` (Debian package `chromium`; `tests/run.sh`
//! installs it). Without it the test fails, it does not skip.
//!
//! Origin: the gateway has no CORS yet, so the page must be same-origin with
//! the SSE route. Rather than weakening the browser (`--disable-web-security`),
//! the test's page server plays a same-origin reverse proxy: it answers the
//! page and the page's reports itself and splices any connection whose first
//! request is for `/v1/…` to the gateway byte for byte. The browser thus runs
//! with its normal security model and sees the gateway's bytes unchanged, and
//! the test stays valid once CORS exists.
//!
//! Results: the page POSTs `/open` on `es.onopen`, `/error` on `es.onerror`
//! or a script error, `/progress` after each frame, and `/result` (every frame
//! it got, as JSON) once it has all events; the test waits on those reports
//! with deadlines, and fails early if Chromium exits or the page errors.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::chromium::{Chromium, PageServer};
use common::gateway::{test_config, TestGateway};
use object_store::memory::InMemory;
use serde_json::Value;
use sluice::store::{Store, StoreKind};
use tokio::time::Instant;

/// Events posted while the browser listens.
const N: usize = 5;
const STREAM: &str = "browser";

/// The test page. `from=earliest`: the stream is empty when the page opens,
/// so it must get exactly the N events posted afterwards. (`from=latest` would
/// race: `onopen` fires on the response headers, which the gateway sends
/// before its pump has fixed the start position at the head.)
fn page_html() -> String {
    format!(
        r#"<!doctype html>
<meta charset="utf-8">
<title>sluice SSE</title>
<script>
const N = {N};
const report = (what, body) =>
  fetch("/" + what, {{ method: "POST", body: JSON.stringify(body) }});
const frames = [];
let events = 0, opens = 0, errors = 0;
window.onerror = (message) => report("error", {{ script: String(message) }});
const es = new EventSource("/v1/streams/{STREAM}/events?from=earliest");
es.onopen = () => {{ opens++; report("open", {{ opens }}); }};
es.onerror = () => {{
  errors++;
  report("error", {{ errors, readyState: es.readyState }});
}};
es.addEventListener("events", (m) => {{
  const data = JSON.parse(m.data);
  frames.push({{ lastEventId: m.lastEventId, data }});
  events += data.events.length;
  report("progress", {{ events, lastEventId: m.lastEventId }});
  if (events >= N) {{
    es.close();
    report("result", {{ opens, errors, frames }});
  }}
}});
</script>
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_event_source_receives_posted_events_in_order() {
    let started = Instant::now();
    let mut config = test_config();
    config.streams.partitions = 1;
    let store = Store::from_parts(Arc::new(InMemory::new()), "", StoreKind::Memory);
    let gw = TestGateway::start(config, store).await;

    let server = PageServer::bind().await;
    let page = format!("{}/", server.origin());
    let mut reports = server.serve_with_api(page_html(), gw.addr);

    let mut chromium = Chromium::open(&page);
    // First start of a fresh profile can be slow on a loaded 2-core machine.
    let (what, body) = reports
        .next(
            &mut chromium,
            started + Duration::from_secs(60),
            "the EventSource to open",
        )
        .await;
    assert_eq!((what.as_str(), &body["opens"]), ("open", &Value::from(1)));

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for i in 0..N {
        let resp = client
            .post(gw.url(&format!("/v1/streams/{STREAM}/events")))
            .header("content-type", "application/json")
            .body(format!(r#"{{"n":{i}}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "durable post {i}");
        let ack: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!(
            (&ack["accepted"], &ack["partition"], &ack["first_offset"]),
            (&Value::from(1), &Value::from(0), &Value::from(i)),
            "{ack}"
        );
    }

    let (what, result) = reports
        .next(
            &mut chromium,
            Instant::now() + Duration::from_secs(30),
            "the page's result",
        )
        .await;
    assert_eq!(what, "result", "{result}");
    assert_eq!(result["opens"], 1, "the EventSource reconnected: {result}");
    assert_eq!(result["errors"], 0, "{result}");
    let frames = result["frames"].as_array().expect("frames");
    let mut next = 0u64;
    for frame in frames {
        let data = &frame["data"];
        assert_eq!(data["partition"], 0, "{frame}");
        assert_eq!(data["first_offset"], next, "a gap or a repeat: {frame}");
        for event in data["events"].as_array().expect("events") {
            assert!(event["received_at"].is_string(), "{event}");
            assert_eq!(event["event"], serde_json::json!({ "n": next }), "{event}");
            next += 1;
        }
        assert_eq!(
            frame["lastEventId"],
            format!("0:{next}"),
            "the id is the position after the frame: {frame}"
        );
    }
    assert_eq!(next, N as u64, "{result}");
    assert_eq!(frames.last().unwrap()["lastEventId"], format!("0:{N}"));

    drop(chromium);
    gw.stop().await;
}
