//! A DOM-free route to "valid" for the common subset of JSON Schema.
//!
//! Owns a second, cheaper check: the event is walked once with serde's
//! visitor (no `Value`, no allocation for keys and strings without escapes)
//! against a tree compiled from the schema document. It answers `true` only
//! where the full validator would too; anything it does not model exactly
//! (a float where an integer is wanted, a huge integer against a bound, an
//! invalid event) answers `false`, and the caller asks the full validator,
//! which also writes the error. A schema that uses anything outside the
//! subset gets no fast path at all.
//!
//! The subset: `type` (one name) on every node, or a node with no keywords;
//! objects with `properties`, `required`, `additionalProperties`; arrays with
//! `items` (one schema), `minItems`, `maxItems`; strings with `minLength`,
//! `maxLength`, `pattern` (translated like jsonschema does, without
//! look-around or back-references) and `enum` of strings; numbers and
//! integers with `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`;
//! booleans; null; plus annotations. Draft 2020-12 only (or no `$schema`).

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// A compiled subset schema.
pub struct Fast {
    root: Node,
}

enum Node {
    Any,
    Object(Box<ObjectNode>),
    Array(Box<ArrayNode>),
    String(Box<StringNode>),
    Integer(Bounds),
    Number(Bounds),
    Boolean,
    Null,
}

struct ObjectNode {
    /// Declared properties, each with its bit in `required_mask` if required.
    /// A short list searched in order beats hashing every key.
    properties: Vec<Property>,
    /// Required names that have no `properties` entry.
    required_elsewhere: Vec<(String, u64)>,
    /// One bit per required name (at most 64; more get no fast path).
    required_mask: u64,
    /// `None`: other properties are refused (`additionalProperties: false`).
    additional: Option<Node>,
}

struct Property {
    name: String,
    node: Node,
    bit: u64,
}

struct ArrayNode {
    items: Node,
    min: usize,
    max: usize,
}

struct StringNode {
    min: usize,
    max: usize,
    one_of: Option<HashSet<String>>,
    pattern: Option<regex::Regex>,
}

#[derive(Clone, Copy)]
struct Bounds {
    min: Option<(f64, bool)>,
    max: Option<(f64, bool)>,
}

/// Keywords that only annotate.
const ANNOTATIONS: [&str; 7] = [
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "examples",
    "default",
];

const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

impl Fast {
    /// The fast path for `document`, if it stays inside the subset.
    pub fn compile(document: &Value) -> Option<Fast> {
        let schema = document.get("$schema").and_then(Value::as_str);
        if schema.is_some_and(|s| s.trim_end_matches('#') != DRAFT_2020_12) {
            return None;
        }
        Some(Fast {
            root: node(document)?,
        })
    }

    /// `true`: the event is valid. `false`: ask the full validator.
    pub fn accepts(&self, event: &[u8]) -> bool {
        let mut de = serde_json::Deserializer::from_slice(event);
        Check(&self.root).deserialize(&mut de).is_ok() && de.end().is_ok()
    }

    /// `true`: `body` is a JSON array of at most `max` items, every one valid.
    /// One pass over the whole body, so a valid body is also known to be
    /// well-formed JSON. `false`: take the usual route, event by event.
    pub fn accepts_array(&self, body: &[u8], max: usize) -> bool {
        let mut de = serde_json::Deserializer::from_slice(body);
        let items = Items {
            item: &self.root,
            max,
        };
        de::Deserializer::deserialize_seq(&mut de, items).is_ok() && de.end().is_ok()
    }
}

fn node(v: &Value) -> Option<Node> {
    let m = match v {
        Value::Bool(true) => return Some(Node::Any),
        Value::Object(m) => m,
        _ => return None,
    };
    let kind = match m.get("type") {
        None if m.keys().all(|k| ANNOTATIONS.contains(&k.as_str())) => return Some(Node::Any),
        Some(Value::String(t)) => t.as_str(),
        _ => return None,
    };
    let allowed: &[&str] = match kind {
        "object" => &["properties", "required", "additionalProperties"],
        "array" => &["items", "minItems", "maxItems"],
        "string" => &["minLength", "maxLength", "pattern", "enum"],
        "integer" | "number" => &["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"],
        "boolean" | "null" => &[],
        _ => return None,
    };
    let known = |k: &String| {
        k == "type" || ANNOTATIONS.contains(&k.as_str()) || allowed.contains(&k.as_str())
    };
    if !m.keys().all(known) {
        return None;
    }
    Some(match kind {
        "object" => Node::Object(Box::new(object(m)?)),
        "array" => Node::Array(Box::new(array(m)?)),
        "string" => Node::String(Box::new(string(m)?)),
        "integer" => Node::Integer(bounds(m)?),
        "number" => Node::Number(bounds(m)?),
        "boolean" => Node::Boolean,
        _ => Node::Null,
    })
}

