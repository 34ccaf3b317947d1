//! WebSocket ingest load: one connection, one frame in flight, ack by ack.

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::sync::{watch, Barrier};
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::Message;

use super::client::{wait_for_start, Answer, LoadSpec, Phases, Tally, STREAM};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connection_task(
    spec: Arc<LoadSpec>,
    connected: Arc<Barrier>,
    mut started: watch::Receiver<Option<Phases>>,
) -> Tally {
    let mut tally = Tally::new();
    let url = format!("ws://{}/v1/streams/{STREAM}/ws", spec.addr);
    let socket = match tokio_tungstenite::connect_async(url).await {
        Ok((s, _)) => Some(s),
        Err(e) => {
            tally.connection_error(format!("websocket connect: {e}"));
            None
        }
    };
    connected.wait().await;
    let phases = wait_for_start(&mut started).await;
    if let Some(socket) = socket {
        drive(socket, &spec, &phases, &mut tally).await;
    }
    tally
}

async fn drive(mut socket: Socket, spec: &LoadSpec, phases: &Phases, tally: &mut Tally) {
    let frame = String::from_utf8_lossy(&spec.body).into_owned();
    loop {
        let sent = Instant::now();
        if sent >= phases.end {
            return;
        }
        if socket.send(Message::text(frame.clone())).await.is_err() {
            tally.connection_error("websocket send failed".into());
            return;
        }
        let Ok(Some(ack)) = timeout_at(phases.end, next_text(&mut socket)).await else {
            return; // in flight when the run ended, or the socket closed
        };
        if sent >= phases.measure_start {
            tally.record(&answer_of(ack), sent.elapsed());
        }
    }
}

async fn next_text(socket: &mut Socket) -> Option<bytes::Bytes> {
    while let Some(Ok(msg)) = socket.next().await {
        if let Message::Text(t) = msg {
            return Some(bytes::Bytes::from(t));
        }
    }
    None
}

/// An ack with `accepted` is a 200; an error frame carries its `status`.
fn answer_of(ack: bytes::Bytes) -> Answer {
    let v: serde_json::Value = serde_json::from_slice(&ack).unwrap_or_default();
    let status = match v.get("status").and_then(|s| s.as_u64()) {
        Some(code) => StatusCode::from_u16(code as u16).unwrap_or(StatusCode::BAD_GATEWAY),
        None if v.get("accepted").is_some() => StatusCode::OK,
        None => StatusCode::BAD_GATEWAY,
    };
    Answer {
        status,
        body: ack,
        close: false,
    }
}
