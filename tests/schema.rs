//! JSON Schema per stream and dead letters, over HTTP: each violation comes
//! back by index with its keyword and both paths; mixed batches commit
//! exactly the valid events, contiguous; dead letters are a normal stream
//! that can be read and replayed; a broken schema stops the start.

mod common;

use common::gateway::{config_from, event_of, memory, read_partition, TestGateway};
use serde_json::{json, Value};
use sluice::config::Config;
use sluice::store::Store;

const SCHEMA: &str = r#"{
  "type": "object",
  "required": ["event", "user"],
  "additionalProperties": false,
  "properties": {
    "event": {"type": "string", "enum": ["click", "view"]},
    "user": {"type": "integer"},
    "email": {"type": "string", "pattern": "^[^@]+@[^@]+$"},
    "items": {"type": "array", "items": {
      "type": "object", "required": ["sku"], "properties": {"sku": {"type": "string"}}
    }}
  }
}"#;

/// Stream `orders` has the schema (one partition, so offsets are easy to
/// check); `audited` has it too, with dead letters.
fn config(schema: &str, extra: &str) -> Config {
    let text = format!(
        "[tenants.default.streams.orders]\npartitions = 1\nschema = '''{schema}'''\n\
         [tenants.default.streams.audited]\npartitions = 1\ndead_letter = true\nschema = '''{schema}'''\n{extra}"
    );
    config_from(&text)
}

