//! Ingest: bytes of events → decode → batcher → ack, for HTTP POST and
//! WebSocket frames alike.
//!
//! Owns the ingest flow ([`ingest_bytes`]) and its answer shapes (200 durable
//! with offsets, 202 async, 422 all invalid). Framing lives in `decode`,
//! buffering in `batch`, error wire format in `error`, the WebSocket
//! connection in `ws`.

pub mod dlq;
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
use crate::decode::{self, Decoded, Encoding, EventFault, Format};
use crate::error::{EventError, Problem, ProblemType};
use crate::limit::RateState;
use crate::log::segment::ReceivedAt;
use crate::server::App;
use crate::tenants::StreamSettings;

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
    /// Invalid events written to `<stream>.dlq`.
    #[serde(skip_serializing_if = "is_zero")]
    pub dead_lettered: usize,
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
    /// Write invalid events to `<stream>.dlq` (the stream's `dead_letter`,
    /// unless the request says `?dead_letter=false`, as `sluice replay` does).
    pub dead_letter: bool,
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
    let settings = grant.writable(stream)?;
    let target = Target {
        grant,
        stream,
        settings: &settings,
        dead_letter: settings.dead_letter && !query_has(&req, "dead_letter=false"),
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
/// the commit (one deadline, `batch.ack_timeout_ms`, covers queueing and
/// commit of the events and of their dead letters).
pub async fn ingest_bytes(
    app: &Arc<App>,
    target: Target<'_>,
    body: Bytes,
    format: Format,
    encoding: Encoding,
    durable: bool,
) -> Result<Accepted, Problem> {
    let at = ReceivedAt::now();
    let settings = target.settings;
    if let Some(e) = &settings.schema_error {
        return Err(internal(format!("the stream's schema is unusable: {e}")));
    }
    let limits = &settings.limits;
    let raw = decode::decompress(body, encoding, limits.max_decoded_bytes)?;
    let decoded = decode::split(&raw, format, limits, settings.schema.as_deref())?;
    let (accepted, rejected) = (decoded.events.len(), decoded.rejected.len());
    let dest = target.dest();
    let limiters = target.grant.limiters(settings);
    let count = |outcome, n| app.batcher.count(target.dest(), outcome, n);
    let rate = crate::limit::check(&limiters, accepted + rejected, raw.len())
        .inspect_err(|_| count("rate_limited", accepted + rejected))?;
    let (errors, omitted) = report(&decoded, limits.max_reported_errors);
    let letters = match target.dead_letter && rejected > 0 {
        true => dlq::records(
            target.stream,
            target.grant.key_id(),
            &raw,
            &decoded.rejected,
            limits.max_event_bytes,
        ),
        false => Vec::new(),
    };
    let dead_lettered = letters.len();
    if dead_lettered == 0 {
        let too_large = decoded
            .rejected
            .iter()
            .filter(|r| r.fault == EventFault::TooLarge);
        let too_large = too_large.count();
        count("too_large", too_large);
        count("invalid", rejected - too_large);
    }
    let deadline = tokio::time::Instant::now() + app.config.batch.ack_timeout();
    // Room on both streams first: a request is queued whole or not at all.
    let letters_slot = reserve_letters(app, &target, &letters, deadline).await?;
    let events_slot = match accepted {
        0 => None,
        _ => Some(
            app.batcher
                .reserve(dest, &decoded.events, raw.len(), deadline)
                .await?,
        ),
    };
    let letters_rx = letters_slot.and_then(|s| s.send(letters, at, durable));
    let events_rx = events_slot.and_then(|s| s.send(decoded.events, at, durable));
    drop(raw);
    let ack = match events_rx {
        None => None,
        Some(rx) => Some(wait_for_ack(app, rx, deadline).await?),
    };
    if let Some(rx) = letters_rx {
        wait_for_ack(app, rx, deadline).await.map_err(|mut p| {
            p.detail = match ack {
                Some(a) => format!(
                    "the valid events were committed (partition {}, first offset {}), but their dead letters were not: {}",
                    a.partition, a.first_offset, p.detail
                ),
                None => format!("the dead letters were not committed: {}", p.detail),
            };
            p
        })?;
    }
    if dead_lettered > 0 {
        count("dead_lettered", dead_lettered);
    }
    if accepted == 0 {
        let mut p = Problem::new(
            ProblemType::InvalidEvents,
            format!("all {rejected} events were rejected; see errors"),
        );
        (p.errors, p.errors_omitted, p.dead_lettered) = (errors, omitted, dead_lettered);
        return Err(p);
    }
    Ok(Accepted {
        accepted,
        rejected,
        partition: ack.map(|a| a.partition),
        first_offset: ack.map(|a| a.first_offset),
        errors,
        errors_omitted: omitted,
        dead_lettered,
        rate,
    })
}

/// Room for dead letters on `<stream>.dlq` (none needed when there are none).
async fn reserve_letters(
    app: &Arc<App>,
    target: &Target<'_>,
    letters: &[Bytes],
    deadline: tokio::time::Instant,
) -> Result<Option<crate::batch::Slot>, Problem> {
    if letters.is_empty() {
        return Ok(None);
    }
    let name = dlq::stream_name(target.stream);
    let settings = target.grant.stream(&name)?;
    let dest = Dest {
        tenant: &target.grant.tenant.name,
        stream: &name,
        settings: &settings,
    };
    let held = letters.iter().map(Bytes::len).sum();
    Ok(Some(
        app.batcher.reserve(dest, letters, held, deadline).await?,
    ))
}

fn internal(detail: String) -> Problem {
    Problem::new(ProblemType::Internal, detail)
}

/// Does the query string hold exactly `pair` (`name=value`)?
fn query_has<B>(req: &Request<B>, pair: &str) -> bool {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .any(|kv| kv == pair)
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
    let too_large = format!("request body is larger than {limit} bytes (limits.max_body_bytes)");
    read_limited_body(app, req, limit, &too_large).await
}

/// The whole body, at most `limit` bytes (else 413 with `too_large` as its
/// detail), within `server.body_read_timeout_ms` (else 408).
pub(crate) async fn read_limited_body(
    app: &App,
    req: Request<Incoming>,
    limit: usize,
    too_large: &str,
) -> Result<Bytes, Problem> {
    let too_large = || Problem::new(ProblemType::TooLarge, too_large);
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
                ProblemType::BodyTimeout,
                format!(
                    "the body did not arrive within {} ms (server.body_read_timeout_ms)",
                    timeout.as_millis()
                ),
            )
        })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(Problem::new(
            ProblemType::BodyReadFailed,
            format!("could not read the request body: {e}"),
        )),
    }
}

/// The first `max` rejections as the client sees them, and how many more.
fn report(decoded: &Decoded, max: usize) -> (Vec<EventError>, usize) {
    let errors = decoded
        .rejected
        .iter()
        .take(max)
        .map(|r| {
            let v = r.violation.as_deref();
            EventError {
                index: r.index,
                kind: r.fault.type_name(),
                detail: r.detail.clone(),
                keyword: v.map(|v| v.keyword.clone()),
                instance_path: v.map(|v| v.instance_path.clone()),
                schema_path: v.map(|v| v.schema_path.clone()),
            }
        })
        .collect();
    let omitted = decoded.rejected.len().saturating_sub(max);
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
        Ok(Ok(Err(e))) => Err(internal(e.to_string())),
        Ok(Err(_)) => Err(Problem::new(
            ProblemType::StoreUnavailable,
            "the commit was abandoned; retry the request",
        )),
        Err(_) => Err(Problem::new(
            ProblemType::StoreUnavailable,
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
