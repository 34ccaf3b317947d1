//! Compaction against real stores (file, moto S3), read back with DuckDB:
//! every committed event of the compacted hours exactly once, each field
//! equal to what was sent; re-runs, racing runs, a late commit and a run
//! stopped between claim and file never change that.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path as FsPath;
use std::sync::Arc;

use common::gateway::{config_from, TestGateway};
use common::{Backend, Place};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde_json::Value;
use sluice::compact::run::{run, Scope};
use sluice::compact::{CompactError, Hour, Report};
use sluice::config::Config;
use sluice::log::retry::RetryPolicy;
use sluice::log::segment::{ReceivedAt, SegmentBuilder};
use sluice::log::Log;
use sluice::store::Store;

const HOUR_MS: i64 = 3_600_000;

const SCHEMA: &str = r#"{"type":"object","properties":{
  "user":{"type":"string"},"n":{"type":"integer"},"price":{"type":"number"},
  "ok":{"type":"boolean"},"tags":{"type":"array"},"meta":{"type":"object"}}}"#;

/// `orders` has a schema (typed columns); `clicks` is auto-created (inferred).
fn config() -> Config {
    let text = format!(
        "[streams]\npartitions = 2\n[tenants.default.streams.orders]\nschema = '''{SCHEMA}'''\n"
    );
    let mut config = config_from(&text);
    // Compaction's store calls get the default deadline, not the test
    // gateway's 300 ms: a busy CI box's fsync can take longer.
    config.batch.store_retry_ms = 10_000;
    config.validate().unwrap();
    config
}

/// Events with every kind of field, odd spacing and escapes kept as sent.
fn orders(from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| {
            format!(
                r#"{{"user":"u{i}\t\u00e9","n":{i},"price":{}.25,"ok":{},"tags":["a", {i}],"meta":{{ "k" : "v{i}" }},"note":"x{i}"}}"#,
                i % 7,
                i % 2 == 0
            )
        })
        .collect()
}

