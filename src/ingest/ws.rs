//! `GET /v1/streams/{stream}/ws`: WebSocket ingest.
//!
//! Owns one ingest connection: text frames of events in (one object, an
//! array, or NDJSON), one ack frame out per frame, shaped like the HTTP
//! answer plus `"frame"` (its index on the connection) and, with
//! `?envelope=true`, the client's own `"id"`. At most
//! `websocket.max_inflight_frames` frames await their acks; past that the
//! gateway stops reading the socket, so a flooding client is slowed by TCP.

use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use super::{ingest_bytes, Accepted, Target};
use crate::auth::Grant;
use crate::body::Body;
use crate::decode::{Encoding, Format};
use crate::error::{Problem, ProblemType};
use crate::server::upgrade::{self, Socket};
use crate::server::App;
use crate::tenants::StreamSettings;

/// Close code when a frame is larger than `limits.max_body_bytes`.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code when the gateway shuts down.
pub const CLOSE_GOING_AWAY: u16 = 1001;

#[derive(Clone, Copy)]
struct Mode {
    durable: bool,
    envelope: bool,
}

pub async fn handle(
    app: &Arc<App>,
    grant: &Grant,
    stream: &str,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Problem> {
    let settings = grant.writable(stream)?;
    let mode = Mode {
        durable: !super::wants_async(&req),
        envelope: req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .any(|kv| kv == "envelope=true"),
    };
    upgrade::check(&req)?;
    let permit = app.socket_permit()?;
    let (resp, socket) = upgrade::accept(&mut req, app.config.limits.max_body_bytes)?;
    let app = app.clone();
    let dest = Arc::new(Owned {
        grant: grant.clone(),
        stream: stream.to_string(),
        settings,
    });
    tokio::spawn(async move {
        let _permit = permit;
        if let Some(socket) = socket.await {
            metrics::gauge!("sluice_websocket_connections", "kind" => "ingest").increment(1.0);
            serve(app, dest, socket, mode).await;
            metrics::gauge!("sluice_websocket_connections", "kind" => "ingest").decrement(1.0);
        }
    });
    Ok(resp)
}

/// A connection's target, owned for its lifetime.
struct Owned {
    grant: Grant,
    stream: String,
    settings: Arc<StreamSettings>,
}

impl Owned {
    fn target(&self) -> Target<'_> {
        Target {
            grant: &self.grant,
            stream: &self.stream,
            settings: &self.settings,
            dead_letter: self.settings.dead_letter,
        }
    }
}

async fn serve(app: Arc<App>, dest: Arc<Owned>, socket: Socket, mode: Mode) {
    let (mut sink, mut source) = socket.split();
    let max = app.config.websocket.max_inflight_frames.max(1);
    let (out, mut rx) = mpsc::channel::<Message>(max + 2);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let last = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || last {
                break;
            }
        }
    });
    let inflight = Arc::new(Semaphore::new(max));
    let mut closing = app.closing();
    let mut frame = 0u64;
    // The close we send, once every frame read has its answer.
    let mut closing_with: Option<Message> = None;
    loop {
        let next = tokio::select! {
            m = source.next() => m,
            _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => {
                closing_with = Some(upgrade::close_frame(CLOSE_GOING_AWAY, "gateway shutting down"));
                break;
            }
        };
        let text = match next {
            Some(Ok(Message::Text(t))) => Bytes::from(t),
            Some(Ok(Message::Binary(_))) => {
                let p = Problem::new(ProblemType::BinaryFrame, "send events as text frames");
                let _ = out.send(Message::text(frame_error(frame, None, &p))).await;
                frame += 1;
                continue;
            }
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => continue,
            Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
                closing_with = Some(upgrade::close_frame(
                    CLOSE_TOO_BIG,
                    "frame larger than limits.max_body_bytes",
                ));
                break;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "websocket ingest read failed");
                break;
            }
        };
        // Waiting here is the flood control: the socket is not read meanwhile.
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            break;
        };
        let (app, dest, out) = (app.clone(), dest.clone(), out.clone());
        tokio::spawn(async move {
            let reply = answer(&app, dest.target(), text, frame, mode).await;
            let _ = out.send(Message::text(reply)).await;
            drop(permit);
        });
        frame += 1;
    }
    // Every frame read gets its answer before our close goes out.
    let _ = inflight.acquire_many(max as u32).await;
    let we_closed = closing_with.is_some();
    if let Some(frame) = closing_with {
        let _ = out.send(frame).await;
    }
    drop(out);
    let _ = writer.await;
    if we_closed {
        upgrade::await_client_close(&mut source, std::time::Duration::from_secs(5)).await;
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    events: &'a RawValue,
}

/// The ack (or error) frame for one text frame.
async fn answer(app: &Arc<App>, target: Target<'_>, text: Bytes, frame: u64, mode: Mode) -> String {
    let unwrapped = match unwrap_frame(text, mode.envelope) {
        Ok(u) => u,
        Err(p) => return frame_error(frame, None, &p),
    };
    let id = unwrapped.id.as_deref();
    match ingest_bytes(
        app,
        target,
        unwrapped.events,
        unwrapped.format,
        Encoding::Identity,
        mode.durable,
    )
    .await
    {
        Ok(accepted) => frame_ack(frame, id, &accepted),
        Err(p) => frame_error(frame, id, &p),
    }
}

/// A text frame's events, ready for [`ingest_bytes`].
#[derive(Debug)]
pub(crate) struct Unwrapped {
    /// The client's `"id"` (raw JSON), with `?envelope=true`.
    pub id: Option<String>,
    /// The events' bytes: a slice of the frame.
    pub events: Bytes,
    pub format: Format,
}

/// Take a text frame apart: with `envelope`, `{"id":…,"events":[…]}`
/// (else 400 `bad-envelope`); without, the whole frame is the events.
pub(crate) fn unwrap_frame(text: Bytes, envelope: bool) -> Result<Unwrapped, Problem> {
    let (id, events) = if envelope {
        let e = serde_json::from_slice::<Envelope>(&text).map_err(|e| {
            Problem::new(
                ProblemType::BadEnvelope,
                format!("with envelope=true a frame is {{\"id\":…,\"events\":[…]}}: {e}"),
            )
        })?;
        (
            e.id.map(|i| i.get().to_string()),
            slice(&text, e.events.get()),
        )
    } else {
        (None, text)
    };
    let format = frame_format(&events);
    Ok(Unwrapped { id, events, format })
}

/// An array or a single-line object is JSON; several lines are NDJSON.
fn frame_format(events: &[u8]) -> Format {
    let t = events.trim_ascii();
    if t.starts_with(b"[") || !t.contains(&b'\n') {
        Format::Json
    } else {
        Format::Ndjson
    }
}

fn slice(whole: &Bytes, part: &str) -> Bytes {
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    whole.slice(start..start + part.len())
}

fn frame_ack(frame: u64, id: Option<&str>, accepted: &Accepted) -> String {
    let mut v = serde_json::to_value(accepted).unwrap_or_default();
    tag(&mut v, frame, id);
    v.to_string()
}

fn frame_error(frame: u64, id: Option<&str>, problem: &Problem) -> String {
    let mut v = problem.to_json();
    tag(&mut v, frame, id);
    v.to_string()
}

fn tag(v: &mut serde_json::Value, frame: u64, id: Option<&str>) {
    if let Some(o) = v.as_object_mut() {
        o.insert("frame".into(), frame.into());
        if let Some(id) = id.and_then(|i| serde_json::from_str(i).ok()) {
            o.insert("id".into(), id);
        }
    }
}
