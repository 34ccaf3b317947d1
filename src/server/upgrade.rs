//! The WebSocket handshake on a hyper request (RFC 6455 §4.2).
//!
//! Owns the 101 answer and turning the upgraded connection into a
//! `WebSocketStream`. What flows over the socket belongs to the callers.

use futures::stream::SplitStream;
use futures::StreamExt;
use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::body::Body;
use crate::error::{Problem, ProblemType};

/// A server-side WebSocket over an upgraded hyper connection.
pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Is this a WebSocket upgrade request? No side effects: call it before any work.
pub fn check(req: &Request<Incoming>) -> Result<(), Problem> {
    let headers = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| v.trim().eq_ignore_ascii_case(token))
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(Problem::new(
            ProblemType::WebsocketRequired,
            "this route speaks WebSocket: send Upgrade: websocket",
        ));
    }
    if !headers.contains_key(header::SEC_WEBSOCKET_KEY) {
        return Err(Problem::new(
            ProblemType::BadWebsocket,
            "Sec-WebSocket-Key is missing",
        ));
    }
    Ok(())
}

/// Answer 101 to a checked upgrade request and hand back the future socket.
pub fn accept(
    req: &mut Request<Incoming>,
    max_frame_bytes: usize,
) -> Result<
    (
        Response<Body>,
        impl std::future::Future<Output = Option<Socket>>,
    ),
    Problem,
> {
    check(req)?;
    let accept = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|key| derive_accept_key(key.as_bytes()))
        .unwrap_or_default();
    let on_upgrade = hyper::upgrade::on(req);
    let mut resp = Response::new(crate::body::full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes));
    let socket = async move {
        let upgraded = on_upgrade.await.ok()?;
        Some(
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await,
        )
    };
    Ok((resp, socket))
}

/// A close frame with a code and a reason.
pub fn close_frame(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// After sending our close: wait (at most `limit`) for the client's, so the
/// TCP close does not reset frames the client has not read yet.
pub async fn await_client_close(source: &mut SplitStream<Socket>, limit: std::time::Duration) {
    let _ = tokio::time::timeout(limit, async {
        while let Some(Ok(m)) = source.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
