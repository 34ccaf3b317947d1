//! A real browser writes cross-origin: headless Chromium loads a page from
//! another local origin that sends one event with `navigator.sendBeacon`
//! (`?key=`, a string body, so `text/plain;charset=UTF-8` and no preflight)
//! and one with `fetch` (`Authorization: Bearer` and `application/json`, so a
//! CORS preflight first). From the origin the key allows, both are committed
//! to the key's tenant; the same page from an origin the key does not allow
//! gets its preflight refused (the `fetch` rejects) and its beacon answered
//! 403 (nothing is committed).
//!
//! Needs `/usr/bin/chromium` (Debian package `chromium`; `tests/run.sh`
//! installs it). Without it the test fails, it does not skip. The browser
//! runs with its normal security model: no `--disable-web-security`.
//!
//! Origins: the gateway listens on `127.0.0.1:G`; two in-test page servers on
//! `127.0.0.1:A` (in the key's `origins`) and `127.0.0.1:B` (in no key's)
//! serve the same page, which talks to `http://127.0.0.1:G`.
//!
//! Results: the page POSTs `/result` to its own server (same-origin) with the
//! beacon's return value and the fetch's status and JSON (or its error), and
//! `/error` on a script error; the test waits on those reports with
//! deadlines and fails early if Chromium exits. A beacon is fire-and-forget
//! and its answer invisible to the page, so the test then waits, bounded, for
//! the gateway to have answered it: `sluice_http_requests_total` on
//! `/metrics` (read with a second, `metrics`-scoped key) by route and status,
//! `ingest` 200 for the allowed beacon, `ingest` 403 for the refused one. A
//! request is counted after its handler returns, so an ingest 200 counted is
//! an event committed; the store is then read to check exactly which events
//! are there. The counters are process-wide, so they are read as deltas, and
//! both pages run in one test, one after the other, so that nothing else in
//! this binary moves them.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::chromium::{Chromium, PageServer, Reports};
use common::gateway::{event_of, memory, request_counts, test_config, RequestCounts, TestGateway};
use serde_json::{json, Value};
use sluice::auth::keys;
use sluice::config::{KeyConfig, Scope, TenantConfig};
use sluice::log::retry::RetryPolicy;
use sluice::log::Log;
use tokio::time::Instant;

const TENANT: &str = "acme";
/// Partitions per stream (the tests' reads cover all of them).
const PARTITIONS: u32 = 1;

/// The test page: one beacon, one fetch, then one `/result` report.
fn page_html(gateway: SocketAddr, key: &str) -> String {
    format!(
        r#"<!doctype html>
<meta charset="utf-8">
<title>sluice CORS</title>
<script>
const G = "http://{gateway}";
const KEY = "{key}";
const report = (what, body) =>
  fetch("/" + what, {{ method: "POST", body: JSON.stringify(body) }});
window.onerror = (message) => report("error", {{ script: String(message) }});
window.onunhandledrejection = (e) => report("error", {{ rejection: String(e.reason) }});
(async () => {{
  const beacon = navigator.sendBeacon(
    G + "/v1/streams/beacons/events?key=" + KEY,
    JSON.stringify({{ kind: "beacon", n: 1 }}));
  let fetched;
  try {{
    const r = await fetch(G + "/v1/streams/clicks/events", {{
      method: "POST",
      headers: {{ "Authorization": "Bearer " + KEY, "Content-Type": "application/json" }},
      body: JSON.stringify({{ kind: "fetch" }}),
    }});
    const text = await r.text();
    let body;
    try {{ body = JSON.parse(text); }} catch (_) {{ body = text; }}
    fetched = {{ status: r.status, body }};
  }} catch (e) {{
    fetched = {{ error: e.name, message: String(e.message) }};
  }}
  report("result", {{ beacon, fetch: fetched }});
}})();
</script>
"#
    )
}

