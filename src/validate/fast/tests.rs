//! The fast path against the full validator: it never accepts what
//! jsonschema (after a serde_json `Value` parse) refuses, and accepts the
//! plain valid cases.

use serde_json::{json, Value};

use super::{Caps, Fast, Frame};

const CAPS: Caps = Caps {
    max_items: 10,
    max_bytes: 1 << 20,
    max_depth: 32,
};

/// The fast path never accepts what the full validator refuses, and
/// accepts the plain valid cases, over a table of schemas × events.
#[test]
fn agrees_with_the_full_validator() {
    let schemas = [
        json!({"type": "object", "required": ["a"], "additionalProperties": false,
               "properties": {"a": {"type": "integer", "minimum": 0, "exclusiveMaximum": 10},
                              "b": {"type": "string", "maxLength": 3, "pattern": "^x+$"},
                              "c": {"type": "array", "items": {"type": "number"}, "maxItems": 2},
                              "d": {"type": "string", "enum": ["p", "q"]},
                              "e": {"type": "object", "properties": {"f": {"type": "null"}}},
                              "g": {"type": "boolean"}, "h": {}}}),
        json!({"type": "object", "properties": {"s": {"type": "string", "minLength": 2}}}),
    ];
    let events = [
        r#"{"a":1}"#,
        r#"{"a":0,"b":"xx","c":[1,2.5],"d":"p","e":{"f":null},"g":true,"h":[{}]}"#,
        r#"{"a":10}"#,
        r#"{"a":-1}"#,
        r#"{"a":1.0}"#,
        r#"{"a":1.5}"#,
        r#"{"a":"1"}"#,
        r#"{}"#,
        r#"{"a":1,"z":1}"#,
        r#"{"a":1,"b":"xxxx"}"#,
        r#"{"a":1,"b":"xy"}"#,
        r#"{"a":1,"b":"\u0078"}"#,
        r#"{"a":1,"c":[1,2,3]}"#,
        r#"{"a":1,"c":["1"]}"#,
        r#"{"a":1,"d":"r"}"#,
        r#"{"a":1,"e":{"f":0}}"#,
        r#"{"a":1,"e":{"x":1}}"#,
        r#"{"a":1,"g":null}"#,
        r#"{"a":1,"a":-5}"#,
        r#"{"a":-5,"a":1}"#,
        r#"{"a":18446744073709551615}"#,
        r#"{"s":"é"}"#,
        r#"{"s":"éé"}"#,
        r#"{"s":3}"#,
        r#"{"a\u0062":1}"#,
    ];
    for schema in &schemas {
        let fast = Fast::compile(schema).expect("inside the subset");
        let full = jsonschema::validator_for(schema).unwrap();
        for e in events {
            let value: Value = serde_json::from_str(e).unwrap();
            let (quick, exact) = (fast.accepts(e.as_bytes()), full.is_valid(&value));
            assert!(!quick || exact, "fast path accepted {e} against {schema}");
            if e == events[0] || e == events[1] {
                assert_eq!(quick, exact, "{e} against {schema}");
            }
        }
    }
}

