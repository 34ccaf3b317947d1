//! Properties every framed body must have, whatever route framed it.

use bytes::Bytes;
use serde_json::value::RawValue;
use sluice::config::Limits;
use sluice::decode::{DecodeError, Decoded, EventFault};

/// Accepted events are one-line JSON objects within the limits; rejections
/// point inside the body, in order; their dead letters are valid JSON.
pub fn framed(raw: &Bytes, decoded: &Decoded, limits: &Limits) {
    let total = decoded.events.len() + decoded.rejected.len();
    assert!(
        total > 0 && total <= limits.max_events_per_request,
        "{total} events"
    );
    for event in &decoded.events {
        accepted(event, limits);
    }
    let mut last = None;
    for r in &decoded.rejected {
        assert!(
            last < Some(r.index),
            "rejections out of order: {:?}",
            decoded.rejected
        );
        assert!(
            r.range.end <= raw.len() && r.range.start <= r.range.end,
            "{r:?}"
        );
        if r.fault == EventFault::Malformed {
            assert!(
                !is_json(&raw[r.range.clone()]),
                "valid JSON called malformed: {r:?}"
            );
        }
        last = Some(r.index);
    }
    let letters = sluice::ingest::dlq::records("s", "k", raw, &decoded.rejected, 64);
    for letter in letters {
        let text = String::from_utf8_lossy(&letter);
        assert!(is_json(&letter), "dead letter is not JSON: {text}");
        assert!(
            !letter.contains(&b'\n'),
            "dead letter is not one line: {text}"
        );
    }
}

fn accepted(event: &[u8], limits: &Limits) {
    let text = String::from_utf8_lossy(event);
    // The grammar's verdict, not a `Value` parse: RFC 8259 allows a lone
    // surrogate escape ("\ud800"), which the gateway keeps as sent but
    // serde_json's `Value` refuses.
    assert!(is_json(event), "accepted event is not JSON: {text}");
    assert!(
        event.first() == Some(&b'{'),
        "accepted event is not an object: {text}"
    );
    assert!(
        !event.contains(&b'\n') && !event.contains(&b'\r'),
        "not one line: {text}"
    );
    assert!(
        event.len() <= limits.max_event_bytes,
        "too large: {}",
        event.len()
    );
    assert!(depth(event) <= limits.max_depth, "too deep: {text}");
}

/// serde_json's verdict on "is this one JSON value": the reference parser,
/// without the recursion limit of a `Value` parse (the gateway frames with
/// `RawValue`s, which have none; depth is its own check).
pub fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<&RawValue>(bytes).is_ok()
}

/// Nesting depth of one JSON value (an empty object counts one), brackets
/// inside strings skipped.
fn depth(json: &[u8]) -> usize {
    let (mut now, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in json {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, ..) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'{' | b'[') => {
                now += 1;
                max = max.max(now);
            }
            (false, _, b'}' | b']') => now = now.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Two results of framing one body must be the same, event for event.
pub fn same(a: &Result<Decoded, DecodeError>, b: &Result<Decoded, DecodeError>, body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    match (a, b) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.events, b.events, "events differ for {text}");
            assert_eq!(a.rejected, b.rejected, "rejections differ for {text}");
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{text}"),
        (a, b) => panic!("{text}: {a:?} but {b:?}"),
    }
}
