//! Ingest: bytes of events → decode → batcher → ack, for HTTP POST and
//! WebSocket frames alike.
//!
//! Owns the ingest flow ([`ingest_bytes`]) and its answer shapes (200 durable
//! with offsets, 202 async, 422 all invalid). Framing lives in `decode`,
//! buffering in `batch`, error wire format in `error`, the WebSocket
//! connection in `ws`.

pub mod ws;

use std::sync::Arc;

use bytes::Bytes;

use crate::body::Body;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;

use crate::auth::Grant;
use crate::batch::{Ack, Dest};
use crate::decode::{self, Decoded, Encoding, Format};
use crate::error::{EventError, Problem};
use crate::limit::RateState;
use crate::log::segment::ReceivedAt;
use crate::server::App;
use crate::tenants::StreamSettings;

/// Per-event errors listed in one response; the rest are counted.
pub const MAX_REPORTED_ERRORS: usize = 100;

/// What happened to one batch of events (a request or a frame).
#[derive(Debug, Serialize)]
pub struct Accepted {
    pub accepted: usize,
    pub rejected: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_offset: Option<u64>,
    pub errors: Vec<EventError>,
    #[serde(skip_serializing_if = "is_zero")]
    pub errors_omitted: usize,
    /// Where the caller stands against its rate limits (response headers).
    #[serde(skip)]
    pub rate: Option<RateState>,
}

/// Where a batch of events goes, and on whose behalf.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub grant: &'a Grant,
    pub stream: &'a str,
    pub settings: &'a Arc<StreamSettings>,
}

impl Target<'_> {
    fn dest(&self) -> Dest<'_> {
        Dest {
            tenant: &self.grant.tenant.name,
            stream: self.stream,
            settings: self.settings,
        }
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

pub async fn handle(
    app: &Arc<App>,
    grant: &Grant,
    stream: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, Problem> {
    let settings = grant.stream(stream)?;
    let target = Target {
        grant,
        stream,
        settings: &settings,
    };
    let durable = !wants_async(&req);
    let format = Format::from_content_type(header_str(req.headers(), header::CONTENT_TYPE))?;
    let encoding = Encoding::from_header(header_str(req.headers(), header::CONTENT_ENCODING))?;
    let body = read_body(app, req).await?;
    let answer = ingest_bytes(app, target, body, format, encoding, durable).await?;
    let status = if durable {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut resp = json(status, &answer);
    if let Some(rate) = answer.rate {
        rate.write_headers(resp.headers_mut());
    }
    Ok(resp)
}

/// Decode, validate and submit one batch of events; with `durable`, wait for
/// the commit (one deadline, `batch.ack_timeout_ms`, covers queueing and commit).
pub async fn ingest_bytes(
    app: &Arc<App>,
    target: Target<'_>,
    body: Bytes,
    format: Format,
    encoding: Encoding,
    durable: bool,
) -> Result<Accepted, Problem> {
    let at = ReceivedAt::now();
    let limits = &target.settings.limits;
    let raw = decode::decompress(body, encoding, limits.max_decoded_bytes)?;
    let decoded = decode::split(&raw, format, limits)?;
    let (accepted, rejected) = (decoded.events.len(), decoded.rejected.len());
    let dest = target.dest();
    let limiters = target.grant.limiters(target.settings);
    let rate =
        crate::limit::check(&limiters, accepted + rejected, raw.len()).inspect_err(|_| {
            app.batcher.count(
                dest.tenant,
                dest.stream,
                "rate_limited",
                accepted + rejected,
            )
        })?;
    let (errors, omitted) = report(&decoded);
    if rejected > 0 {
        app.batcher
            .count(dest.tenant, dest.stream, "invalid", rejected);
    }
    if accepted == 0 {
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-events",
            "Every event is invalid",
            format!("all {rejected} events were rejected; see errors"),
        );
        (p.errors, p.errors_omitted) = (errors, omitted);
        return Err(p);
    }
    let deadline = tokio::time::Instant::now() + app.config.batch.ack_timeout();
    let wait = app.config.batch.ack_timeout();
    let rx = app
        .batcher
        .submit(dest, decoded.events, raw.len(), at, durable, wait)
        .await?;
    drop(raw);
    let ack = match rx {
        None => None,
        Some(rx) => Some(wait_for_ack(app, rx, deadline).await?),
    };
    Ok(Accepted {
        accepted,
        rejected,
        partition: ack.map(|a| a.partition),
        first_offset: ack.map(|a| a.first_offset),
        errors,
        errors_omitted: omitted,
        rate,
    })
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `Prefer: respond-async` or `?async=true` (for beacons that cannot set headers).
pub(crate) fn wants_async<B>(req: &Request<B>) -> bool {
    let prefer = req
        .headers()
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"));
    let query = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .any(|kv| kv == "async=true" || kv == "async=1");
    prefer || query
}

async fn read_body(app: &App, req: Request<Incoming>) -> Result<Bytes, Problem> {
    let limit = app.config.limits.max_body_bytes;
    let too_large = || {
        Problem::payload_too_large(format!(
            "request body is larger than {limit} bytes (limits.max_body_bytes)"
        ))
    };
    let declared =
        header_str(req.headers(), header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let timeout = app.config.server.body_read_timeout();
    let collected = tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect())
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "Request timeout",
                format!(
                    "the body did not arrive within {} ms (server.body_read_timeout_ms)",
                    timeout.as_millis()
                ),
            )
        })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(Problem::bad_request(
            "body-read-failed",
            format!("could not read the request body: {e}"),
        )),
    }
}

fn report(decoded: &Decoded) -> (Vec<EventError>, usize) {
    let errors = decoded
        .rejected
        .iter()
        .take(MAX_REPORTED_ERRORS)
        .map(|r| EventError {
            index: r.index,
            kind: r.fault.type_name(),
            detail: r.detail.clone(),
        })
        .collect();
    let omitted = decoded.rejected.len().saturating_sub(MAX_REPORTED_ERRORS);
    (errors, omitted)
}

async fn wait_for_ack(
    app: &App,
    rx: crate::batch::AckReceiver,
    deadline: tokio::time::Instant,
) -> Result<Ack, Problem> {
    let limit = app.config.batch.ack_timeout();
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(Ok(ack))) => Ok(ack),
        Ok(Ok(Err(e))) => Err(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            e.to_string(),
        )),
        Ok(Err(_)) => Err(Problem::unavailable(
            "store-unavailable",
            "the commit was abandoned; retry the request",
        )),
        Err(_) => Err(Problem::unavailable(
            "store-unavailable",
            format!(
                "events were not committed within {} ms (batch.ack_timeout_ms); they may still be committed: retry, and expect at-least-once delivery",
                limit.as_millis()
            ),
        )),
    }
}

/// A JSON response.
pub fn json(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(crate::body::full(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
