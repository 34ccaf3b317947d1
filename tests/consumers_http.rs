//! Consumer groups over HTTP against a real gateway: checkpoints and lag,
//! commits and their conflicts and rejections, tenant isolation, scopes, and
//! interop with `sluice consume` (the library call, store-direct).

mod common;

use std::time::Duration;

use common::exposition::{wait_for, Exposition};
use common::gateway::{config_from, test_config, TestGateway};
use common::keys::{entry, secret};
use serde_json::{json, Value};
use sluice::config::Config;
use sluice::consume::{consume, ConsumeOptions, Format, Output};
use sluice::store::Store;

/// Keys of two tenants: acme declares `clicks` with two partitions; beta
/// auto-creates its streams.
struct Keys {
    writer: String,
    reader: String,
    beta: String,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            writer: secret(),
            reader: secret(),
            beta: secret(),
        }
    }

    fn config(&self) -> Config {
        let streams = "[tenants.acme]\nauto_create = false\n[tenants.acme.streams.clicks]\npartitions = 2\n[tenants.beta]\n";
        let keys = [
            entry("writer", "acme", &self.writer, &["write"], ""),
            entry("reader", "acme", &self.reader, &["read"], ""),
            entry("beta", "beta", &self.beta, &["write", "read"], ""),
        ];
        config_from(&format!("{streams}{}", keys.concat()))
    }
}

const GROUP: &str = "/v1/streams/clicks/consumers/billing";
const COMMIT: &str = "/v1/streams/clicks/consumers/billing/commit";

