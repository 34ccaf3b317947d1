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

/// Declares [`ProblemType`]: each variant with its stable `type` suffix,
/// status and title, and [`ProblemType::ALL`], so the list the OpenAPI
/// description and the README are checked against is the enum itself.
macro_rules! problem_types {
    ($($(#[$doc:meta])* $variant:ident = $name:literal, $status:ident, $title:literal;)*) => {
        /// Every problem `type` the gateway can answer, with its one status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ProblemType {
            $($(#[$doc])* $variant,)*
        }

        impl ProblemType {
            /// Every variant, in declaration order.
            pub const ALL: &'static [ProblemType] = &[$(ProblemType::$variant),*];

            /// The stable suffix of the wire `type` (after [`TYPE_PREFIX`]).
            pub fn name(self) -> &'static str {
                match self { $(ProblemType::$variant => $name,)* }
            }

            pub fn status(self) -> StatusCode {
                match self { $(ProblemType::$variant => StatusCode::$status,)* }
            }

            pub fn title(self) -> &'static str {
                match self { $(ProblemType::$variant => $title,)* }
            }
        }
    };
}

problem_types! {
    /// The body (object or array) is not valid JSON.
    MalformedJson = "malformed-json", BAD_REQUEST, "Bad request";
    EmptyBody = "empty-body", BAD_REQUEST, "Bad request";
    BadEncoding = "bad-encoding", BAD_REQUEST, "Bad request";
    InvalidStreamName = "invalid-stream-name", BAD_REQUEST, "Bad request";
    InvalidGroupName = "invalid-group-name", BAD_REQUEST, "Bad request";
    BadCommit = "bad-commit", BAD_REQUEST, "Bad request";
    BodyReadFailed = "body-read-failed", BAD_REQUEST, "Bad request";
    BadQuery = "bad-query", BAD_REQUEST, "Bad request";
    /// A WebSocket upgrade without `Sec-WebSocket-Key`.
    BadWebsocket = "bad-websocket", BAD_REQUEST, "Bad request";
    /// WebSocket ingest error frames only.
    BadEnvelope = "bad-envelope", BAD_REQUEST, "Bad request";
    /// WebSocket ingest error frames only.
    BinaryFrame = "binary-frame", BAD_REQUEST, "Bad request";
    /// `OPTIONS` without `Origin`.
    NotAPreflight = "not-a-preflight", BAD_REQUEST, "Bad request";
    MissingKey = "missing-key", UNAUTHORIZED, "Unauthorized";
    UnknownKey = "unknown-key", UNAUTHORIZED, "Unauthorized";
    BadAuthorization = "bad-authorization", UNAUTHORIZED, "Unauthorized";
    ForbiddenScope = "forbidden-scope", FORBIDDEN, "Forbidden";
    ForbiddenStream = "forbidden-stream", FORBIDDEN, "Forbidden";
    ForbiddenOrigin = "forbidden-origin", FORBIDDEN, "Forbidden";
    KeyInQuery = "key-in-query", FORBIDDEN, "Forbidden";
    DeadLetterStream = "dead-letter-stream", FORBIDDEN, "Forbidden";
    StreamLimit = "stream-limit", FORBIDDEN, "Stream limit reached";
    UnknownStream = "unknown-stream", NOT_FOUND, "Unknown stream";
    NotFound = "not-found", NOT_FOUND, "Not found";
    MethodNotAllowed = "method-not-allowed", METHOD_NOT_ALLOWED, "Method not allowed";
    BodyTimeout = "body-timeout", REQUEST_TIMEOUT, "Request timeout";
    CheckpointConflict = "checkpoint-conflict", CONFLICT, "Checkpoint conflict";
    CheckpointAheadOfLog = "checkpoint-ahead-of-log", CONFLICT, "Checkpoint ahead of the log";
    TooLarge = "too-large", PAYLOAD_TOO_LARGE, "Payload too large";
    OverBurst = "over-burst", PAYLOAD_TOO_LARGE, "Request larger than the rate limit's burst";
    UnsupportedMediaType = "unsupported-media-type", UNSUPPORTED_MEDIA_TYPE, "Unsupported media type";
    UnsupportedEncoding = "unsupported-encoding", UNSUPPORTED_MEDIA_TYPE, "Unsupported content encoding";
    /// Members `partition`, `offset`, `first_offset`.
    OffsetExpired = "offset-expired", GONE, "Offset expired";
    OffsetOutOfRange = "offset-out-of-range", RANGE_NOT_SATISFIABLE, "Offset out of range";
    InvalidEvents = "invalid-events", UNPROCESSABLE_ENTITY, "Every event is invalid";
    WebsocketRequired = "websocket-required", UPGRADE_REQUIRED, "WebSocket required";
    RateLimited = "rate-limited", TOO_MANY_REQUESTS, "Too many requests";
    Internal = "internal", INTERNAL_SERVER_ERROR, "Internal error";
    Overloaded = "overloaded", SERVICE_UNAVAILABLE, "Service unavailable";
    StoreUnavailable = "store-unavailable", SERVICE_UNAVAILABLE, "Service unavailable";
    Draining = "draining", SERVICE_UNAVAILABLE, "Service unavailable";
}

/// An error response.
#[derive(Debug, Clone)]
pub struct Problem {
    pub kind: ProblemType,
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
    /// Extra response headers (`RateLimit`, `WWW-Authenticate`, `Allow`).
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
    /// A problem of `kind` (its status and title come with it). Every 503
    /// says `Retry-After: 1`.
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        let retry_after = (kind.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(1);
        Problem {
            kind,
            detail: detail.into(),
            retry_after,
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
        Problem::new(ProblemType::OffsetExpired, detail)
            .member("partition", partition)
            .member("offset", offset)
            .member("first_offset", first_offset)
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    pub fn headers_mut(&mut self) -> &mut http::HeaderMap {
        &mut self.extra.get_or_insert_with(Default::default).headers
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The problem document as JSON (WebSocket error frames).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.wire()).unwrap_or_default()
    }

    fn wire(&self) -> Wire<'_> {
        Wire {
            kind: format!("{TYPE_PREFIX}{}", self.kind.name()),
            title: self.kind.title(),
            status: self.status().as_u16(),
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
        *resp.status_mut() = self.status();
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
        let (status, kind, detail) = (self.status().as_u16(), self.kind.name(), &self.detail);
        if self.status().is_server_error() {
            tracing::error!(request_id = id, status, kind, detail = %detail, "request failed");
        } else if self.status() == StatusCode::TOO_MANY_REQUESTS {
            tracing::debug!(request_id = id, status, kind, detail = %detail, "request refused");
        } else {
            tracing::info!(request_id = id, status, kind, detail = %detail, "request refused");
        }
    }
}

impl From<DecodeError> for Problem {
    fn from(e: DecodeError) -> Self {
        let kind = match e {
            DecodeError::UnsupportedType(_) => ProblemType::UnsupportedMediaType,
            DecodeError::UnsupportedEncoding(_) => ProblemType::UnsupportedEncoding,
            DecodeError::DecodedTooLarge { .. } | DecodeError::TooManyEvents { .. } => {
                ProblemType::TooLarge
            }
            DecodeError::BadEncoding { .. } => ProblemType::BadEncoding,
            DecodeError::Malformed(_) => ProblemType::MalformedJson,
            DecodeError::Empty => ProblemType::EmptyBody,
        };
        Problem::new(kind, e.to_string())
    }
}

impl From<SubmitError> for Problem {
    fn from(e: SubmitError) -> Self {
        let kind = match e {
            SubmitError::Overloaded { .. } => ProblemType::Overloaded,
            SubmitError::Draining => ProblemType::Draining,
            SubmitError::TooManyStreams { .. } => ProblemType::StreamLimit,
        };
        Problem::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_type_names_are_unique_and_kebab_case() {
        let mut names: Vec<&str> = ProblemType::ALL.iter().map(|t| t.name()).collect();
        assert!(names
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')));
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate problem type names");
    }

    #[test]
    fn a_problem_answers_with_its_types_status_and_503s_say_when_to_retry() {
        let resp = Problem::new(ProblemType::Draining, "bye").response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let resp = Problem::new(ProblemType::BadQuery, "no").response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert!(resp.headers().get(header::RETRY_AFTER).is_none());
        let doc = Problem::new(ProblemType::OverBurst, "big").to_json();
        assert_eq!(doc["type"], "urn:sluice:problem:over-burst");
        assert_eq!(doc["status"], 413);
        assert_eq!(doc["title"], "Request larger than the rate limit's burst");
    }
}
