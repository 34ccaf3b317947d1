//! The binary's start: clear errors for bad stores and config, the address line.

mod common;

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