/// The page's `/result`: any other report fails, as does whatever
/// [`Reports::next`] fails on (the deadline, Chromium exiting, an `error`).
async fn page_result(
    reports: &mut Reports,
    chromium: &mut Chromium,
    deadline: Instant,
    page: &str,
) -> Value {
    let waiting_for = format!("the result of {page}");
    let (what, body) = reports.next(chromium, deadline, &waiting_for).await;
    assert_eq!(
        what,
        "result",
        "{page} reported {what:?}: {body}; Chromium's output:\n{}",
        chromium.log_tail()
    );
    body
}

/// A key of tenant acme for every stream.
fn key(id: &str, secret: &str, scopes: Vec<Scope>, origins: Vec<String>) -> KeyConfig {
    KeyConfig {
        id: id.into(),
        tenant: TENANT.into(),
        hash: keys::hash_text(secret),
        scopes,
        streams: vec!["*".into()],
        origins,
        rate: None,
    }
}

/// Requests counted for `route` and `status` since `base`.
fn delta(now: &RequestCounts, base: &RequestCounts, route: &str, status: &str) -> u64 {
    let key = (route.to_string(), status.to_string());
    let get = |c: &RequestCounts| c.get(&key).copied().unwrap_or(0);
    get(now) - get(base)
}

/// The gateway under test and what the test reads it with.
struct Harness {
    gw: TestGateway,
    client: reqwest::Client,
    /// A server key with the `metrics` scope (no origins).
    metrics_key: String,
    /// One deadline for every wait of the test.
    deadline: Instant,
}

impl Harness {
    /// Every event (the bytes inside its envelope) of an acme stream.
    async fn events(&self, stream: &str) -> Vec<String> {
        let log = Log::new(self.gw.store.clone(), "reader", RetryPolicy::default());
        let s = log.stream(TENANT, stream);
        let mut out = Vec::new();
        for p in 0..PARTITIONS {
            let batch = log.read(&s, p, 0, usize::MAX).await.unwrap();
            out.extend(batch.events.iter().map(|e| event_of(e)));
        }
        out
    }

    /// The request counters, from `/metrics`.
    async fn counts(&self) -> RequestCounts {
        let resp = self
            .client
            .get(self.gw.url("/metrics"))
            .bearer_auth(&self.metrics_key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "/metrics with the metrics key");
        request_counts(&resp.text().await.unwrap())
    }

