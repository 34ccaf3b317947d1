//! problem+json (RFC 9457): one place maps every error to status, type and retry.
//!
//! Owns the wire shape of errors. Each module keeps its own `thiserror` enum;
//! the `From` impls here are the single, exhaustive map to HTTP.

use bytes::Bytes;

use crate::body::Body;
use http::{header, Response, StatusCode};
use serde::Serialize;

use crate::batch::SubmitError;
use crate::decode::DecodeError;

/// Prefix of every problem `type`; the suffix is stable and documented.
pub const TYPE_PREFIX: &str = "urn:sluice:problem:";

/// One per-event rejection, as reported to the client.
#[derive(Debug, Clone, Serialize)]
pub struct EventError {
    pub index: usize,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub detail: String,
    /// Schema violations: the failing keyword and where, in the event and
    /// in the schema (JSON Pointers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyword: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_path: Option<String>,
}

/// An error response.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub retry_after: Option<u32>,
    /// Per-event errors (422), already capped.
    pub errors: Vec<EventError>,
    /// Errors left out of `errors` by the cap.
    pub errors_omitted: usize,
    /// Invalid events written to the dead-letter stream (422).
    pub dead_lettered: usize,
    /// Extra response headers and document members; boxed, as most
    /// problems have none (and errors stay small on the happy path).
    pub extra: Option<Box<Extra>>,
}

/// What few problems carry beyond status, type and detail.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// Extra response headers (`RateLimit`, `WWW-Authenticate`).
    pub headers: http::HeaderMap,
    /// Extension members of the problem document (RFC 9457 §3.2), e.g.
    /// `first_offset` of `offset-expired`.
    pub members: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [EventError],
    #[serde(skip_serializing_if = "is_zero")]
    errors_omitted: usize,
    #[serde(skip_serializing_if = "is_zero")]
    dead_lettered: usize,
    /// The request's id (also in `X-Request-Id` and the gateway's log).
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    members: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Problem {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            status,
            kind,
            title,
            detail: detail.into(),
            retry_after: None,
            errors: Vec::new(),
            errors_omitted: 0,
            dead_lettered: 0,
            extra: None,
        }
    }

    /// Add an extension member to the document.
    pub fn member(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra
            .get_or_insert_with(Default::default)
            .members
            .insert(name.to_string(), value.into());
        self
    }

    /// 410 `offset-expired`: `offset` of `partition` was deleted by
    /// retention; `first_offset` is where the partition's retained log starts.
    pub fn offset_expired(partition: u32, offset: u64, first_offset: u64, detail: String) -> Self {
        Problem::new(StatusCode::GONE, "offset-expired", "Offset expired", detail)
            .member("partition", partition)
            .member("offset", offset)
            .member("first_offset", first_offset)
    }

    pub fn headers_mut(&mut self) -> &mut http::HeaderMap {
        &mut self.extra.get_or_insert_with(Default::default).headers
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn bad_request(kind: &'static str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, kind, "Bad request", detail)
    }

    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Payload too large",
            detail,
        )
    }

    pub fn unavailable(kind: &'static str, detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            kind,
            "Service unavailable",
            detail,
        )
        .retry_after(1)
    }

    /// The problem document as JSON (WebSocket error frames).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.wire()).unwrap_or_default()
    }

    fn wire(&self) -> Wire<'_> {
        Wire {
            kind: format!("{TYPE_PREFIX}{}", self.kind),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
            errors: &self.errors,
            errors_omitted: self.errors_omitted,
            dead_lettered: self.dead_lettered,
            request_id: crate::server::request_id::current(),
            members: self
                .extra
                .as_ref()
                .map(|e| &e.members)
                .filter(|m| !m.is_empty()),
        }
    }

    pub fn response(&self) -> Response<Body> {
        let body = self.wire();
        self.log(body.request_id.as_deref());
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = Response::new(crate::body::full(Bytes::from(json)));
        *resp.status_mut() = self.status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after {
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from(s));
        }
        for (name, value) in self.extra.iter().flat_map(|e| e.headers.iter()) {
            headers.insert(name, value.clone());
        }
        resp
    }
}

impl Problem {
    /// One log line per error answer: server errors at `error`, client
    /// errors at `info` (rate limiting at `debug`: a flood must not flood the log).
    fn log(&self, request_id: Option<&str>) {
        let id = request_id.unwrap_or("-");
        let (status, kind, detail) = (self.status.as_u16(), self.kind, &self.detail);
        if self.status.is_server_error() {
            tracing::error!(request_id = id, status, kind, detail = %detail, "request failed");
        } else if self.status == StatusCode::TOO_MANY_REQUESTS {
            tracing::debug!(request_id = id, status, kind, detail = %detail, "request refused");
        } else {
            tracing::info!(request_id = id, status, kind, detail = %detail, "request refused");
        }
    }
}

impl From<DecodeError> for Problem {
    fn from(e: DecodeError) -> Self {
        let detail = e.to_string();
        match e {
            DecodeError::UnsupportedType(_) => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                detail,
            ),
            DecodeError::UnsupportedEncoding(_) => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-encoding",
                "Unsupported content encoding",
                detail,
            ),
            DecodeError::DecodedTooLarge { .. } | DecodeError::TooManyEvents { .. } => {
                Problem::payload_too_large(detail)
            }
            DecodeError::BadEncoding { .. } => Problem::bad_request("bad-encoding", detail),
            DecodeError::Malformed(_) => Problem::bad_request("malformed-json", detail),
            DecodeError::Empty => Problem::bad_request("empty-body", detail),
        }
    }
}

impl From<SubmitError> for Problem {
    fn from(e: SubmitError) -> Self {
        let detail = e.to_string();
        match e {
            SubmitError::Overloaded { .. } => Problem::unavailable("overloaded", detail),
            SubmitError::Draining => Problem::unavailable("draining", detail),
            SubmitError::TooManyStreams { .. } => Problem::new(
                StatusCode::FORBIDDEN,
                "stream-limit",
                "Stream limit reached",
                detail,
            ),
        }
    }
}