/// Bytes a tree parse refuses are refused here too, wherever they hide.
#[test]
fn malformed_values_never_pass() {
    let schema = json!({"type": "object", "properties": {"user": {"type": "integer"}}});
    let fast = Fast::compile(&schema).unwrap();
    assert!(fast.accepts(br#"{"user":1,"note":"ok"}"#));
    assert!(
        !fast.accepts(b"{\"user\":1,\"note\":\"\xff\"}"),
        "invalid UTF-8"
    );
    assert!(
        !fast.accepts(br#"{"user":1,"note":"\ud800"}"#),
        "lone surrogate"
    );
    assert!(
        !fast.accepts(br#"{"user":1,"n":1e400}"#),
        "number out of range"
    );
    assert!(!fast.accepts(br#"{"user":1,"deep":{"x":["\udc00"]}}"#));
    assert!(!fast.frame_array(b"[{\"user\":1,\"note\":\"\xff\"}]", &CAPS, |_| ()));
}

/// Integer bounds near 2^53 are compared exactly or not at all.
#[test]
fn bounds_near_two_to_the_53() {
    let cases = [
        (
            json!({"type": "integer", "maximum": 9007199254740992u64}),
            "9007199254740993",
        ),
        (
            json!({"type": "integer", "minimum": 9007199254740993u64}),
            "9007199254740992",
        ),
        (
            json!({"type": "number", "minimum": 9007199254740993u64}),
            "9007199254740992.0",
        ),
        (
            json!({"type": "integer", "maximum": -9007199254740993i64}),
            "-9007199254740992",
        ),
    ];
    for (schema, value) in cases {
        let body = format!(r#"{{"v":{value}}}"#);
        let wrapped = json!({"type": "object", "properties": {"v": schema}});
        let full = jsonschema::validator_for(&wrapped).unwrap();
        let parsed: Value = serde_json::from_str(&body).unwrap();
        let accepted = Fast::compile(&wrapped).is_some_and(|f| f.accepts(body.as_bytes()));
        assert!(
            !accepted || full.is_valid(&parsed),
            "fast path accepted {body} against {wrapped}"
        );
    }
}

/// Patterns the fast path keeps match exactly as jsonschema matches them.
#[test]
fn patterns_agree_with_the_full_validator() {
    let patterns = [
        "^u[0-9]{6}$",
        "a++a",
        r"^\d{1, 3}(\.\d+)?$",
        "x{2}{1,3}",
        "(?x)^[^ a]+$",
        "^[a-z]+(-[a-z]+)*$",
        "colou?r",
        r"^\w+@\w+\.com$",
        "^.$",
        "^[^@]+@[^@]+$",
    ];
    let values = [
        "u123456",
        "aa",
        "12",
        "12.5",
        "xx",
        "b c",
        "kebab-case",
        "color",
        "a@b.com",
        "é",
        "\n",
        "x@y",
    ];
    let mut kept = 0;
    for p in patterns {
        let schema =
            json!({"type": "object", "properties": {"s": {"type": "string", "pattern": p}}});
        let full = jsonschema::validator_for(&schema).unwrap();
        let Some(fast) = Fast::compile(&schema) else {
            continue;
        };
        kept += 1;
        for v in values {
            let body = serde_json::to_string(&json!({"s": v})).unwrap();
            let parsed: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                fast.accepts(body.as_bytes()),
                full.is_valid(&parsed),
                "{p:?} on {v:?}"
            );
        }
    }
    assert!(kept >= 5, "most plain patterns keep the fast path");
}

#[test]
fn schemas_outside_the_subset_get_no_fast_path() {
    for schema in [
        json!({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}]}}}),
        json!({"type": ["string", "null"]}),
        json!({"type": "string", "format": "email"}),
        json!({"type": "string", "pattern": "(?=a)b"}),
        json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}),
        json!({"properties": {"a": {"type": "string"}}}),
        json!({"type": "object", "$ref": "#/$defs/x"}),
    ] {
        assert!(Fast::compile(&schema).is_none(), "{schema}");
    }
}

#[test]
fn the_bench_events_take_the_fast_path() {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../../benches/data/pageview.schema.json")).unwrap();
    let fast = Fast::compile(&schema).expect("inside the subset");
    let events: Vec<&serde_json::value::RawValue> =
        serde_json::from_str(include_str!("../../../benches/data/pageview-100.json")).unwrap();
    for e in events {
        assert!(fast.accepts(e.get().as_bytes()), "{}", e.get());
    }
}

/// The full route's verdict: a `Value` parse, then jsonschema.
fn full_verdict(full: &jsonschema::Validator, bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes).is_ok_and(|v| full.is_valid(&v))
}

fn tricky_schemas() -> Vec<Value> {
    vec![
        json!({"type": "object", "required": ["a"], "additionalProperties": false,
               "properties": {"a": {"type": "integer", "minimum": -5, "maximum": 100},
                              "b": {"type": "string", "minLength": 2, "maxLength": 4},
                              "e": {"type": "string", "enum": ["x", "é", "a\"b", "\u{1F600}"]},
                              "p": {"type": "string", "pattern": "^[a-z]+$"},
                              "n": {"type": "number", "exclusiveMinimum": 0.5},
                              "f": {"type": "string"},
                              "l": {"type": "array", "items": {"type": "boolean"}, "minItems": 1},
                              "z": {"type": "null"},
                              "any": true}}),
        json!({"type": "object", "required": ["x", "y"],
               "properties": {"x": {"type": "number"}},
               "additionalProperties": {"type": "integer"}}),
        json!({"type": "object"}),
        json!({}),
    ]
}