fn object(m: &Map<String, Value>) -> Option<ObjectNode> {
    let mut required: Vec<&str> = match m.get("required") {
        None => Vec::new(),
        Some(r) => r
            .as_array()?
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<_>>>()?,
    };
    required.sort_unstable();
    required.dedup();
    if required.len() > 64 {
        return None;
    }
    let bit = |name: &str| {
        required
            .iter()
            .position(|r| *r == name)
            .map_or(0, |i| 1u64 << i)
    };
    let mut properties = Vec::new();
    if let Some(p) = m.get("properties") {
        for (name, schema) in p.as_object()? {
            properties.push(Property {
                name: name.clone(),
                node: node(schema)?,
                bit: bit(name),
            });
        }
    }
    let required_elsewhere = required
        .iter()
        .filter(|r| !properties.iter().any(|p| p.name == **r))
        .map(|r| (r.to_string(), bit(r)))
        .collect();
    let additional = match m.get("additionalProperties") {
        None | Some(Value::Bool(true)) => Some(Node::Any),
        Some(Value::Bool(false)) => None,
        Some(schema) => Some(node(schema)?),
    };
    Some(ObjectNode {
        properties,
        required_elsewhere,
        required_mask: required.iter().fold(0, |m, r| m | bit(r)),
        additional,
    })
}

fn array(m: &Map<String, Value>) -> Option<ArrayNode> {
    Some(ArrayNode {
        items: match m.get("items") {
            None => Node::Any,
            Some(schema) => node(schema)?,
        },
        min: count(m, "minItems", 0)?,
        max: count(m, "maxItems", usize::MAX)?,
    })
}

fn string(m: &Map<String, Value>) -> Option<StringNode> {
    let one_of = match m.get("enum") {
        None => None,
        Some(e) => Some(
            e.as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<HashSet<_>>>()?,
        ),
    };
    let pattern = match m.get("pattern") {
        None => None,
        Some(p) => {
            // Only patterns jsonschema reads as ECMA-262 the same way the
            // `regex` crate does (fancy-regex parses some others differently).
            let p = p.as_str()?;
            if !jsonschema_regex::is_valid_ecma_regex(p) {
                return None;
            }
            let translated = jsonschema_regex::to_rust_regex(p).ok()?;
            Some(regex::Regex::new(&translated).ok()?)
        }
    };
    Some(StringNode {
        min: count(m, "minLength", 0)?,
        max: count(m, "maxLength", usize::MAX)?,
        one_of,
        pattern,
    })
}

fn count(m: &Map<String, Value>, key: &str, default: usize) -> Option<usize> {
    match m.get(key) {
        None => Some(default),
        Some(v) => usize::try_from(v.as_u64()?).ok(),
    }
}

fn bounds(m: &Map<String, Value>) -> Option<Bounds> {
    let bound = |inclusive: &str, exclusive: &str| -> Option<Option<(f64, bool)>> {
        match (m.get(inclusive), m.get(exclusive)) {
            (None, None) => Some(None),
            (Some(v), None) => Some(Some((exact(v)?, false))),
            (None, Some(v)) => Some(Some((exact(v)?, true))),
            (Some(_), Some(_)) => None,
        }
    };
    Some(Bounds {
        min: bound("minimum", "exclusiveMinimum")?,
        max: bound("maximum", "exclusiveMaximum")?,
    })
}

/// Integers up to this magnitude convert to f64 exactly (2^53).
const EXACT: u64 = 1 << 53;

/// A bound, if f64 compares against it exactly: integers are checked before
/// the conversion (9007199254740993 would round to 2^53).
fn exact(v: &Value) -> Option<f64> {
    let fits = match (v.as_u64(), v.as_i64()) {
        (Some(u), _) => u <= EXACT,
        (None, Some(i)) => i.unsigned_abs() <= EXACT,
        _ => v.as_f64()?.abs() <= EXACT as f64,
    };
    fits.then(|| v.as_f64()).flatten()
}

impl Bounds {
    fn holds(&self, v: f64) -> bool {
        let above = match self.min {
            None => true,
            Some((m, true)) => v > m,
            Some((m, false)) => v >= m,
        };
        let below = match self.max {
            None => true,
            Some((m, true)) => v < m,
            Some((m, false)) => v <= m,
        };
        above && below
    }

