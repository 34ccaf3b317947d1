//! Entry points for the fuzz targets in `fuzz/`: not an API (hidden from
//! the docs), nothing here is called by the gateway.
//!
//! Owns only the wiring that lets `cargo fuzz` reach code that is private
//! to its module: each function runs bytes through the very functions the
//! gateway runs on a request body, a WebSocket text frame or a schema, and
//! adds no behaviour of its own. Commit records need nothing here
//! ([`crate::log::record::CommitRecord::parse`] is public).

use bytes::Bytes;

use crate::config::Limits;
use crate::decode::{self, DecodeError, Decoded, Encoding, Format};
use crate::error::Problem;
use crate::validate::Schema;

/// A `POST …/events` body as `ingest_bytes` decodes it: undo the content
/// encoding (at most `limits.max_decoded_bytes`), then frame and check the
/// events. Also hands back the decoded bytes the events are slices of.
pub fn body(
    sent: Bytes,
    format: Format,
    encoding: Encoding,
    limits: &Limits,
    schema: Option<&Schema>,
) -> Result<(Bytes, Decoded), DecodeError> {
    let raw = decode::decompress(sent, encoding, limits.max_decoded_bytes)?;
    let decoded = decode::split(&raw, format, limits, schema)?;
    Ok((raw, decoded))
}

/// `schema` without its fast path: every event takes the full validator,
/// the route the fast path must agree with.
pub fn full_route(schema: Schema) -> Schema {
    schema.without_fast_path()
}

/// A WebSocket ingest text frame taken apart as the socket does (`envelope`:
/// `?envelope=true`): the client's `id` (raw JSON), the events' bytes (a
/// slice of `text`) and their format.
pub fn frame(text: Bytes, envelope: bool) -> Result<(Option<String>, Bytes, Format), Problem> {
    let u = crate::ingest::ws::unwrap_frame(text, envelope)?;
    Ok((u.id, u.events, u.format))
}
