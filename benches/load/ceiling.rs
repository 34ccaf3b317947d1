//! The ceiling servers: this binary run as `--ceiling-server http|parse-zstd`.
//! They print `listening on ADDR` like the gateway, and exit when their stdin
//! closes (the harness is gone) or after `MAX_LIFETIME`.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::de::IgnoredAny;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub const HTTP: &str = "http";
pub const PARSE_ZSTD: &str = "parse-zstd";
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
const LISTEN_BACKLOG: u32 = 4096;

#[derive(Clone, Copy)]
enum Mode {
    /// Read the whole body, answer a small JSON object.
    Http,
    /// Also parse every event and zstd-1 compress the body.
    ParseZstd,
}

pub fn serve(mode: &str) {
    let mode = match mode {
        HTTP => Mode::Http,
        PARSE_ZSTD => Mode::ParseZstd,
        other => panic!("unknown ceiling server mode {other:?}; use {HTTP} or {PARSE_ZSTD}"),
    };
    exit_when_stdin_closes();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = super::env_parse("SLUICE_LOAD_CEILING_THREADS") {
        runtime.worker_threads(threads);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .expect("build the ceiling server's tokio runtime");
    runtime.block_on(accept_loop(mode));
}

fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        std::process::exit(0);
    });
}

async fn accept_loop(mode: Mode) {
    let listener = bind_loopback();
    announce(
        listener
            .local_addr()
            .expect("a bound listener has an address"),
    );
    let lifetime = tokio::time::sleep(MAX_LIFETIME);
    tokio::pin!(lifetime);
    loop {
        tokio::select! {
            () = &mut lifetime => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(mode, stream));
                }
                Err(e) => {
                    eprintln!("ceiling server: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// A listener with room for a whole connection storm: std's and tokio's
/// default backlog (128) drops SYNs when hundreds of clients connect at once.
fn bind_loopback() -> TcpListener {
    let socket = TcpSocket::new_v4().expect("create the ceiling server's socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind the ceiling server to 127.0.0.1");
    socket
        .listen(LISTEN_BACKLOG)
        .expect("listen on the ceiling server's socket")
}

fn announce(addr: SocketAddr) {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {addr}")
        .and_then(|()| stdout.flush())
        .expect("write the ceiling server's address to stdout");
}

async fn serve_connection(mode: Mode, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| answer(mode, request));
    // Clients hang up when a run ends; those errors are expected.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn answer(
    mode: Mode,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let body = request.into_body().collect().await?.to_bytes();
    let (status, json) = match mode {
        Mode::Http => (
            StatusCode::OK,
            serde_json::json!({ "received": body.len() }),
        ),
        Mode::ParseZstd => parse_and_compress(&body),
    };
    let response = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(json.to_string())))
        .expect("the response's parts are valid");
    Ok(response)
}

fn parse_and_compress(body: &[u8]) -> (StatusCode, serde_json::Value) {
    let events = match count_events(body) {
        Ok(events) => events,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": e.to_string() }),
            )
        }
    };
    match zstd::bulk::compress(body, 1) {
        Ok(compressed) => (
            StatusCode::OK,
            serde_json::json!({
                "accepted": events, "rejected": 0, "partition": 0, "first_offset": 0,
                "errors": [], "compressed_bytes": compressed.len(),
            }),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({ "error": e.to_string() }),
        ),
    }
}

/// Parses and validates every event without keeping it (as `RawValue`
/// would, but without turning on serde_json's `raw_value` feature, which
/// would rebuild the dependency tree for test and bench builds).
fn count_events(body: &[u8]) -> Result<usize, serde_json::Error> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        serde_json::from_slice::<Vec<IgnoredAny>>(body).map(|events| events.len())
    } else {
        serde_json::from_slice::<IgnoredAny>(body).map(|_| 1)
    }
}
