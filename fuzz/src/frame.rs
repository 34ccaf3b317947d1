//! The `frame` target: a WebSocket ingest text frame.
//!
//! The first byte's low bit is `?envelope=true`; the rest is the frame,
//! which must be UTF-8 (the WebSocket layer refuses other text frames).
//! The frame is taken apart as the socket does, then its events are split
//! with the default limits, as `ingest_bytes` would.

use bytes::Bytes;
use sluice::config::Limits;

use crate::checks;

pub fn frame(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    if std::str::from_utf8(rest).is_err() {
        return;
    }
    let text = Bytes::copy_from_slice(rest);
    let envelope = pick & 1 == 1;
    let Ok((id, events, format)) = sluice::fuzzing::frame(text.clone(), envelope) else {
        assert!(
            envelope,
            "a frame without an envelope is never refused whole"
        );
        return;
    };
    within(&text, &events);
    if let Some(id) = &id {
        assert!(checks::is_json(id.as_bytes()), "id is not JSON: {id}");
    }
    let limits = Limits::default();
    if let Ok(decoded) = sluice::decode::split(&events, format, &limits, None) {
        checks::framed(&events, &decoded, &limits);
    }
}

/// The events are a slice of the frame, not a copy of something else.
fn within(frame: &Bytes, events: &Bytes) {
    let (start, end) = (
        frame.as_ptr() as usize,
        frame.as_ptr() as usize + frame.len(),
    );
    let at = events.as_ptr() as usize;
    let inside = events.is_empty() || (at >= start && at + events.len() <= end);
    assert!(inside, "events are not a slice of the frame");
}