    /// Poll the counters (bounded) until `done`: a request is counted after
    /// its handler returned, so after an ingest's commit.
    async fn wait_counts(
        &self,
        chromium: &mut Chromium,
        what: &str,
        done: impl Fn(&RequestCounts) -> bool,
    ) -> RequestCounts {
        loop {
            let counts = self.counts().await;
            if done(&counts) {
                return counts;
            }
            chromium.check_running(what);
            assert!(
                Instant::now() < self.deadline,
                "timed out waiting for {what}; requests by (route, status): {counts:?}; \
                 Chromium's output:\n{}",
                chromium.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const BEACON: &str = r#"{"kind":"beacon","n":1}"#;
const CLICK: &str = r#"{"kind":"fetch"}"#;

/// The page from the key's origin: the preflighted fetch gets a durable 200,
/// the beacon is committed. Returns the counters once both are counted.
async fn allowed_origin_commits(
    h: &Harness,
    origin: &str,
    reports: &mut Reports,
    base: &RequestCounts,
) -> RequestCounts {
    let mut chromium = Chromium::open(&format!("{origin}/"));
    let result = page_result(reports, &mut chromium, h.deadline, "page A").await;
    assert_eq!(result["beacon"], true, "sendBeacon queued it: {result}");
    assert_eq!(result["fetch"]["status"], 200, "{result}");
    let ack = &result["fetch"]["body"];
    assert_eq!(
        (&ack["accepted"], &ack["rejected"]),
        (&json!(1), &json!(0)),
        "{result}"
    );
    // The beacon's answer is invisible to the page: wait for its 200.
    let what = format!("the fetch's and the beacon's 200s from {origin}");
    let counts = h
        .wait_counts(&mut chromium, &what, |c| {
            delta(c, base, "ingest", "200") >= 2
        })
        .await;
    assert_eq!(delta(&counts, base, "ingest", "200"), 2, "{counts:?}");
    assert_eq!(delta(&counts, base, "ingest", "403"), 0, "{counts:?}");
    // Counted before the browser saw the 204, so before the fetch resolved.
    assert_eq!(
        delta(&counts, base, "preflight", "204"),
        1,
        "one preflight, for the fetch (none for a text/plain beacon): {counts:?}"
    );
    assert_eq!(h.events("beacons").await, [BEACON]);
    assert_eq!(h.events("clicks").await, [CLICK]);
    counts
}

/// The same page from an origin no key allows: the preflight is refused, so
/// the fetch rejects; the beacon (no preflight) is answered 403.
async fn other_origin_is_refused(
    h: &Harness,
    origin: &str,
    reports: &mut Reports,
    base: &RequestCounts,
) {
    let mut chromium = Chromium::open(&format!("{origin}/"));
    let result = page_result(reports, &mut chromium, h.deadline, "page B").await;
    assert_eq!(result["beacon"], true, "sendBeacon queued it: {result}");
    assert_eq!(result["fetch"]["error"], "TypeError", "must fail: {result}");
    let what = format!("the beacon's 403 from {origin}");
    let counts = h
        .wait_counts(&mut chromium, &what, |c| {
            delta(c, base, "ingest", "403") >= 1
        })
        .await;
    assert_eq!(delta(&counts, base, "ingest", "403"), 1, "{counts:?}");
    assert_eq!(delta(&counts, base, "preflight", "403"), 1, "{counts:?}");
    assert_eq!(delta(&counts, base, "ingest", "200"), 0, "{counts:?}");
    assert_eq!(
        h.events("beacons").await,
        [BEACON],
        "only origin A's beacon"
    );
    assert_eq!(h.events("clicks").await, [CLICK], "only origin A's fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_writes_cross_origin_only_from_allowed_origins() {
    // Two Chromium starts on a loaded 2-core machine: generous, but bounded.
    let deadline = Instant::now() + Duration::from_secs(50);
    // The page needs the gateway's address and the key, the key's config the
    // page's origin: bind the page servers first, give them the page after.
    let server_a = PageServer::bind().await;
    let server_b = PageServer::bind().await;
    let (origin_a, origin_b) = (server_a.origin().to_string(), server_b.origin().to_string());
    let web_key = keys::generate().unwrap();
    let metrics_key = keys::generate().unwrap();
    let mut config = test_config();
    config.streams.partitions = PARTITIONS;
    let acme = TenantConfig::default();
    config.tenants.insert(TENANT.into(), acme);
    config.keys = vec![
        key("web", &web_key, vec![Scope::Write], vec![origin_a.clone()]),
        key("ops", &metrics_key, vec![Scope::Metrics], vec![]),
    ];
    let gw = TestGateway::start(config, memory()).await;
    let html = page_html(gw.addr, &web_key);
    let mut reports_a = server_a.serve(html.clone());
    let mut reports_b = server_b.serve(html);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let h = Harness {
        gw,
        client,
        metrics_key,
        deadline,
    };

    // One after the other: the counters are process-wide.
    let before = h.counts().await;
    let after_a = allowed_origin_commits(&h, &origin_a, &mut reports_a, &before).await;
    other_origin_is_refused(&h, &origin_b, &mut reports_b, &after_a).await;

    // Why the beacon was refused, as the gateway says it (the browser hides it).
    let resp = h
        .client
        .post(h.gw.url(&format!("/v1/streams/beacons/events?key={web_key}")))
        .header("origin", &origin_b)
        .header("content-type", "text/plain;charset=UTF-8")
        .body(BEACON)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    let problem: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let kind = "urn:sluice:problem:forbidden-origin";
    assert_eq!(problem["type"], kind, "{problem}");

    h.gw.stop().await;
}
