//! Request bodies → event byte ranges (one object, an array, NDJSON; gzip, zstd).
//!
//! Owns framing and the per-event checks: valid JSON, an object, within the
//! size and depth limits, and (when the stream has one) its schema, run while
//! framing so each event is handled in one pass. Each event stays a slice of
//! the decoded body (`Bytes`), never re-serialised. Invalid events are
//! reported by index, with their bytes, beside the valid ones; only a body
//! that cannot be framed at all fails as a whole.

use std::io::Read;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::config::Limits;
use crate::validate::{Caps, Frame, Schema, Violation};

/// How the body frames its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object or an array of objects (`application/json`, `text/plain`).
    Json,
    /// One JSON object per line (`application/x-ndjson`).
    Ndjson,
}

/// `Content-Encoding` of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

/// A body that cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "unsupported Content-Type {0:?}; send application/json, application/x-ndjson or text/plain"
    )]
    UnsupportedType(String),
    #[error("unsupported Content-Encoding {0:?}; send gzip, zstd or none")]
    UnsupportedEncoding(String),
    #[error("body is larger than {limit} bytes after decoding (limits.max_decoded_bytes)")]
    DecodedTooLarge { limit: usize },
    #[error("body is not valid {encoding}: {reason}")]
    BadEncoding {
        encoding: &'static str,
        reason: String,
    },
    #[error("body is not valid JSON: {0}")]
    Malformed(String),
    #[error("body is empty; send a JSON object, an array of objects or NDJSON")]
    Empty,
    #[error("request holds more than {limit} events (limits.max_events_per_request)")]
    TooManyEvents { limit: usize },
}

/// Why one event was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFault {
    Malformed,
    NotObject,
    TooLarge,
    TooDeep,
    SchemaViolation,
}

impl EventFault {
    /// Stable problem type name of the fault.
    pub fn type_name(self) -> &'static str {
        match self {
            EventFault::Malformed => "malformed-event",
            EventFault::NotObject => "not-an-object",
            EventFault::TooLarge => "event-too-large",
            EventFault::TooDeep => "event-too-deep",
            EventFault::SchemaViolation => "schema-violation",
        }
    }

    /// Is the rejected event valid JSON (so it can be embedded as is)?
    pub fn is_json(self) -> bool {
        !matches!(self, EventFault::Malformed | EventFault::TooLarge)
    }
}

/// One rejected event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub index: usize,
    pub fault: EventFault,
    pub detail: String,
    /// Where the event is in the decoded body (for dead letters).
    pub range: std::ops::Range<usize>,
    /// For schema violations: the keyword and the two JSON Pointers.
    pub violation: Option<Box<Violation>>,
}

/// A framed body: accepted event bytes (in order) and rejections by index.
#[derive(Debug, Default)]
pub struct Decoded {
    pub events: Vec<Bytes>,
    pub rejected: Vec<Rejected>,
}

impl Format {
    /// From the `Content-Type` header (absent means JSON, like curl's default form posts).
    pub fn from_content_type(value: Option<&str>) -> Result<Format, DecodeError> {
        let Some(v) = value else {
            return Ok(Format::Json);
        };
        let mime = v
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "application/json" | "text/plain" | "application/x-www-form-urlencoded" | "" => {
                Ok(Format::Json)
            }
            "application/x-ndjson" | "application/jsonl" | "application/ndjson" => {
                Ok(Format::Ndjson)
            }
            _ => Err(DecodeError::UnsupportedType(v.to_string())),
        }
    }
}

impl Encoding {
    pub fn from_header(value: Option<&str>) -> Result<Encoding, DecodeError> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => Ok(Encoding::Identity),
            Some("gzip") | Some("x-gzip") => Ok(Encoding::Gzip),
            Some("zstd") => Ok(Encoding::Zstd),
            Some(_) => Err(DecodeError::UnsupportedEncoding(
                value.unwrap_or_default().to_string(),
            )),
        }
    }
}