    fn is_set(&self) -> bool {
        self.min.is_some() || self.max.is_some()
    }

    /// An integer of magnitude `abs`, checked as f64: only when the
    /// conversion is exact, or nothing bounds it.
    fn holds_int(&self, v: f64, abs: u64) -> bool {
        !self.is_set() || (abs <= EXACT && self.holds(v))
    }
}

/// The walk: a seed per schema node; any failure is an error that stops it.
struct Check<'a>(&'a Node);

fn no<E: de::Error>() -> E {
    E::custom("")
}

impl<'de> DeserializeSeed<'de> for Check<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.0 {
            Node::Any => d.deserialize_any(Anything),
            _ => d.deserialize_any(self),
        }
    }
}

/// Any value, read the way a `Value` parse reads it (not skipped): strings
/// are UTF-8- and escape-checked, numbers range-checked, nesting bounded by
/// serde_json's recursion limit. Bytes a tree parse would refuse never pass.
struct Anything;

impl<'de> DeserializeSeed<'de> for Anything {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Anything {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Anything)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Key)?.is_some() {
            map.next_value_seed(Anything)?;
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for Check<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value the schema's fast path can check")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        matches!(self.0, Node::Boolean).then_some(()).ok_or_else(no)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        matches!(self.0, Node::Null).then_some(()).ok_or_else(no)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        match self.0 {
            Node::Integer(b) | Node::Number(b) if b.holds_int(v as f64, v) => Ok(()),
            _ => Err(no()),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        match self.0 {
            Node::Integer(b) | Node::Number(b) if b.holds_int(v as f64, v.unsigned_abs()) => Ok(()),
            _ => Err(no()),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // A float where an integer is wanted (even 1.0): the full validator decides.
        match self.0 {
            Node::Number(b) if !b.is_set() || (v.abs() <= EXACT as f64 && b.holds(v)) => Ok(()),
            _ => Err(no()),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        let Node::String(s) = self.0 else {
            return Err(no());
        };
        // A string has at most one character per byte and at least one per
        // four: count characters only when the byte length cannot decide.
        let sure = v.len() <= s.max && v.len() / 4 >= s.min;
        let length_ok = sure || {
            let n = v.chars().count();
            n >= s.min && n <= s.max
        };
        let ok = length_ok
            && s.one_of.as_ref().is_none_or(|set| set.contains(v))
            && s.pattern.as_ref().is_none_or(|p| p.is_match(v));
        ok.then_some(()).ok_or_else(no)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Node::Array(a) = self.0 else {
            return Err(no());
        };
        let mut n = 0;
        while seq.next_element_seed(Check(&a.items))?.is_some() {
            n += 1;
            if n > a.max {
                return Err(no());
            }
        }
        (n >= a.min).then_some(()).ok_or_else(no)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Node::Object(o) = self.0 else {
            return Err(no());
        };
        let mut seen = 0u64;
        while let Some(key) = map.next_key_seed(Key)? {
            let schema = match o
                .properties
                .iter()
                .find(|p| p.name.len() == key.len() && p.name == *key)
            {
                Some(p) => {
                    seen |= p.bit;
                    &p.node
                }
                None => {
                    if let Some((_, bit)) = o.required_elsewhere.iter().find(|(r, _)| *r == *key) {
                        seen |= bit;
                    }
                    o.additional.as_ref().ok_or_else(no)?
                }
            };
            map.next_value_seed(Check(schema))?;
        }
        (seen == o.required_mask).then_some(()).ok_or_else(no)
    }
}

/// An array of events, each checked against `item`.
struct Items<'a> {
    item: &'a Node,
    max: usize,
}

impl<'de> Visitor<'de> for Items<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut n = 0;
        while seq.next_element_seed(Check(self.item))?.is_some() {
            n += 1;
            if n > self.max {
                return Err(no());
            }
        }
        Ok(())
    }
}

/// An object key, borrowed from the event when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        assert!(!fast.accepts_array(b"[{\"user\":1,\"note\":\"\xff\"}]", 10));
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
}

#[cfg(test)]
mod bench_data {
    #[test]
    fn the_bench_events_take_the_fast_path() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../benches/data/pageview.schema.json")).unwrap();
        let fast = super::Fast::compile(&schema).expect("inside the subset");
        let events: Vec<&serde_json::value::RawValue> =
            serde_json::from_str(include_str!("../../benches/data/pageview-100.json")).unwrap();
        for e in events {
            assert!(fast.accepts(e.get().as_bytes()), "{}", e.get());
        }
    }
}
