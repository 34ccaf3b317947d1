//! `GET /v1/streams/{stream}/subscribe`: a WebSocket subscription.
//!
//! Owns one subscriber connection: text frames
//! `{"partition":p,"first_offset":o,"events":[…]}` in log order per
//! partition. A subscriber more than `websocket.subscriber_queue_frames`
//! frames behind is closed with [`CLOSE_TOO_SLOW`]; it resumes with
//! `from=P:O,…` (its last offsets) and misses nothing. A position below a
//! partition's low watermark (deleted by retention) gets one text frame, the
//! `offset-expired` problem document naming the first retained offset, then
//! close [`CLOSE_OFFSET_EXPIRED`].

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::routes::{Out, Place, PumpEnd, Subscription};
use super::ReadError;
use crate::auth::Grant;
use crate::body::Body;
use crate::error::Problem;
use crate::log::LogError;
use crate::server::upgrade;
use crate::server::App;

/// Close code for a subscriber that fell behind its queue.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// Close code when the gateway shuts down.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// How long a closing subscriber has to answer our close frame.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Close code when the store cannot be read.
pub const CLOSE_STORE_UNAVAILABLE: u16 = 1011;
/// Close code when a position was deleted by retention (after a text frame
/// holding the `offset-expired` problem, whose `first_offset` is where the
/// partition's retained log starts).
pub const CLOSE_OFFSET_EXPIRED: u16 = 4010;

pub async fn handle(
    app: &Arc<App>,
    grant: &Grant,
    stream: &str,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Problem> {
    let at = Place {
        tenant: &grant.tenant.name,
        stream,
        partitions: grant.stream(stream)?.partitions,
    };
    upgrade::check(&req)?;
    let permit = app.socket_permit()?;
    let mut sub = Subscription::open(app, at, &req).await?;
    let subscriber = sub.take_permit();
    let (resp, socket) = upgrade::accept(&mut req, 64 * 1024)?;
    let app = app.clone();
    tokio::spawn(async move {
        let _permits = (permit, subscriber);
        let Some(socket) = socket.await else { return };
        metrics::gauge!("sluice_websocket_connections", "kind" => "subscribe").increment(1.0);
        serve(app, sub, socket).await;
        metrics::gauge!("sluice_websocket_connections", "kind" => "subscribe").decrement(1.0);
    });
    Ok(resp)
}

async fn serve(app: Arc<App>, sub: Subscription, socket: upgrade::Socket) {
    let (mut sink, mut source) = socket.split();
    let (tx, mut rx) = mpsc::channel(app.config.websocket.subscriber_queue_frames.max(1));
    let pump_app = app.clone();
    let mut pump = tokio::spawn(async move { sub.pump(&pump_app, Out::Ws(tx)).await });
    let ping = app.config.websocket.ping_interval_ms;
    let period = std::time::Duration::from_millis(ping.max(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let end = loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(f) => {
                    // Frames are JSON built from stored UTF-8 lines.
                    let Ok(text) = Utf8Bytes::try_from(f) else { break None };
                    // A client that keeps TCP open but never reads is let go.
                    let sent = tokio::time::timeout(CLOSE_WAIT, sink.send(Message::Text(text))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        break None;
                    }
                }
                None => break (&mut pump).await.ok(),
            },
            incoming = source.next() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                Some(Ok(_)) => {}
            },
            _ = ticker.tick() => {
                let sent = tokio::time::timeout(CLOSE_WAIT, sink.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    break None;
                }
            }
        }
    };
    pump.abort();
    if let Some(PumpEnd::Failed(e @ ReadError::Log(LogError::Expired { .. }))) = end {
        let frame = Problem::from(e).to_json().to_string();
        let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(Message::text(frame))).await;
        let close = upgrade::close_frame(
            CLOSE_OFFSET_EXPIRED,
            "offset expired; resume from the first retained offset",
        );
        let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(close)).await;
        upgrade::await_client_close(&mut source, CLOSE_WAIT).await;
        return;
    }
    let (code, reason) = match end {
        Some(PumpEnd::TooSlow) => (
            CLOSE_TOO_SLOW,
            "subscriber too slow; resume from your last offsets",
        ),
        Some(PumpEnd::Closing) => (CLOSE_GOING_AWAY, "gateway shutting down"),
        Some(PumpEnd::Failed(_)) => (
            CLOSE_STORE_UNAVAILABLE,
            "store unavailable; resume from your last offsets",
        ),
        Some(PumpEnd::ClientGone) | None => return,
    };
    let close = upgrade::close_frame(code, reason);
    let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(close)).await;
    upgrade::await_client_close(&mut source, CLOSE_WAIT).await;
}