/// `v` changes kind between events: kept as JSON text.
fn clicks(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 3 {
            0 => format!(r#"{{"page":"/p{i}","v":{i}}}"#),
            1 => format!(r#"{{"page":"/p{i}","v":"s{i}","extra":[{i}]}}"#),
            _ => format!(r#"{{"page":"/p{i}","v":null}}"#),
        })
        .collect()
}

async fn post(gw: &TestGateway, stream: &str, events: &[String]) {
    for chunk in events.chunks(50) {
        let resp = reqwest::Client::new()
            .post(gw.url(&format!("/v1/streams/{stream}/events")))
            .header("content-type", "application/x-ndjson")
            .body(chunk.join("\n"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }
}

fn log_on(store: &Store, writer: &str) -> Arc<Log> {
    Arc::new(Log::new(store.clone(), writer, RetryPolicy::default()))
}

/// Every committed event of `stream`: (partition, offset) → (received ms, event text).
async fn committed(store: &Store, stream: &str) -> BTreeMap<(u32, u64), (i64, String)> {
    let log = log_on(store, "reader");
    let path = log.stream("default", stream);
    let mut all = BTreeMap::new();
    for p in 0..2 {
        let batch = log.read(&path, p, 0, usize::MAX).await.unwrap();
        for (i, line) in batch.events.iter().enumerate() {
            let (at, event) = sluice::compact::table::envelope(line).unwrap();
            let text = String::from_utf8(event.to_vec()).unwrap();
            all.insert((p, batch.first_offset + i as u64), (at, text));
        }
    }
    all
}

/// Copy the stream's `tables/` to a local directory (S3) or point at it (file).
async fn tables_dir(store: &Store, stream: &str) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let prefix = format!("root/default/{stream}/tables/");
    for (key, bytes) in table_files(store, stream).await {
        let to = out.path().join(key.strip_prefix(&prefix).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(&to, &bytes).unwrap();
    }
    out
}

fn duckdb(dir: &FsPath) -> Vec<BTreeMap<String, Value>> {
    common::duckdb::read_parquet(&dir.join("**/*.parquet"))
}

/// DuckDB's rows equal the committed events: each (partition, offset) once,
/// its receive time, and every field as sent (typed columns by value, JSON
/// columns byte for byte, the rest in `_extra`).
fn assert_table_matches(
    rows: &[BTreeMap<String, Value>],
    want: &BTreeMap<(u32, u64), (i64, String)>,
) {
    let keys: Vec<(u32, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["partition"].as_u64().unwrap() as u32,
                r["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    let unique: BTreeSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "an event appears twice");
    assert_eq!(keys, want.keys().copied().collect::<Vec<_>>());
    for (row, (at, event)) in rows.iter().zip(want.values()) {
        assert_eq!(row["received_ms"].as_i64().unwrap(), *at);
        let sent: serde_json::Map<String, Value> = serde_json::from_str(event).unwrap();
        let raw = raw_fields(event);
        let extra: serde_json::Map<String, Value> = match &row["_extra"] {
            Value::String(s) => serde_json::from_str(s).unwrap(),
            _ => Default::default(),
        };
        for (name, value) in &sent {
            let got = match row.get(name) {
                Some(v) if !v.is_null() || value.is_null() => v,
                _ => extra
                    .get(name)
                    .unwrap_or_else(|| panic!("{name} lost in {event}: {row:?}")),
            };
            let same = match (value, got) {
                // A JSON column (objects, arrays, kinds that vary): the text as sent.
                (_, Value::String(text)) if *text == raw[name] => true,
                (Value::String(sent), Value::String(text)) => sent == text,
                (v, g) if v.is_number() && g.is_number() => {
                    v.as_f64() == g.as_f64() && (v.is_f64() || v.as_i64() == g.as_i64())
                }
                (v, g) => v == g,
            };
            assert!(same, "{name}: sent {value}, table has {got} ({event})");
        }
    }
}

/// Each top-level field's value text as sent.
fn raw_fields(event: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    sluice::compact::columns::fields(event.as_bytes(), |k, v| {
        out.insert(k.into_owned(), String::from_utf8(v.to_vec()).unwrap());
    })
    .unwrap();
    out
}

fn later(hours: i64) -> i64 {
    chrono::Utc::now().timestamp_millis() + hours * HOUR_MS
}

async fn compact(store: &Store, config: &Config, writer: &str) -> Report {
    run(log_on(store, writer), config, &Scope::default(), later(2))
        .await
        .unwrap()
}

async fn table_files(store: &Store, stream: &str) -> BTreeMap<String, bytes::Bytes> {
    let prefix = object_store::path::Path::from(format!("root/default/{stream}/tables"));
    let objects: Vec<_> = store.inner.list(Some(&prefix)).try_collect().await.unwrap();
    let mut files = BTreeMap::new();
    for o in objects {
        let bytes = store
            .inner
            .get(&o.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        files.insert(o.location.to_string(), bytes);
    }
    files
}

/// Append one segment of `events` received at `at`, as a gateway would.
async fn append_at(store: &Store, stream: &str, at: i64, events: &[String]) {
    let log = log_on(store, "late-writer");
    let mut b = SegmentBuilder::default();
    for e in events {
        b.push(ReceivedAt::from_millis(at), e.as_bytes());
    }
    let segment = b.seal(1).unwrap().unwrap();
    let path = log.stream("default", stream);
    log.append(&path, 0, &segment, &ulid::Ulid::new().to_string())
        .await
        .unwrap();
}

async fn compaction_round_trip(backend: Backend) {
    let place = Place::new(backend);
    let config = config();
    let gw = TestGateway::start(config.clone(), place.store()).await;
    post(&gw, "orders", &orders(0, 300)).await;
    post(&gw, "clicks", &clicks(90)).await;
    gw.stop().await;
    let store = place.store();

    let first = compact(&store, &config, "c1").await;
    assert_eq!(first.events, 390, "{first:?}");
    assert!(first.output_bytes > 0 && first.files >= 2, "{first:?}");
    for stream in ["orders", "clicks"] {
        let dir = tables_dir(&store, stream).await;
        assert_table_matches(&duckdb(dir.path()), &committed(&store, stream).await);
    }

    // Idempotent: a second run writes nothing and changes no file.
    let before = table_files(&store, "orders").await;
    let again = compact(&store, &config, "c2").await;
    assert_eq!(
        (again.files, again.events, again.repaired),
        (0, 0, 0),
        "{again:?}"
    );
    assert_eq!(table_files(&store, "orders").await, before);

    // A run stopped between claim and file: the next run writes the same file.
    let (lost_key, lost_bytes) = before.iter().next().unwrap();
    store
        .inner
        .delete(&object_store::path::Path::from(lost_key.as_str()))
        .await
        .unwrap();
    let repaired = compact(&store, &config, "c3").await;
    assert_eq!(repaired.repaired, 1, "{repaired:?}");
    assert_eq!(&table_files(&store, "orders").await[lost_key], lost_bytes);

    // A commit later than the hour's compaction lands in a new file of that hour.
    let at = committed(&store, "orders").await.values().next().unwrap().0;
    append_at(&store, "orders", at, &orders(1000, 5)).await;
    let late = compact(&store, &config, "c4").await;
    assert_eq!((late.files, late.events), (1, 5), "{late:?}");
    let dir = tables_dir(&store, "orders").await;
    let all = committed(&store, "orders").await;
    assert_eq!(all.len(), 305);
    assert_table_matches(&duckdb(dir.path()), &all);
}

#[tokio::test]
async fn compaction_round_trip_on_the_file_store() {
    compaction_round_trip(Backend::File).await;
}

#[tokio::test]
async fn compaction_round_trip_on_s3() {
    compaction_round_trip(Backend::S3).await;
}

/// Two runs at once (two replicas' schedules): every event once.
async fn racing_runs(backend: Backend) {
    let place = Place::new(backend);
    let config = config();
    let store = place.store();
    let at = Hour::of(chrono::Utc::now().timestamp_millis() - 5 * HOUR_MS).start() + 1000;
    for i in 0..20 {
        append_at(&store, "orders", at + i, &orders(i as usize * 10, 10)).await;
    }
    let scope = Scope::default();
    let (a, b) = tokio::join!(
        run(log_on(&store, "a"), &config, &scope, later(0)),
        run(log_on(&place.store(), "b"), &config, &scope, later(0)),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.events + b.events, 200, "{a:?} {b:?}");
    let dir = tables_dir(&store, "orders").await;
    assert_table_matches(&duckdb(dir.path()), &committed(&store, "orders").await);
}

#[tokio::test]
async fn racing_runs_write_each_event_once_on_the_file_store() {
    racing_runs(Backend::File).await;
}

#[tokio::test]
async fn racing_runs_write_each_event_once_on_s3() {
    racing_runs(Backend::S3).await;
}

#[tokio::test]
async fn an_open_hour_is_refused_with_when_it_closes() {
    let place = Place::new(Backend::Memory);
    let now = chrono::Utc::now().timestamp_millis();
    let scope = Scope {
        stream: Some("orders".into()),
        tenant: Some("default".into()),
        hour: Some(Hour::of(now)),
        since: None,
    };
    let err = run(log_on(&place.store(), "c"), &config(), &scope, now)
        .await
        .unwrap_err();
    assert!(matches!(err, CompactError::OpenHour { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("is still open") && text.contains("compaction.lateness_ms"),
        "{text}"
    );
}

/// `sluice compact` on a file store prints its JSON report.
#[test]
fn the_command_compacts_a_store_and_prints_a_report() {
    let data = tempfile::tempdir().unwrap();
    let url = format!("file://{}", data.path().display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(&url).unwrap();
        let store = Store::from_parts(store.inner, "", store.kind);
        let at = chrono::Utc::now().timestamp_millis() - 3 * HOUR_MS;
        let log = log_on(&store, "w");
        let mut b = SegmentBuilder::default();
        b.push(ReceivedAt::from_millis(at), br#"{"a":1}"#);
        let path = log.stream("default", "clicks");
        let seg = b.seal(1).unwrap().unwrap();
        log.append(&path, 0, &seg, "one").await.unwrap();
    });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["compact", "--store", &url, "--stream", "clicks"])
        .env_remove("SLUICE_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["events"], 1, "{report}");
    assert_eq!(report["files"], 1, "{report}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["compact", "--store", &url, "--hour", "2026-13-01T00"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("YYYY-MM-DDTHH"));
}
