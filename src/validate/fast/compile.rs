//! Schema document → the fast path's node tree, or `None` when any part of
//! the document is outside the subset (see the parent module).

use serde_json::{Map, Value};

use super::{tag, ArrayNode, Bounds, Node, ObjectNode, Property, StringNode, EXACT};

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

/// The tree for a whole schema document.
pub(super) fn root(document: &Value) -> Option<Node> {
    let schema = document.get("$schema").and_then(Value::as_str);
    if schema.is_some_and(|s| s.trim_end_matches('#') != DRAFT_2020_12) {
        return None;
    }
    node(document)
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
                tag: tag(name.as_bytes()),
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
        Some(e) => {
            let mut names = e
                .as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()?;
            names.sort_unstable();
            names.dedup();
            Some(names)
        }
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