/// Undo the content encoding, reading at most `limit` bytes of output.
pub fn decompress(body: Bytes, encoding: Encoding, limit: usize) -> Result<Bytes, DecodeError> {
    match encoding {
        Encoding::Identity if body.len() > limit => Err(DecodeError::DecodedTooLarge { limit }),
        Encoding::Identity => Ok(body),
        Encoding::Gzip => read_limited(flate2::read::MultiGzDecoder::new(&body[..]), "gzip", limit),
        Encoding::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(&body[..]).map_err(|e| {
                DecodeError::BadEncoding {
                    encoding: "zstd",
                    reason: e.to_string(),
                }
            })?;
            read_limited(decoder, "zstd", limit)
        }
    }
}

fn read_limited(reader: impl Read, name: &'static str, limit: usize) -> Result<Bytes, DecodeError> {
    let mut out = Vec::new();
    // One byte past the limit tells "exactly at the limit" from "over it".
    let read = reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::BadEncoding {
            encoding: name,
            reason: e.to_string(),
        })?;
    if read > limit {
        return Err(DecodeError::DecodedTooLarge { limit });
    }
    Ok(Bytes::from(out))
}

/// Frame a decoded body into events and per-event rejections.
/// Events that pass the framing checks are checked against `schema` too.
pub fn split(
    body: &Bytes,
    format: Format,
    limits: &Limits,
    schema: Option<&Schema>,
) -> Result<Decoded, DecodeError> {
    let rules = Rules { limits, schema };
    let decoded = match format {
        Format::Json => split_json(body, &rules)?,
        Format::Ndjson => split_ndjson(body, &rules)?,
    };
    let total = decoded.events.len() + decoded.rejected.len();
    if total == 0 {
        return Err(DecodeError::Empty);
    }
    if total > limits.max_events_per_request {
        return Err(DecodeError::TooManyEvents {
            limit: limits.max_events_per_request,
        });
    }
    Ok(decoded)
}

/// What every event is checked against.
struct Rules<'a> {
    limits: &'a Limits,
    schema: Option<&'a Schema>,
}

fn split_json(body: &Bytes, rules: &Rules) -> Result<Decoded, DecodeError> {
    let trimmed = body.trim_ascii_start();
    let mut out = Decoded::default();
    match trimmed.first() {
        None => return Err(DecodeError::Empty),
        Some(b'[') if fast_array(body, rules, &mut out) => {}
        Some(b'[') => every_item(body, rules, &mut out)?,
        Some(_) if fast_event(body, 0..body.len(), rules, &mut out) => {}
        Some(_) => {
            let raw: &RawValue =
                serde_json::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
            out.check(0, body, slice_of(body, raw.get().as_bytes()), rules);
        }
    }
    Ok(out)
}

/// The usual route for an array: parse it, then check item by item.
fn every_item(body: &Bytes, rules: &Rules, out: &mut Decoded) -> Result<(), DecodeError> {
    let items = capped_array(body, rules.limits.max_events_per_request)?;
    for (index, raw) in items.into_iter().enumerate() {
        out.check(index, body, slice_of(body, raw.get().as_bytes()), rules);
    }
    Ok(())
}

/// With a schema that has a fast path, an array whose every event passes
/// it, within the limits, is framed in one pass: the fast walk validates
/// the events, proves the body well-formed and finds where each event is.
/// Anything else (an invalid event, malformed JSON, too many events, one
/// too large or too deep) answers `false` and takes the usual route, which
/// reports it.
fn fast_array(body: &Bytes, rules: &Rules, out: &mut Decoded) -> bool {
    let Some(fast) = rules.schema.and_then(Schema::fast) else {
        return false;
    };
    let done = fast.frame_array(body, &caps(rules.limits), |frame| out.accept(body, frame));
    if !done {
        out.events.clear();
    }
    done
}

/// The same for one event that is the whole of `body[range]`: `true` when
/// it was valid and within the limits, and has been accepted.
fn fast_event(
    body: &Bytes,
    range: std::ops::Range<usize>,
    rules: &Rules,
    out: &mut Decoded,
) -> bool {
    let Some(fast) = rules.schema.and_then(Schema::fast) else {
        return false;
    };
    let start = range.start;
    let Some(mut frame) = body
        .get(range)
        .and_then(|b| fast.frame(b, &caps(rules.limits)))
    else {
        return false;
    };
    frame.range = start + frame.range.start..start + frame.range.end;
    out.accept(body, frame);
    true
}