/// A table of tricky events, well-formed or not: the fast path accepts
/// none that the full route refuses, and accepts the `plain` ones.
#[test]
fn tricky_events_agree_with_the_full_validator() {
    let plain: [&[u8]; 6] = [
        br#"{"a":1}"#,
        br#"{"a":-5,"b":"ab","e":"x","p":"abc","n":0.75,"f":"","l":[true],"z":null}"#,
        b" {\"a\" :\t100 ,\r\n\"b\" : \"\\u00e9\\u00e9\" } ",
        br#"{"a":1,"e":"\u00e9","any":{"k":[1,-2.5e-3,"s",null,true,false,{}]}}"#,
        "{\"a\":1,\"e\":\"\u{1F600}\",\"b\":\"\u{e9}\u{e9}\u{e9}\u{e9}\"}".as_bytes(),
        br#"{"a":1,"e":"a\"b","f":"\ud83d\ude00 \/ \\"}"#,
    ];
    let tricky: [&[u8]; 52] = [
        br#"{"a":1.0}"#,
        br#"{"a":1e2}"#,
        br#"{"a":-0}"#,
        br#"{"a":-6}"#,
        br#"{"a":101}"#,
        br#"{"a":01}"#,
        br#"{"a":-}"#,
        br#"{"a":1.}"#,
        br#"{"a":.5}"#,
        br#"{"a":+1}"#,
        br#"{"a":1e}"#,
        br#"{"a":1,"n":1e400}"#,
        br#"{"a":1,"n":-1e400}"#,
        br#"{"a":1,"n":1e-400}"#,
        br#"{"a":1,"n":0.5}"#,
        br#"{"a":1,"n":5E-1}"#,
        br#"{"a":1,"any":123456789012345678901234567890}"#,
        br#"{"a":1,"any":1.5.5}"#,
        br#"{"a":1,"any":1-2}"#,
        br#"{"a":1,"b":"a"}"#,
        br#"{"a":1,"b":"abcde"}"#,
        "{\"a\":1,\"b\":\"\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\"}".as_bytes(),
        br#"{"a":1,"b":"\u00e9"}"#,
        br#"{"a":1,"e":"y"}"#,
        br#"{"a":1,"e":"\u0078"}"#,
        br#"{"a":1,"p":"ab1"}"#,
        br#"{"a":1,"p":"a\u0062"}"#,
        br#"{"a":1,"p":"a\nb"}"#,
        br#"{"a":1,"f":"\ud800"}"#,
        br#"{"a":1,"f":"\udc00\ud800"}"#,
        br#"{"a":1,"f":"\x"}"#,
        b"{\"a\":1,\"f\":\"raw\ttab\"}",
        b"{\"a\":1,\"f\":\"\xc3\"}",
        b"{\"a\":1,\"f\":\"\xed\xa0\x80\"}",
        b"{\"a\":1,\"\xff\":1}",
        br#"{"a":1,"l":[]}"#,
        br#"{"a":1,"l":[true,1]}"#,
        br#"{"a":1,"z":nul}"#,
        br#"{"a":1,"z":nulll}"#,
        br#"{"a":1,"l":[tru]}"#,
        br#"{"a":1,}"#,
        br#"{"a":1 "b":"xx"}"#,
        br#"{"a":1,"a":"1"}"#,
        br#"{"a":"1","a":1}"#,
        br#"{"\u0061":1}"#,
        br#"{"a":1,"x\"":1}"#,
        br#"{"a":1}x"#,
        br#"{"a":1}}"#,
        br#"{"a":1"#,
        b"{\"a\":1}\x0c",
        b"\xef\xbb\xbf{\"a\":1}",
        br#"{"a":1,"any":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#,
    ];
    let schemas = tricky_schemas();
    for (i, schema) in schemas.iter().enumerate() {
        let fast = Fast::compile(schema).expect("inside the subset");
        let full = jsonschema::validator_for(schema).unwrap();
        for e in plain.iter().chain(tricky.iter()) {
            let (quick, exact) = (fast.accepts(e), full_verdict(&full, e));
            let shown = String::from_utf8_lossy(e);
            assert!(
                !quick || exact,
                "fast path accepted {shown} against {schema}"
            );
            if i == 0 && plain.contains(e) {
                assert!(quick, "fast path refused plain {shown}");
            }
        }
    }
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Bytes and fragments most likely to break a hand-written parser.
const PIECES: [&[u8]; 32] = [
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b" ",
    b"\n",
    b"0",
    b"-",
    b".",
    b"e",
    b"u",
    b"\x00",
    b"\x1f",
    b"\xff",
    b"\xc3",
    b"\xa9",
    b"t",
    b"n",
    b"9",
    b"\\u",
    b"\\ud83d",
    b"\\ude00",
    b"1e400",
    b"null",
    b"\"\xc3\xa9\"",
    b"00",
    b"\\\"",
    b"\x7f",
];

/// One to three random edits: replace, insert or delete a piece.
fn mutate(rng: &mut Rng, event: &[u8]) -> Vec<u8> {
    let mut out = event.to_vec();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(out.len() + 1);
        let piece = PIECES[rng.below(PIECES.len())];
        match rng.below(3) {
            0 if at < out.len() => {
                out.splice(at..at + 1, piece.iter().copied());
            }
            1 if at < out.len() => {
                out.remove(at);
            }
            _ => {
                out.splice(at..at, piece.iter().copied());
            }
        }
    }
    out
}

