//! The binary's start: clear errors for bad stores and config, the address line.

mod common;

use common::process::Gateway;

use std::process::{Command, Stdio};

fn serve_with(env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("serve")
        .env("SLUICE_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run sluice");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unsupported_store_scheme_names_it() {
    let (ok, err) = serve_with(&[("SLUICE_STORE", "ftp://example/x")]);
    assert!(!ok);
    assert!(err.contains("unsupported scheme \"ftp\""), "{err}");
}

#[test]
fn missing_bucket_is_a_startup_error() {
    let m = common::moto();
    let (ok, err) = serve_with(&[
        ("SLUICE_STORE", "s3://no-such-bucket-here/root"),
        ("AWS_ENDPOINT_URL", &m.endpoint),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ]);
    assert!(!ok);
    assert!(
        err.contains("no-such-bucket-here") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn bad_config_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, "[batch]\nmax_age = 5\n").unwrap();
    let (ok, err) = serve_with(&[("SLUICE_CONFIG", file.to_str().unwrap())]);
    assert!(!ok);
    assert!(
        err.contains("sluice.toml") && err.contains("max_age"),
        "{err}"
    );
    std::fs::write(&file, "[streams]\npartitions = 0\n").unwrap();
    let (ok, err) = serve_with(&[("SLUICE_CONFIG", file.to_str().unwrap())]);
    assert!(!ok);
    assert!(err.contains("streams.partitions"), "{err}");
}

fn check_config(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("check-config")
        .args(args)
        .env_remove("SLUICE_CONFIG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run sluice");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn check_config_validates_file_and_environment_without_serving() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:9999\"\n[streams]\npartitions = 2\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (ok, out, err) = check_config(&[path], &[]);
    assert!(ok, "{err}");
    assert!(
        out.contains("127.0.0.1:9999") && out.contains("2 partitions"),
        "{out}"
    );
    // SLUICE_<SECTION>__<KEY> overrides the file.
    let (ok, out, _) = check_config(&[path], &[("SLUICE_STREAMS__PARTITIONS", "6")]);
    assert!(ok && out.contains("6 partitions"), "{out}");
    let (ok, _, err) = check_config(&[path], &[("SLUICE_STREAMS__PARTITIONS", "0")]);
    assert!(!ok && err.contains("streams.partitions"), "{err}");
    let (ok, _, err) = check_config(&[path], &[("SLUICE_BATCH__MAX_AGEE_MS", "5")]);
    assert!(!ok && err.contains("max_agee_ms"), "{err}");
}

/// `(name, value)` pairs as `Gateway::spawn` takes them.
fn owned<const N: usize>(env: [(&str, String); N]) -> Vec<(String, String)> {
    env.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Send `request` (with `Connection: close`) to `addr`; the whole answer.
fn exchange(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer
}

/// `SLUICE_LOG_FORMAT=json`: one JSON object a line on stderr, and a refused
/// request's line carries the id the client got in `X-Request-Id` and in
/// the problem body.
#[test]
fn json_logs_carry_the_request_id_of_each_error() {
    let data = tempfile::tempdir().unwrap();
    let env = [
        ("SLUICE_STORE", format!("file://{}", data.path().display())),
        ("SLUICE_LOG_FORMAT", "json".to_string()),
    ];
    let mut gw = Gateway::spawn("json", &owned(env), None);
    let body = "{not json";
    let post = format!(
        "POST /v1/streams/clicks/events HTTP/1.1\r\nHost: sluice\r\nContent-Type: application/json\r\n\
         X-Request-Id: client-id-42\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(&gw.addr, &post);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-request-id: client-id-42"),
        "{answer}"
    );
    assert!(
        answer.contains(r#""request_id":"client-id-42""#),
        "{answer}"
    );

    gw.kill();
    let stderr = gw.stderr();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let error = lines
        .iter()
        .find(|l| l["fields"]["request_id"] == "client-id-42")
        .unwrap_or_else(|| panic!("no log line with the request id:\n{stderr}"));
    assert_eq!(error["fields"]["status"], 400, "{error}");
    assert_eq!(error["level"], "INFO", "{error}");
}

/// `SLUICE_METRICS=false`: `/metrics` is a 404 that says why, and a metrics
/// listener with nothing to serve is a startup error.
#[test]
fn metrics_off_answers_404_and_refuses_a_metrics_listener() {
    let data = tempfile::tempdir().unwrap();
    let store = format!("file://{}", data.path().display());
    let (ok, err) = serve_with(&[
        ("SLUICE_METRICS", "false"),
        ("SLUICE_METRICS_LISTEN", "127.0.0.1:0"),
        ("SLUICE_STORE", &store),
    ]);
    assert!(!ok);
    assert!(err.contains("metrics_listen"), "{err}");

    let env = [("SLUICE_STORE", store), ("SLUICE_METRICS", "false".into())];
    let gw = Gateway::spawn("metrics-off", &owned(env), None);
    let get = "GET /metrics HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n";
    let answer = exchange(&gw.addr, get);
    drop(gw);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("urn:sluice:problem:not-found"), "{answer}");
    assert!(answer.contains("metrics = false"), "{answer}");
}