fn caps(limits: &Limits) -> Caps {
    Caps {
        max_items: limits.max_events_per_request,
        max_bytes: limits.max_event_bytes,
        max_depth: limits.max_depth,
    }
}

/// Parse a JSON array of raw values, refusing as soon as it holds more than
/// `max` items: a body of a million tiny items never becomes a million-entry
/// vector.
fn capped_array(body: &[u8], max: usize) -> Result<Vec<&RawValue>, DecodeError> {
    struct Capped<'a> {
        max: usize,
        over: &'a std::cell::Cell<bool>,
    }
    impl<'de> serde::de::Visitor<'de> for Capped<'_> {
        type Value = Vec<&'de RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max));
            while let Some(item) = seq.next_element::<&RawValue>()? {
                if items.len() == self.max {
                    self.over.set(true);
                    return Err(serde::de::Error::custom("too many events"));
                }
                items.push(item);
            }
            Ok(items)
        }
    }
    let over = std::cell::Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = serde::Deserializer::deserialize_seq(&mut de, Capped { max, over: &over })
        .and_then(|items| de.end().map(|()| items));
    match parsed {
        Ok(items) => Ok(items),
        Err(_) if over.get() => Err(DecodeError::TooManyEvents { limit: max }),
        Err(e) => Err(DecodeError::Malformed(e.to_string())),
    }
}

fn split_ndjson(body: &Bytes, rules: &Rules) -> Result<Decoded, DecodeError> {
    let limits = rules.limits;
    let mut out = Decoded::default();
    let mut index = 0;
    for line in body.split(|&b| b == b'\n') {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if index >= limits.max_events_per_request {
            return Err(DecodeError::TooManyEvents {
                limit: limits.max_events_per_request,
            });
        }
        let range = slice_of(body, line);
        if line.len() > limits.max_event_bytes {
            out.reject(index, range, EventFault::TooLarge, too_large(limits));
        } else if fast_event(body, range.clone(), rules, &mut out) {
            // One pass proved the line well-formed, valid and within limits.
        } else {
            match serde_json::from_slice::<&RawValue>(line) {
                Ok(_) => out.check(index, body, range, rules),
                Err(e) => out.reject(index, range, EventFault::Malformed, e.to_string()),
            }
        }
        index += 1;
    }
    Ok(out)
}

fn too_large(limits: &Limits) -> String {
    format!(
        "event is larger than {} bytes (limits.max_event_bytes)",
        limits.max_event_bytes
    )
}

/// The byte range of `part` inside `whole` (`part` must be a subslice of it).
fn slice_of(whole: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    start..start + part.len()
}

impl Decoded {
    fn reject(
        &mut self,
        index: usize,
        range: std::ops::Range<usize>,
        fault: EventFault,
        detail: String,
    ) {
        self.rejected.push(Rejected {
            index,
            fault,
            detail,
            range,
            violation: None,
        });
    }

    /// Checks of an event that is already known to be valid JSON.
    fn check(&mut self, index: usize, body: &Bytes, range: std::ops::Range<usize>, rules: &Rules) {
        let limits = rules.limits;
        let bytes = &body[range.clone()];
        if bytes.first() != Some(&b'{') {
            return self.reject(
                index,
                range,
                EventFault::NotObject,
                "event must be a JSON object".into(),
            );
        }
        if bytes.len() > limits.max_event_bytes {
            return self.reject(index, range, EventFault::TooLarge, too_large(limits));
        }
        let scan = scan(bytes, limits.max_depth);
        if scan.depth > limits.max_depth {
            let detail = format!(
                "event nests more than {} levels deep (limits.max_depth)",
                limits.max_depth
            );
            return self.reject(index, range, EventFault::TooDeep, detail);
        }
        if let Some(Err(v)) = rules.schema.map(|s| s.check(bytes)) {
            self.reject(index, range, EventFault::SchemaViolation, v.detail.clone());
            if let Some(last) = self.rejected.last_mut() {
                last.violation = Some(Box::new(v));
            }
            return;
        }
        self.accept(
            body,
            Frame {
                range,
                has_newline: scan.has_newline,
            },
        );
    }

