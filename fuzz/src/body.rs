//! The `body` target: one request body through decode and split.
//!
//! The first byte picks how the rest is sent: as an object body, wrapped in
//! `[…]` as an array, or as NDJSON; as is, compressed by us (gzip or zstd:
//! decoding must give it back) or handed to the decoder raw (garbage gzip
//! or zstd); and with no schema or one of two schemas with a fast path, in
//! which case the full validator's route must decide exactly the same.

use std::io::Write;
use std::sync::OnceLock;

use bytes::Bytes;
use sluice::config::Limits;
use sluice::decode::{DecodeError, Decoded, Encoding, Format};
use sluice::validate::Schema;

use crate::checks;

/// A small schema the fuzzer can satisfy, touching every fast-path keyword.
const SMALL: &str = r#"{"type":"object","required":["a"],"properties":{
  "a":{"type":"integer","minimum":-5,"maximum":1000},
  "s":{"type":"string","maxLength":3,"pattern":"^[a-z]*$"},
  "n":{"type":"number","exclusiveMinimum":-1.5,"exclusiveMaximum":10},
  "b":{"type":"boolean"},"z":{"type":"null"},
  "l":{"type":"array","items":{"type":"integer"},"minItems":1,"maxItems":3},
  "o":{"type":"object","additionalProperties":false,
       "properties":{"e":{"type":"string","enum":["x","y"]}}}}}"#;

/// The page-view schema of `benches/data`.
const PAGEVIEW: &str = include_str!("../../benches/data/pageview.schema.json");

/// How the fuzz input is sent.
#[derive(Debug, Clone, Copy)]
enum Sent {
    AsIs,
    Compressed(Encoding),
    Raw(Encoding),
}

pub fn body(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (format, text) = shape(pick % 3, rest);
    let sent = match (pick / 3) % 5 {
        0 => Sent::AsIs,
        1 => Sent::Compressed(Encoding::Gzip),
        2 => Sent::Compressed(Encoding::Zstd),
        3 => Sent::Raw(Encoding::Gzip),
        _ => Sent::Raw(Encoding::Zstd),
    };
    let schema = (pick / 15) % 3;
    run(&text, format, sent, schema);
}

/// Object body, array body (the input wrapped in brackets) or NDJSON.
fn shape(which: u8, rest: &[u8]) -> (Format, Vec<u8>) {
    match which {
        0 => (Format::Json, rest.to_vec()),
        1 => (Format::Json, [b"[", rest, b"]"].concat()),
        _ => (Format::Ndjson, rest.to_vec()),
    }
}

fn run(text: &[u8], format: Format, sent: Sent, schema: u8) {
    let limits = Limits::default();
    let (bytes, encoding) = encode(text, sent);
    let got = decode(
        &bytes,
        format,
        encoding,
        &limits,
        schemas(schema).map(|s| &s.0),
    );
    if let Ok((raw, decoded)) = &got {
        checks::framed(raw, decoded, &limits);
    }
    match sent {
        Sent::AsIs | Sent::Compressed(_) => {
            agrees_with_serde(text, format, &got);
            if let Sent::Compressed(_) = sent {
                let plain = decode(text, format, Encoding::Identity, &limits, None);
                let without = decode(&bytes, format, encoding, &limits, None);
                same(&plain, &without, text);
            }
        }
        Sent::Raw(_) => {}
    }
    if let Some((_, full)) = schemas(schema) {
        let slow = decode(&bytes, format, encoding, &limits, Some(full));
        same(&got, &slow, text);
    }
}

type Got = Result<(Bytes, Decoded), DecodeError>;

fn decode(
    bytes: &[u8],
    format: Format,
    encoding: Encoding,
    limits: &Limits,
    schema: Option<&Schema>,
) -> Got {
    let sent = Bytes::copy_from_slice(bytes);
    sluice::fuzzing::body(sent, format, encoding, limits, schema)
}

fn same(a: &Got, b: &Got, text: &[u8]) {
    let drop_raw = |g: &Got| match g {
        Ok((_, d)) => Ok(Decoded {
            events: d.events.clone(),
            rejected: d.rejected.clone(),
        }),
        Err(e) => Err(DecodeError::Malformed(e.to_string())),
    };
    checks::same(&drop_raw(a), &drop_raw(b), text);
}

/// What the gateway receives: the input as is, compressed, or raw.
fn encode(text: &[u8], sent: Sent) -> (Vec<u8>, Encoding) {
    match sent {
        Sent::AsIs => (text.to_vec(), Encoding::Identity),
        Sent::Raw(e) => (text.to_vec(), e),
        Sent::Compressed(Encoding::Gzip) => {
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(text).expect("gzip into memory");
            (z.finish().expect("gzip into memory"), Encoding::Gzip)
        }
        Sent::Compressed(e) => (zstd::bulk::compress(text, 1).expect("zstd"), e),
    }
}

/// The framing must agree with serde_json on whether the body is JSON at
/// all (an object or array body) or a line is (NDJSON).
fn agrees_with_serde(text: &[u8], format: Format, got: &Got) {
    let shown = String::from_utf8_lossy(text);
    let reference = checks::is_json(text);
    match (format, got) {
        (Format::Json, Err(DecodeError::Malformed(e))) => {
            assert!(
                !reference,
                "serde_json parses what was called malformed ({e}): {shown}"
            )
        }
        (Format::Json, Ok(_)) => assert!(reference, "accepted a body serde_json refuses: {shown}"),
        (_, Err(DecodeError::DecodedTooLarge { .. } | DecodeError::BadEncoding { .. })) => {
            panic!("our own encoding was refused: {got:?}")
        }
        _ => {}
    }
}

/// The schema pair for `which`: with its fast path, and without.
fn schemas(which: u8) -> Option<&'static (Schema, Schema)> {
    static SCHEMAS: OnceLock<[(Schema, Schema); 2]> = OnceLock::new();
    let all = SCHEMAS.get_or_init(|| [compile(SMALL), compile(PAGEVIEW)]);
    match which {
        0 => None,
        n => all.get(usize::from(n) - 1),
    }
}

fn compile(text: &str) -> (Schema, Schema) {
    let document: serde_json::Value = serde_json::from_str(text).expect("schema is JSON");
    let fast = Schema::compile(document.clone()).expect("schema compiles");
    assert!(
        fast.has_fast_path(),
        "the fuzz schema must have a fast path"
    );
    let full = sluice::fuzzing::full_route(Schema::compile(document).expect("schema compiles"));
    (fast, full)
}
