//! TLS on the gateway's listener: HTTPS requests are served with the
//! configured certificate, and a certificate replaced on disk is served to
//! the next connection without a restart.

mod common;

use std::path::Path;
use std::time::Duration;

use common::gateway::{memory, test_config};
use sluice::config::TlsConfig;
use sluice::server::tls::Tls;
use sluice::server::Gateway;
use tokio::net::TcpListener;
use tokio::time::Instant;

struct Pem {
    cert: String,
    key: String,
}

fn self_signed() -> Pem {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    Pem {
        cert: made.cert.pem(),
        key: made.signing_key.serialize_pem(),
    }
}

/// Replace both files the way cert-manager and certbot do: write, then rename.
fn install(dir: &Path, pem: &Pem) {
    for (name, text) in [("cert.pem", &pem.cert), ("key.pem", &pem.key)] {
        let tmp = dir.join(format!("{name}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// A client that trusts only `pem` and reaches `localhost` at `addr`; a new
/// client per call, so each request opens a new connection.
async fn get_healthz(addr: std::net::SocketAddr, pem: &Pem) -> Result<u16, reqwest::Error> {
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pem.cert.as_bytes()).unwrap()])
        .resolve("localhost", addr)
        .build()?;
    let url = format!("https://localhost:{}/healthz", addr.port());
    Ok(client.get(url).send().await?.status().as_u16())
}

#[tokio::test]
async fn https_is_served_and_a_replaced_certificate_reaches_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (self_signed(), self_signed());
    install(dir.path(), &a);
    let tls = Tls::load(&TlsConfig {
        cert_file: dir.path().join("cert.pem").display().to_string(),
        key_file: dir.path().join("key.pem").display().to_string(),
        reload_interval_ms: 50,
        handshake_timeout_ms: 2_000,
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = Gateway::with_store(test_config(), memory(), listener).with_tls(tls.clone());
    let addr = gateway.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gateway.run(async {
        let _ = stopped.await;
    }));

    assert_eq!(get_healthz(addr, &a).await.unwrap(), 200);
    assert!(get_healthz(addr, &b).await.is_err(), "B is not served yet");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = reqwest::get(format!("http://{addr}/healthz")).await;
    assert!(plain.is_err(), "plain HTTP answered on a TLS listener");

    install(dir.path(), &b);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_healthz(addr, &b).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(tls.reloads() >= 1);
    assert!(
        get_healthz(addr, &a).await.is_err(),
        "the old certificate is still served"
    );
    let _ = stop.send(());
    task.await.unwrap();
}

#[test]
fn a_bad_certificate_file_stops_the_start_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(dir.path().join("key.pem"), self_signed().key).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("serve")
        .env("SLUICE_LISTEN", "127.0.0.1:0")
        .env("SLUICE_STORE", "memory://")
        .env("SLUICE_TLS__CERT_FILE", &cert)
        .env("SLUICE_TLS__KEY_FILE", dir.path().join("key.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&cert.display().to_string()), "{err}");
}

/// A gateway on TLS with `handshake_timeout_ms`, and its address.
async fn tls_gateway(handshake_timeout_ms: u64) -> (std::net::SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &self_signed());
    let tls = Tls::load(&TlsConfig {
        cert_file: dir.path().join("cert.pem").display().to_string(),
        key_file: dir.path().join("key.pem").display().to_string(),
        reload_interval_ms: 2_000,
        handshake_timeout_ms,
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = Gateway::with_store(test_config(), memory(), listener).with_tls(tls);
    let addr = gateway.local_addr().unwrap();
    tokio::spawn(gateway.run(std::future::pending()));
    (addr, dir)
}

/// Read until the server closes the connection (EOF or reset), bounded by
/// `limit`: how long that took from `since`, or `None` if it stayed open.
async fn closed_after(
    conn: &mut tokio::net::tcp::OwnedReadHalf,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let mut sink = Vec::new();
    let read = tokio::time::timeout(limit, conn.read_to_end(&mut sink)).await;
    read.is_ok().then(|| since.elapsed())
}

/// The handshake timeout on the gateway's own accept loop: a client that
/// opens TCP and never sends a ClientHello, and one that sends it a byte at
/// a time (slowloris), are both disconnected after `handshake_timeout_ms`,
/// not before, while a real client is still served.
#[tokio::test]
async fn silent_and_trickling_handshakes_are_cut_off_at_the_timeout() {
    use tokio::io::AsyncWriteExt;
    let timeout = Duration::from_millis(400);
    let (addr, dir) = tls_gateway(400).await;
    let pem = Pem {
        cert: std::fs::read_to_string(dir.path().join("cert.pem")).unwrap(),
        key: String::new(),
    };

    let started = Instant::now();
    let (mut silent, _keep) = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap()
        .into_split();
    let (mut trickling, mut tx) = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap()
        .into_split();
    // A TLS record header announcing a 512-byte handshake, then a byte each 20 ms.
    let writer = tokio::spawn(async move {
        let mut hello = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
        hello.resize(517, 0);
        for b in hello {
            if tx.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert_eq!(get_healthz(addr, &pem).await.unwrap(), 200, "a real client");

    let margin = Duration::from_secs(3);
    for (name, conn) in [("silent", &mut silent), ("trickling", &mut trickling)] {
        let after = closed_after(conn, started, timeout + margin).await;
        let after = after.unwrap_or_else(|| panic!("{name} client still connected"));
        assert!(after >= timeout, "{name} client cut off early: {after:?}");
        assert!(
            after < timeout + margin,
            "{name} client cut off late: {after:?}"
        );
    }
    writer.abort();
}