async fn post(gw: &TestGateway, stream: &str, body: String) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(gw.url(&format!("/v1/streams/{stream}/events")))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn get(gw: &TestGateway, path: &str) -> Value {
    let bytes = reqwest::get(gw.url(path))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// (event, keyword, instance path, schema path)
const VIOLATIONS: [(&str, &str, &str, &str); 6] = [
    (r#"{"event":"click"}"#, "required", "/", "/required"),
    (
        r#"{"event":"click","user":"x"}"#,
        "type",
        "/user",
        "/properties/user/type",
    ),
    (
        r#"{"event":"buy","user":1}"#,
        "enum",
        "/event",
        "/properties/event/enum",
    ),
    (
        r#"{"event":"click","user":1,"email":"nope"}"#,
        "pattern",
        "/email",
        "/properties/email/pattern",
    ),
    (
        r#"{"event":"click","user":1,"x":1}"#,
        "additionalProperties",
        "/",
        "/additionalProperties",
    ),
    (
        r#"{"event":"view","user":1,"items":[{"sku":"a"},{}]}"#,
        "required",
        "/items/1",
        "/properties/items/items/required",
    ),
];

fn valid(n: usize) -> String {
    format!(r#"{{"event":"view","user":{n},"items":[{{"sku":"s{n}"}}]}}"#)
}

#[tokio::test]
async fn each_violation_is_reported_by_index_with_both_paths_and_valid_events_commit_contiguously()
{
    let store = memory();
    let gw = TestGateway::start(config(SCHEMA, ""), store.clone()).await;
    // valid, bad, valid, bad, …: valid events at even indexes.
    let mut items = Vec::new();
    for (i, (bad, ..)) in VIOLATIONS.iter().enumerate() {
        items.push(valid(i));
        items.push(bad.to_string());
    }
    let (status, answer) = post(&gw, "orders", format!("[{}]", items.join(","))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (&answer["accepted"], &answer["rejected"]),
        (&json!(6), &json!(6))
    );
    let errors = answer["errors"].as_array().unwrap();
    assert_eq!(errors.len(), VIOLATIONS.len());
    for (i, (e, (event, keyword, instance, schema))) in errors.iter().zip(VIOLATIONS).enumerate() {
        let want = json!({
            "index": 2 * i + 1, "type": "schema-violation", "keyword": keyword,
            "instance_path": instance, "schema_path": schema,
        });
        for field in ["index", "type", "keyword", "instance_path", "schema_path"] {
            assert_eq!(e[field], want[field], "{event}: {e}");
        }
        assert!(!e["detail"].as_str().unwrap().is_empty());
    }
    // Exactly the valid events, in order, at first_offset, first_offset+1, …
    let first = answer["first_offset"].as_u64().unwrap() as usize;
    let stored: Vec<String> = read_partition(&store, "orders", 0)
        .await
        .iter()
        .map(|l| event_of(l))
        .collect();
    let wanted: Vec<String> = (0..6).map(valid).collect();
    assert_eq!(stored[first..first + 6], wanted[..]);
    assert_eq!(stored.len(), 6);
    gw.stop().await;
}

#[tokio::test]
async fn all_invalid_is_422_with_the_list_and_the_list_is_capped() {
    let mut c = config(SCHEMA, "");
    c.limits.max_reported_errors = 5;
    let gw = TestGateway::start(c, memory()).await;
    let bad: Vec<&str> = VIOLATIONS.iter().map(|v| v.0).collect();
    let (status, problem) = post(&gw, "orders", format!("[{}]", bad.join(","))).await;
    assert_eq!(status, 422);
    assert_eq!(problem["type"], "urn:sluice:problem:invalid-events");
    assert_eq!(problem["errors"].as_array().unwrap().len(), 5);
    assert_eq!(problem["errors_omitted"], 1);
    assert_eq!(problem["errors"][0]["keyword"], "required");
    // 20 000 invalid events still make a small answer.
    let many = vec![VIOLATIONS[0].0; 9_999].join(",");
    let (status, problem) = post(&gw, "orders", format!("[{},{}]", valid(0), many)).await;
    assert_eq!(status, 200);
    assert_eq!(problem["errors"].as_array().unwrap().len(), 5);
    assert_eq!(problem["errors_omitted"], 9_994);
    gw.stop().await;
}

#[tokio::test]
async fn describe_shows_the_schema_and_a_stream_without_one_still_checks_objects() {
    let gw = TestGateway::start(config(SCHEMA, ""), memory()).await;
    let d = get(&gw, "/v1/streams/orders").await;
    let want: Value = serde_json::from_str(SCHEMA).unwrap();
    assert_eq!(d["schema"], want);
    assert_eq!(d["dead_letter"], Value::Null);
    assert_eq!(
        get(&gw, "/v1/streams/audited").await["dead_letter"],
        "audited.dlq"
    );
    let (status, answer) = post(&gw, "free", r#"[{"any":1},[1],3]"#.into()).await;
    assert_eq!(status, 200);
    assert_eq!(answer["errors"][0]["type"], "not-an-object");
    assert_eq!(answer["errors"][1]["index"], 2);
    gw.stop().await;
}

/// Every dead-letter record of `stream.dlq`, through the gateway's long-poll.
async fn dead_letters(gw: &TestGateway, stream: &str) -> Vec<Value> {
    let page = get(
        gw,
        &format!("/v1/streams/{stream}.dlq/events?partition=0&offset=0"),
    )
    .await;
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].clone())
        .collect()
}

/// `sluice replay audited.dlq --into audited ARGS` against `gw`: (exit code,
/// stdout, stderr). Run off the runtime: the gateway must keep serving.
async fn replay(gw: &TestGateway, args: &[&str]) -> (i32, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["replay", "audited.dlq", "--into", "audited", "--url"])
        .arg(gw.url(""))
        .args(args)
        .env_remove("SLUICE_KEY");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn stored(store: &Store, stream: &str) -> Vec<String> {
    read_partition(store, stream, 0)
        .await
        .iter()
        .map(|l| event_of(l))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_read_and_replayed_once_the_schema_is_fixed() {
    let store = memory();
    let gw = TestGateway::start(config(SCHEMA, ""), store.clone()).await;
    let body = format!(
        "[{},{},{},{},\"not an object\"]",
        valid(1),
        VIOLATIONS[1].0, // user is a string
        VIOLATIONS[2].0, // event "buy"
        VIOLATIONS[4].0, // extra property
    );
    let (status, answer) = post(&gw, "audited", body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (&answer["accepted"], &answer["dead_lettered"]),
        (&json!(1), &json!(4))
    );
    let letters = dead_letters(&gw, "audited").await;
    assert_eq!(letters.len(), 4);
    assert_eq!(letters[0]["stream"], "audited");
    assert_eq!(letters[0]["index"], 1);
    assert_eq!(letters[0]["error"]["keyword"], "type");
    assert_eq!(letters[0]["error"]["instance_path"], "/user");
    assert_eq!(letters[0]["event"], json!({"event":"click","user":"x"}));
    assert_eq!(letters[3]["error"]["type"], "not-an-object");
    assert_eq!(letters[3]["event"], "not an object");
    let metrics = reqwest::get(gw.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"sluice_events_total{tenant="default",stream="audited",outcome="dead_lettered"} 4"#
        ),
        "{metrics}"
    );
    gw.stop().await;

    // The producer's bug is understood: "buy" and extra properties are now
    // fine; a string user is still wrong. Same store, relaxed schema.
    let relaxed = SCHEMA
        .replace(
            r#""additionalProperties": false"#,
            r#""additionalProperties": true"#,
        )
        .replace(r#"["click", "view"]"#, r#"["click", "view", "buy"]"#);
    let gw = TestGateway::start(config(&relaxed, ""), store.clone()).await;
    // Only offset 1 ("buy") first: a range.
    let (code, out, err) = replay(&gw, &["--from-offset", "1", "--to-offset", "2"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("replayed 1 of 1"), "{out}");
    // Then everything: offset 1 again (replay is at-least-once by design),
    // the string user and the non-object still fail and stay.
    let (code, out, err) = replay(&gw, &[]).await;
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(out.contains("replayed 2 of 4"), "{out}");
    assert!(
        err.contains("audited.dlq offset 0: still invalid: schema-violation"),
        "{err}"
    );
    assert!(err.contains("offset 3: still invalid"), "{err}");
    let events = stored(&store, "audited").await;
    assert_eq!(
        events,
        [
            valid(1),
            VIOLATIONS[2].0.to_string(),
            VIOLATIONS[2].0.to_string(),
            VIOLATIONS[4].0.to_string(),
        ]
    );
    assert_eq!(
        dead_letters(&gw, "audited").await.len(),
        4,
        "nothing re-dead-lettered"
    );
    gw.stop().await;
}

fn check_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        text.replace("DIR", &dir.path().display().to_string()),
    )
    .unwrap();
    std::fs::write(dir.path().join("broken.json"), "{\"type\": ").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check-config")
        .arg(&path)
        .env_remove("SLUICE_CONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_broken_schema_stops_the_start_naming_the_stream_and_the_problem() {
    let (ok, err) =
        check_config("[tenants.acme.streams.clicks]\nschema_file = \"DIR/broken.json\"\n");
    assert!(!ok);
    assert!(err.contains("tenants.acme.streams.clicks.schema"), "{err}");
    assert!(err.contains("broken.json is not valid JSON"), "{err}");
    let (ok, err) =
        check_config("[tenants.acme.streams.clicks]\nschema = '{\"type\": \"objekt\"}'\n");
    assert!(!ok);
    assert!(err.contains("tenants.acme.streams.clicks.schema"), "{err}");
    assert!(err.contains("objekt"), "{err}");
    let (ok, err) =
        check_config("[tenants.acme.streams.clicks]\nschema_file = \"DIR/missing.json\"\n");
    assert!(!ok);
    assert!(err.contains("missing.json"), "{err}");
    let (ok, _) = check_config(
        "[tenants.acme.streams.clicks]\nschema = { type = \"object\", required = [\"a\"] }\n",
    );
    assert!(ok, "a schema as a TOML table");
}
