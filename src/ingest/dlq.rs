//! Dead letters: the line written to `<stream>.dlq` for each invalid event.
//!
//! Owns the dead-letter record: where the event was going, why it was
//! refused, which key sent it, and the event itself, its bytes as sent (or,
//! when they are not JSON, as a string). The envelope's `received_at` is the
//! original request's. `sluice replay` reads these records back.

use bytes::Bytes;
use serde::Serialize;

use crate::decode::Rejected;

/// The name of `stream`'s dead-letter stream.
pub fn stream_name(stream: &str) -> String {
    format!("{stream}.dlq")
}

#[derive(Serialize)]
struct Head<'a> {
    stream: &'a str,
    index: usize,
    key: &'a str,
    error: Error<'a>,
}

#[derive(Serialize)]
struct Error<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    keyword: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema_path: Option<&'a str>,
}

/// One dead-letter record per rejected event of `body`, in request order:
/// `{"stream":…,"index":…,"key":…,"error":{…},"event":<bytes as sent>}`
/// (or `"event_text":"…"` for bytes that are not JSON).
/// An event over `limits.max_event_bytes` keeps only its first `max_text`
/// bytes (and its full length as `event_bytes`): a dead letter is a trace,
/// not a second copy of an oversized body.
pub fn records(
    stream: &str,
    key: &str,
    body: &Bytes,
    rejected: &[Rejected],
    max_text: usize,
) -> Vec<Bytes> {
    rejected
        .iter()
        .map(|r| record(stream, key, body, r, max_text))
        .collect()
}

fn record(stream: &str, key: &str, body: &Bytes, r: &Rejected, max_text: usize) -> Bytes {
    let v = r.violation.as_deref();
    let head = Head {
        stream,
        index: r.index,
        key,
        error: Error {
            kind: r.fault.type_name(),
            detail: &r.detail,
            keyword: v.map(|v| v.keyword.as_str()),
            instance_path: v.map(|v| v.instance_path.as_str()),
            schema_path: v.map(|v| v.schema_path.as_str()),
        },
    };
    let mut out = serde_json::to_vec(&head).unwrap_or_default();
    out.pop(); // the closing brace: the event follows
    let event = &body[r.range.clone()];
    if r.fault.is_json() {
        out.extend_from_slice(b",\"event\":");
        // Stored lines are one line each: a pretty-printed event is joined.
        match event.contains(&b'\n') {
            true => out.extend_from_slice(&crate::decode::one_line(event)),
            false => out.extend_from_slice(event),
        }
    } else {
        out.extend_from_slice(b",\"event_text\":");
        let text = String::from_utf8_lossy(&event[..event.len().min(max_text)]);
        out.extend_from_slice(&serde_json::to_vec(&text).unwrap_or_default());
        if event.len() > max_text {
            out.extend_from_slice(format!(",\"event_bytes\":{}", event.len()).as_bytes());
        }
    }
    out.push(b'}');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::EventFault;
    use serde_json::{json, Value};

    fn rejected(range: std::ops::Range<usize>, fault: EventFault) -> Rejected {
        Rejected {
            index: 2,
            fault,
            detail: "why".into(),
            range,
            violation: None,
        }
    }

    #[test]
    fn records_hold_the_event_as_sent_or_as_text() {
        let body = Bytes::from_static(b"{\"a\":\n 1} {oops");
        let out = records(
            "clicks",
            "web",
            &body,
            &[
                rejected(0..9, EventFault::NotObject),
                rejected(10..15, EventFault::Malformed),
                rejected(10..15, EventFault::TooLarge),
            ],
            3,
        );
        let first: Value = serde_json::from_slice(&out[0]).unwrap();
        assert_eq!(first["event"], json!({"a": 1}));
        assert_eq!(first["stream"], "clicks");
        assert_eq!(first["error"]["type"], "not-an-object");
        assert!(!out[0].contains(&b'\n'), "one line");
        let second: Value = serde_json::from_slice(&out[1]).unwrap();
        assert_eq!(second["event_text"], "{oo");
        assert_eq!(second["event_bytes"], 5);
        assert_eq!(second["key"], "web");
        let third: Value = serde_json::from_slice(&out[2]).unwrap();
        assert_eq!(
            third["event_text"], "{oo",
            "only a prefix of an oversized event"
        );
    }
}