/// Thousands of near-miss events: the fast path never accepts one the full
/// route refuses (and still accepts many, so the check is not vacuous).
#[test]
fn mutated_events_never_pass_wrongly() {
    let seeds: [&[u8]; 4] = [
        br#"{"a":12,"b":"abc","e":"x","p":"xyz","n":1.5,"f":"s\u00e9","l":[true,false],"z":null}"#,
        br#"{"a":-5, "any": {"k": [1, -2.5e-3, "s\"", null, true, false, {}]}, "e":"\u00e9"}"#,
        br#"{"x": 1.25, "y": 7, "w": -3}"#,
        "{\"a\":0,\"f\":\"\\ud83d\\ude00\",\"l\":[false],\"any\":\"é\"}".as_bytes(),
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut accepted = 0;
    for schema in tricky_schemas() {
        let fast = Fast::compile(&schema).expect("inside the subset");
        let full = jsonschema::validator_for(&schema).unwrap();
        for _ in 0..5000 {
            let seed = seeds[rng.below(seeds.len())];
            let event = mutate(&mut rng, seed);
            let quick = fast.accepts(&event);
            accepted += usize::from(quick);
            assert!(
                !quick || full_verdict(&full, &event),
                "fast path accepted {:?} against {schema}",
                String::from_utf8_lossy(&event)
            );
        }
    }
    assert!(accepted > 600, "only {accepted} accepted");
}

/// A framed array gives exactly the items a full parse does, each valid,
/// within the caps, its raw newlines noticed.
#[test]
fn framed_arrays_match_a_full_parse() {
    let schema = &tricky_schemas()[0];
    let fast = Fast::compile(schema).expect("inside the subset");
    let full = jsonschema::validator_for(schema).unwrap();
    let seeds: [&[u8]; 5] = [
        b"[{\"a\":1},{\"a\":2,\"b\":\"x,]\"}]",
        b" [ {\"a\" : 1 ,\n \"l\":[true]} ,\r\n\t{\"a\":2} ] ",
        b"[{\"a\":1,\"any\":{\"k\":[[{}],\"]}\"]}}]",
        b"[{\"a\":3}]",
        b"[{\"a\":1},{\"a\":2},{\"a\":3}]",
    ];
    let caps = Caps {
        max_items: 2,
        max_bytes: 40,
        max_depth: 4,
    };
    let mut rng = Rng(7);
    let mut framed = 0;
    for round in 0..6000 {
        let seed = seeds[rng.below(seeds.len())];
        let body = if round < seeds.len() {
            seed.to_vec()
        } else {
            mutate(&mut rng, seed)
        };
        let mut frames = Vec::new();
        if !fast.frame_array(&body, &caps, |f| frames.push(f)) {
            continue;
        }
        framed += 1;
        let shown = String::from_utf8_lossy(&body);
        let items: Vec<&serde_json::value::RawValue> =
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{shown}: {e}"));
        assert!(items.len() <= caps.max_items, "{shown}");
        assert_eq!(frames.len(), items.len(), "{shown}");
        for (frame, item) in frames.iter().zip(&items) {
            let bytes = &body[frame.range.clone()];
            assert_eq!(bytes, item.get().as_bytes(), "{shown}");
            assert!(bytes.len() <= caps.max_bytes && bytes.starts_with(b"{"));
            assert!(full_verdict(&full, bytes), "{shown}");
            let newline = bytes.iter().any(|b| matches!(b, b'\n' | b'\r'));
            assert_eq!(frame.has_newline, newline, "{shown}");
        }
    }
    assert!(framed > 100, "only {framed} framed");
}

/// Depth and size caps refuse (so the usual route reports), never pass.
#[test]
fn frames_stop_at_the_caps() {
    let fast = Fast::compile(&json!({"type": "object"})).unwrap();
    let caps = Caps {
        max_items: 10,
        max_bytes: 20,
        max_depth: 3,
    };
    let frame = |body: &[u8]| fast.frame(body, &caps);
    assert_eq!(
        frame(b" {\"a\":[{}]}\n"),
        Some(Frame {
            range: 1..11,
            has_newline: false
        })
    );
    assert_eq!(frame(b"{\"a\":[{\"b\":[]}]}"), None, "depth 4");
    assert_eq!(frame(b"{\"a\":\"0123456789abcdef\"}"), None, "21 bytes");
    assert_eq!(frame(b"[{}]"), None, "not an object");
    assert_eq!(frame(b"{}{}"), None, "two values");
    assert!(frame(b"{\n}").is_some_and(|f| f.has_newline));
    assert!(!fast.frame_array(b"[]", &caps, |_| ()), "no events");
    assert!(!fast.frame_array(b"[{},1]", &caps, |_| ()), "not an object");
    let eleven = format!("[{}{{}}]", "{},".repeat(10));
    assert!(!fast.frame_array(eleven.as_bytes(), &caps, |_| ()));
    let ten = format!("[{}{{}}]", "{},".repeat(9));
    assert!(fast.frame_array(ten.as_bytes(), &caps, |_| ()));
}