    /// An event that passed every check.
    fn accept(&mut self, body: &Bytes, frame: Frame) {
        let event = body.slice(frame.range);
        self.events.push(if frame.has_newline {
            one_line(&event)
        } else {
            event
        });
    }
}

struct Scan {
    depth: usize,
    has_newline: bool,
}

/// Nesting depth (exact only when it may pass `max_depth`) and whether a raw
/// newline occurs (only possible as whitespace between tokens).
///
/// The common case is one branch-free pass that compilers vectorise: fewer
/// opening brackets than the limit anywhere (strings included) means the
/// depth cannot pass it. Only suspicious events get the exact scan.
fn scan(bytes: &[u8], max_depth: usize) -> Scan {
    let (mut opens, mut newline) = (0usize, false);
    for &b in bytes {
        opens += usize::from((b == b'{') | (b == b'['));
        newline |= (b == b'\n') | (b == b'\r');
    }
    let depth = if opens > max_depth {
        exact_depth(bytes)
    } else {
        opens
    };
    Scan {
        depth,
        has_newline: newline,
    }
}

/// Deepest nesting of objects and arrays, skipping brackets inside strings.
fn exact_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// A pretty-printed event made one line: newlines outside strings are
/// whitespace, so turning them into spaces keeps the event's meaning and
/// keeps the segment one event per line.
pub(crate) fn one_line(event: &[u8]) -> Bytes {
    event
        .iter()
        .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
        .collect::<Vec<u8>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn texts(d: &Decoded) -> Vec<&str> {
        d.events
            .iter()
            .map(|e| std::str::from_utf8(e).unwrap())
            .collect()
    }

    #[test]
    fn array_keeps_bytes_and_reports_non_objects_by_index() {
        let body = Bytes::from_static(br#"[ {"a": 1.50} , 7, {"b":"x"} ]"#);
        let d = split(&body, Format::Json, &limits(), None).unwrap();
        assert_eq!(texts(&d), vec![r#"{"a": 1.50}"#, r#"{"b":"x"}"#]);
        assert_eq!(d.rejected[0].index, 1);
        assert_eq!(d.rejected[0].fault, EventFault::NotObject);
    }

    #[test]
    fn ndjson_reports_malformed_lines_and_keeps_the_rest() {
        let body = Bytes::from_static(b"{\"a\":1}\r\n{oops\n\n{\"c\":3}\n");
        let d = split(&body, Format::Ndjson, &limits(), None).unwrap();
        assert_eq!(texts(&d), vec![r#"{"a":1}"#, r#"{"c":3}"#]);
        assert_eq!(d.rejected[0].index, 1);
        assert_eq!(d.rejected[0].fault, EventFault::Malformed);
    }

    #[test]
    fn depth_size_and_count_limits() {
        let l = Limits {
            max_depth: 3,
            max_event_bytes: 20,
            max_events_per_request: 2,
            ..limits()
        };
        let body = Bytes::from_static(
            br#"[{"a":{"b":{"c":{}}}},{"s":"[[[[[[[[[["},{"long":"xxxxxxxxxxxxxxxxxxxx"}]"#,
        );
        let err = split(&body, Format::Json, &l, None).unwrap_err();
        assert!(matches!(err, DecodeError::TooManyEvents { limit: 2 }));
        let l = Limits {
            max_events_per_request: 10,
            ..l
        };
        let d = split(&body, Format::Json, &l, None).unwrap();
        let faults: Vec<_> = d.rejected.iter().map(|r| (r.index, r.fault)).collect();
        assert_eq!(
            faults,
            vec![(0, EventFault::TooDeep), (2, EventFault::TooLarge)]
        );
        assert_eq!(texts(&d), vec![r#"{"s":"[[[[[[[[[["}"#]);
    }

    /// The fast route (one walk frames, validates and checks the limits)
    /// decides every body exactly as the full route does.
    #[test]
    fn the_fast_route_matches_the_full_route() {
        let document = serde_json::json!({"type": "object", "required": ["a"],
            "properties": {"a": {"type": "integer"}, "s": {"type": "string", "maxLength": 3}}});
        let fast = Schema::compile(document.clone()).unwrap();
        let full = Schema::compile(document).unwrap().without_fast_path();
        assert!(fast.has_fast_path() && !full.has_fast_path());
        let l = Limits {
            max_depth: 3,
            max_event_bytes: 40,
            max_events_per_request: 3,
            ..limits()
        };
        let json = [
            r#"[{"a":1},{"b":[1,2,{"c":"]"}],"a":2}]"#,
            "[ {\"a\":1,\"s\":\"a,b\"} ,\n\t{\"a\":2,\"s\":\"\\\"],\"} ]",
            "[{\n  \"a\": 1\r\n}, {\"a\":2}]",
            r#"[{"a":1},{"a":"x"},{"s":"y"}]"#,
            r#"[{"a":1},{"a":2},{"a":3},{"a":4}]"#,
            r#"[{"a":1,"d":{"e":{"f":{}}}}]"#,
            r#"[{"a":1,"s":"\u0078","long":"0123456789012345678901234567"}]"#,
            r#"[{"a":1},7,"x",[]]"#,
            r#"[{"\u0061":1},{"a":1,"s":"\u00e9\u00e9"}]"#,
            r#"[{"a":1},]"#,
            "[]",
            " \r\n{\"a\" : 5}\n ",
            r#"{"a":1,"s":"abcd"}"#,
            r#"{"a":1}{"a":2}"#,
        ];
        let ndjson = [
            "{\"a\":1}\r\n{\"a\":2 ,\r\"s\":\"x\"}\n\n{oops\n[1]\n{\"s\":\"x\"}",
            "{\"a\":1,\"d\":{\"e\":{\"f\":[]}}}\n{\"a\":1,\"s\":\"0123456789012345678901234567890\"}",
            "{\"a\":1}\n{\"a\":1}\n{\"a\":1}\n{\"a\":1}",
        ];
        let bodies = json.iter().map(|b| (Format::Json, b));
        for (format, body) in bodies.chain(ndjson.iter().map(|b| (Format::Ndjson, b))) {
            let body = Bytes::copy_from_slice(body.as_bytes());
            let quick = split(&body, format, &l, Some(&fast));
            let exact = split(&body, format, &l, Some(&full));
            match (quick, exact) {
                (Ok(q), Ok(e)) => {
                    assert_eq!(q.events, e.events, "{body:?}");
                    assert_eq!(q.rejected, e.rejected, "{body:?}");
                }
                (Err(q), Err(e)) => assert_eq!(q.to_string(), e.to_string(), "{body:?}"),
                (q, e) => panic!("{body:?}: {q:?} but {e:?}"),
            }
        }
    }

    #[test]
    fn pretty_printed_events_become_one_line() {
        let body = Bytes::from_static(b"[{\n  \"a\": \"x\\ny\"\n}]");
        let d = split(&body, Format::Json, &limits(), None).unwrap();
        assert_eq!(texts(&d), vec!["{   \"a\": \"x\\ny\" }"]);
    }

    #[test]
    fn whole_body_failures() {
        let l = limits();
        let bad = Bytes::from_static(b"[{\"a\":1},");
        assert!(matches!(
            split(&bad, Format::Json, &l, None),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            split(&Bytes::new(), Format::Json, &l, None),
            Err(DecodeError::Empty)
        ));
        assert!(matches!(
            Format::from_content_type(Some("image/png")),
            Err(DecodeError::UnsupportedType(_))
        ));
        assert!(matches!(
            Encoding::from_header(Some("br")),
            Err(DecodeError::UnsupportedEncoding(_))
        ));
    }

    #[test]
    fn decompression_stops_at_the_limit() {
        let big = vec![b' '; 1 << 20];
        let zipped = zstd::bulk::compress(&big, 3).unwrap();
        assert!(zipped.len() < 1024);
        let err = decompress(Bytes::from(zipped.clone()), Encoding::Zstd, 1000).unwrap_err();
        assert!(matches!(err, DecodeError::DecodedTooLarge { limit: 1000 }));
        let ok = decompress(Bytes::from(zipped), Encoding::Zstd, 1 << 20).unwrap();
        assert_eq!(ok.len(), 1 << 20);
    }
}