async fn post_events(gw: &TestGateway, c: &reqwest::Client, key: Option<&str>, n: usize) {
    for i in 0..n {
        let mut req = c
            .post(gw.url("/v1/streams/clicks/events"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"n":{i}}}"#));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }
}

async fn get(gw: &TestGateway, c: &reqwest::Client, key: Option<&str>) -> (u16, Value) {
    let mut req = c.get(gw.url(GROUP));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn commit(
    gw: &TestGateway,
    c: &reqwest::Client,
    key: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut req = c
        .post(gw.url(COMMIT))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn heads(state: &Value) -> Vec<u64> {
    let rows = state["partitions"].as_array().unwrap();
    rows.iter()
        .map(|r| r["head_offset"].as_u64().unwrap())
        .collect()
}

/// Problem `type` suffix of an error body.
fn kind(v: &Value) -> &str {
    v["type"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("urn:sluice:problem:")
}

#[tokio::test]
async fn lag_commit_conflict_and_rejections() {
    let keys = Keys::new();
    let gw = TestGateway::start(keys.config(), common::gateway::memory()).await;
    let c = reqwest::Client::new();
    post_events(&gw, &c, Some(&keys.writer), 6).await;
    let reader = Some(keys.reader.as_str());

    // Never committed: null checkpoints, lag = head in every partition.
    let (status, state) = get(&gw, &c, reader).await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(
        (state["group"].as_str(), state["stream"].as_str()),
        (Some("billing"), Some("clicks"))
    );
    let h = heads(&state);
    assert_eq!((h.len(), h.iter().sum::<u64>()), (2, 6), "{state}");
    for (p, row) in state["partitions"].as_array().unwrap().iter().enumerate() {
        assert_eq!(row["partition"], p);
        assert_eq!(row["offset"], 0);
        assert!(
            row["seq"].is_null() && row["committed_at"].is_null(),
            "{row}"
        );
        assert_eq!(row["lag"], h[p]);
    }

    // Commit both partitions from "no checkpoint" to their heads.
    let body = json!({"partitions": [
        {"partition": 0, "seq": null, "offset": h[0]},
        {"partition": 1, "offset": h[1]},
    ]})
    .to_string();
    let (status, done) = commit(&gw, &c, reader, &body).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        done,
        json!({"partitions": [
            {"partition": 0, "seq": 0, "offset": h[0]},
            {"partition": 1, "seq": 0, "offset": h[1]},
        ]})
    );
    let (_, state) = get(&gw, &c, reader).await;
    for (p, row) in state["partitions"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            (row["seq"].as_u64(), row["offset"].as_u64()),
            (Some(0), Some(h[p]))
        );
        assert_eq!(row["lag"], 0, "{row}");
        assert!(
            row["committed_at"].as_str().unwrap().ends_with('Z'),
            "{row}"
        );
    }

    // The same stale seq again: partition 0 conflicts, partition 1 (from
    // its real seq 0) still advances; the body says which is which.
    let body = json!({"partitions": [
        {"partition": 0, "seq": null, "offset": h[0]},
        {"partition": 1, "seq": 0, "offset": h[1]},
    ]})
    .to_string();
    let (status, problem) = commit(&gw, &c, reader, &body).await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(kind(&problem), "checkpoint-conflict", "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("partition 0"),
        "{problem}"
    );
    assert_eq!(problem["conflicts"], json!([{"partition": 0, "seq": 0}]));
    assert_eq!(
        problem["partitions"],
        json!([{"partition": 1, "seq": 1, "offset": h[1]}])
    );
    let (_, after) = get(&gw, &c, reader).await;
    assert_eq!(
        after["partitions"][0], state["partitions"][0],
        "partition 0 unchanged"
    );
    assert_eq!(after["partitions"][1]["seq"], 1);

    // Rejections: nothing is created.
    // A partition whose checkpoint is past 0 (the events may all land in one).
    let (q, q_seq) = if h[1] > 0 { (1, 1) } else { (0, 0) };
    post_events(&gw, &c, Some(&keys.writer), 2).await;
    let (_, state) = get(&gw, &c, reader).await;
    let h = heads(&state);
    let past = json!({"partitions": [{"partition": 0, "seq": 0, "offset": h[0] + 1}]});
    let below = json!({"partitions": [{"partition": q, "seq": q_seq, "offset": 0}]});
    let no_such_seq = json!({"partitions": [{"partition": 0, "seq": 7, "offset": h[0]}]});
    let unknown = json!({"partitions": [{"partition": 2, "offset": 0}]});
    let twice = json!({"partitions": [{"partition": 0, "seq": 0, "offset": h[0]}, {"partition": 0, "seq": 0, "offset": h[0]}]});
    let extra = json!({"partitions": [{"partition": 0, "seq": 0, "offset": h[0], "x": 1}]});
    for bad in [
        past.to_string(),
        below.to_string(),
        no_such_seq.to_string(),
        unknown.to_string(),
        twice.to_string(),
        extra.to_string(),
        r#"{"partitions":[]}"#.to_string(),
        "not json".to_string(),
        r#"{"partitions":[{"partition":0,"offset":-1}]}"#.to_string(),
    ] {
        let (status, problem) = commit(&gw, &c, reader, &bad).await;
        assert_eq!(
            (status, kind(&problem)),
            (400, "bad-commit"),
            "{bad}: {problem}"
        );
    }
    let (_, unchanged) = get(&gw, &c, reader).await;
    assert_eq!(unchanged, state, "rejected commits change nothing");

    let big = format!(r#"{{"partitions":[],"pad":"{}"}}"#, "x".repeat(70_000));
    let (status, _) = commit(&gw, &c, reader, &big).await;
    assert_eq!(status, 413);
    let resp = c
        .get(gw.url("/v1/streams/clicks/consumers/a..b%2F"))
        .bearer_auth(&keys.reader)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = c
        .get(gw.url("/v1/streams/clicks/consumers/-bad"))
        .bearer_auth(&keys.reader)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (status, _) = commit(
        &gw,
        &c,
        reader,
        &json!({"partitions": [{"partition": 0, "seq": 0, "offset": h[0]}]}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "the valid commit after the rejections");
    gw.stop().await;
}

#[tokio::test]
async fn tenants_are_isolated_and_writers_cannot_consume() {
    let keys = Keys::new();
    let gw = TestGateway::start(keys.config(), common::gateway::memory()).await;
    let c = reqwest::Client::new();
    let (reader, beta) = (Some(keys.reader.as_str()), Some(keys.beta.as_str()));
    post_events(&gw, &c, Some(&keys.writer), 4).await;
    let (_, acme) = get(&gw, &c, reader).await;
    // The fuller partition of acme (the events may all land in one).
    let h = heads(&acme);
    let p = usize::from(h[1] > h[0]);
    assert!(h[p] > 0, "{acme}");
    let body = json!({"partitions": [{"partition": p, "offset": h[p]}]}).to_string();
    assert_eq!(commit(&gw, &c, reader, &body).await.0, 200);
    let (_, acme) = get(&gw, &c, reader).await;

    // beta's "clicks" is its own stream: empty, no checkpoints.
    let (status, theirs) = get(&gw, &c, beta).await;
    assert_eq!(status, 200, "{theirs}");
    let rows = theirs["partitions"].as_array().unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        assert!(row["seq"].is_null(), "{row}");
        assert_eq!(
            (row["head_offset"].as_u64(), row["lag"].as_u64()),
            (Some(0), Some(0))
        );
    }
    // acme's head is not beta's: committing to it is past beta's head.
    let (status, problem) = commit(&gw, &c, beta, &body).await;
    assert_eq!((status, kind(&problem)), (400, "bad-commit"), "{problem}");
    // acme's seq 0 does not exist for beta.
    let stale = json!({"partitions": [{"partition": p, "seq": 0, "offset": 0}]}).to_string();
    assert_eq!(commit(&gw, &c, beta, &stale).await.0, 400);
    let own = json!({"partitions": [{"partition": p, "offset": 0}]}).to_string();
    let (status, done) = commit(&gw, &c, beta, &own).await;
    assert_eq!(
        (status, &done["partitions"][0]["seq"]),
        (200, &json!(0)),
        "{done}"
    );
    let (_, still) = get(&gw, &c, reader).await;
    assert_eq!(still, acme, "beta's commits never touch acme's checkpoints");

    // A write-only key may not read a group's state nor commit.
    let writer = Some(keys.writer.as_str());
    let (status, problem) = get(&gw, &c, writer).await;
    assert_eq!(
        (status, kind(&problem)),
        (403, "forbidden-scope"),
        "{problem}"
    );
    let (status, problem) = commit(&gw, &c, writer, &own).await;
    assert_eq!(
        (status, kind(&problem)),
        (403, "forbidden-scope"),
        "{problem}"
    );
    let (status, _) = get(&gw, &c, None).await;
    assert_eq!(status, 401);
    let resp = c
        .delete(gw.url(GROUP))
        .bearer_auth(&keys.reader)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    gw.stop().await;
}

fn opts(dir: &std::path::Path) -> ConsumeOptions {
    ConsumeOptions {
        max_bytes: u64::MAX,
        store: format!("file://{}", dir.display()),
        tenant: "default".into(),
        stream: "clicks".into(),
        group: "billing".into(),
        output: Output::Stdout,
        format: Format::Ndjson,
        max_events: None,
        partitions: 1,
        skip_expired: false,
    }
}

/// A commit over HTTP moves what `sluice consume` reads next, and a run of
/// `sluice consume` moves what the HTTP route shows.
#[tokio::test]
async fn http_commit_and_cli_consume_interoperate() {
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("file://{}", data.path().display())).unwrap();
    let mut config = test_config();
    config.streams.partitions = 1;
    let gw = TestGateway::start(config, store).await;
    let c = reqwest::Client::new();
    post_events(&gw, &c, None, 5).await;

    let body = json!({"partitions": [{"partition": 0, "offset": 3}]}).to_string();
    let (status, done) = commit(&gw, &c, None, &body).await;
    assert_eq!(status, 200, "{done}");

    let mut out = Vec::new();
    let report = consume(&opts(data.path()), &mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let got: Vec<String> = text
        .lines()
        .map(|l| common::gateway::event_of(l.as_bytes()))
        .collect();
    assert_eq!(
        got,
        [r#"{"n":3}"#, r#"{"n":4}"#],
        "read from the HTTP checkpoint"
    );
    assert_eq!(report.partitions[0].checkpoint_seq, Some(1));

    let (status, state) = get(&gw, &c, None).await;
    assert_eq!(status, 200, "{state}");
    let row = &state["partitions"][0];
    assert_eq!(
        (
            row["seq"].as_u64(),
            row["offset"].as_u64(),
            row["lag"].as_u64()
        ),
        (Some(1), Some(5), Some(0))
    );
    // The HTTP client that still holds seq 0 has lost to the CLI run.
    let stale = json!({"partitions": [{"partition": 0, "seq": 0, "offset": 5}]}).to_string();
    let (status, problem) = commit(&gw, &c, None, &stale).await;
    assert_eq!(
        (status, kind(&problem)),
        (409, "checkpoint-conflict"),
        "{problem}"
    );
    let metrics = c.get(gw.url("/metrics")).send().await.unwrap();
    let counts = common::gateway::request_counts(&metrics.text().await.unwrap());
    let conflicts = counts.get(&("consumers".to_string(), "409".to_string()));
    assert!(
        conflicts.is_some_and(|n| *n >= 1),
        "route label: {counts:?}"
    );
    gw.stop().await;
}

/// The lag of the groups a stream declares, summed over partitions, as
/// `/metrics` shows it (`None`: no such series yet).
fn lag_metric(metrics: &Exposition, stream: &str, group: &str) -> Option<u64> {
    let series: Vec<f64> = metrics
        .series("sluice_consumer_lag_events")
        .filter(|s| s.labels.get("stream").map(String::as_str) == Some(stream))
        .filter(|s| s.labels.get("group").map(String::as_str) == Some(group))
        .map(|s| s.value)
        .collect();
    (!series.is_empty()).then(|| series.iter().sum::<f64>() as u64)
}

/// Poll `/metrics` (bounded, ~10 s) until the group's lag is `want`.
async fn wait_for_lag(gw: &TestGateway, stream: &str, group: &str, want: u64) -> Exposition {
    let what = format!("lag of {group} on {stream} never became {want}");
    wait_for(&gw.url("/metrics"), Duration::from_secs(10), &what, |e| {
        lag_metric(e, stream, group) == Some(want)
    })
    .await
}

/// A declared group's lag is a metric per partition that follows the
/// head and the commits; an undeclared group never becomes a label value.
#[tokio::test]
async fn declared_groups_export_their_lag() {
    let text = r#"
[read]
consumer_lag_interval_ms = 100
[tenants.default.streams.lagged]
partitions = 2
consumer_groups = ["billing"]
"#;
    let gw = TestGateway::start(config_from(text), common::gateway::memory()).await;
    let client = reqwest::Client::new();
    wait_for_lag(&gw, "lagged", "billing", 0).await;
    let resp = client
        .post(gw.url("/v1/streams/lagged/events"))
        .header("content-type", "application/json")
        .body(r#"[{"n":1},{"n":2},{"n":3},{"n":4},{"n":5}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let partition = answer["partition"].as_u64().unwrap();
    wait_for_lag(&gw, "lagged", "billing", 5).await;

    let commit = json!({"partitions": [{"partition": partition, "seq": null, "offset": 3}]});
    let resp = client
        .post(gw.url("/v1/streams/lagged/consumers/billing/commit"))
        .body(commit.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    wait_for_lag(&gw, "lagged", "billing", 2).await;

    let adhoc = client
        .get(gw.url("/v1/streams/lagged/consumers/adhoc"))
        .send()
        .await
        .unwrap();
    assert_eq!(adhoc.status(), 200);
    let metrics = Exposition::parse(&common::gateway::scrape(&gw, &client).await);
    let text = &metrics.text;
    assert_eq!(lag_metric(&metrics, "lagged", "adhoc"), None, "{text}");
    assert!(
        text.contains("# TYPE sluice_consumer_lag_events gauge"),
        "{text}"
    );
    gw.stop().await;
}
