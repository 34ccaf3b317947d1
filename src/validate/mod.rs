//! Validation: a stream's JSON Schema, compiled once per config load.
//!
//! Owns turning a schema document (inline in the config, or a file) into a
//! compiled validator, and the verdict on one event. Events are first walked
//! by the DOM-free fast path (`fast`) when the schema stays in its subset;
//! an event it cannot pass is parsed once into a `Value` and checked by the
//! jsonschema crate, which also writes the error. What is stored is always
//! the bytes as sent.
//! Drafts 2020-12 (the default) and 7 (and 4, 6, 2019-09) are chosen by the
//! document's `$schema`. Remote `$ref`s are not fetched: a schema must be
//! self-contained.

mod fast;

pub use fast::{Caps, Fast, Frame};

use serde_json::Value;

use crate::config::StreamConfig;

/// A compiled schema and the document it came from (shown by describe).
pub struct Schema {
    validator: jsonschema::Validator,
    fast: Option<fast::Fast>,
    pub document: Value,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("document", &self.document)
            .finish()
    }
}

/// Why an event does not satisfy its stream's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The schema keyword that failed (`required`, `type`, `pattern`, …).
    pub keyword: String,
    pub detail: String,
    /// JSON Pointer into the event.
    pub instance_path: String,
    /// JSON Pointer into the schema.
    pub schema_path: String,
}

impl Schema {
    /// Compile `document`; the error says what is wrong with it.
    pub fn compile(document: Value) -> Result<Schema, String> {
        let validator = jsonschema::options()
            .build(&document)
            .map_err(|e| format!("{e} (at {})", pointer(&e.schema_path().to_string())))?;
        Ok(Schema {
            validator,
            fast: fast::Fast::compile(&document),
            document,
        })
    }

    /// The stream's schema document, if it declares one: `schema` inline (a
    /// JSON string or a TOML table) or `schema_file` (a path).
    pub fn document_of(stream: &StreamConfig) -> Result<Option<Value>, String> {
        match (&stream.schema, &stream.schema_file) {
            (Some(_), Some(_)) => Err("set schema or schema_file, not both".into()),
            (None, None) => Ok(None),
            (Some(toml::Value::String(text)), None) => serde_json::from_str(text)
                .map(Some)
                .map_err(|e| format!("schema is not valid JSON: {e}")),
            (Some(inline), None) => serde_json::to_value(inline)
                .map(Some)
                .map_err(|e| format!("schema cannot be read as JSON: {e}")),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read schema_file {path}: {e}"))?;
                serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| format!("schema_file {path} is not valid JSON: {e}"))
            }
        }
    }

    /// Does the schema stay inside the fast path's subset?
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// The same schema with no fast path: every event takes the full route
    /// (tests and the fuzz targets compare the two).
    pub(crate) fn without_fast_path(self) -> Schema {
        Schema { fast: None, ..self }
    }

    /// The DOM-free fast path, when the schema stays inside its subset.
    pub fn fast(&self) -> Option<&Fast> {
        self.fast.as_ref()
    }

    /// Does a parsed event satisfy the schema? (Benchmarks split the cost.)
    pub fn is_valid(&self, event: &Value) -> bool {
        self.validator.is_valid(event)
    }

    /// Check one event (known to be a JSON object within the limits): the
    /// first violation, if any.
    pub fn check(&self, event: &[u8]) -> Result<(), Violation> {
        if self.fast.as_ref().is_some_and(|f| f.accepts(event)) {
            return Ok(());
        }
        let value: Value = match serde_json::from_slice(event) {
            Ok(v) => v,
            Err(e) => {
                return Err(Violation {
                    keyword: "json".into(),
                    detail: e.to_string(),
                    instance_path: String::new(),
                    schema_path: String::new(),
                })
            }
        };
        if self.validator.is_valid(&value) {
            return Ok(());
        }
        let Some(error) = self.validator.iter_errors(&value).next() else {
            return Ok(());
        };
        Err(Violation {
            keyword: error.kind().keyword().to_string(),
            detail: capped(error.to_string()),
            instance_path: pointer(&error.instance_path().to_string()),
            schema_path: pointer(&error.schema_path().to_string()),
        })
    }
}

/// Longest violation detail: the library quotes the failing value, which
/// may be the whole event.
const MAX_DETAIL: usize = 300;

fn capped(mut text: String) -> String {
    if text.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// The root pointer is shown as `/`, not as an empty string.
fn pointer(p: &str) -> String {
    if p.is_empty() {
        "/".to_string()
    } else {
        p.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::compile(json!({
            "type": "object",
            "required": ["user"],
            "properties": {
                "user": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "additionalProperties": false
        }))
        .unwrap()
    }

    #[test]
    fn violations_name_keyword_and_both_paths() {
        let s = schema();
        assert_eq!(s.check(br#"{"user":1,"tags":["a"]}"#), Ok(()));
        let v = s.check(br#"{"tags":["a"]}"#).unwrap_err();
        assert_eq!(
            (v.keyword.as_str(), v.instance_path.as_str()),
            ("required", "/")
        );
        assert_eq!(v.schema_path, "/required");
        let v = s.check(br#"{"user":1,"tags":["a",2]}"#).unwrap_err();
        assert_eq!(v.keyword, "type");
        assert_eq!(v.instance_path, "/tags/1");
        assert_eq!(v.schema_path, "/properties/tags/items/type");
        let v = s.check(br#"{"user":1,"extra":true}"#).unwrap_err();
        assert_eq!(v.keyword, "additionalProperties");
    }

    #[test]
    fn a_broken_schema_says_what_is_wrong() {
        let err = Schema::compile(json!({"type": "objekt"})).unwrap_err();
        assert!(err.contains("objekt"), "{err}");
        let err = Schema::compile(json!({"$ref": "https://example.com/s.json"})).unwrap_err();
        assert!(!err.is_empty());
    }

    #[test]
    fn draft7_is_chosen_by_its_meta_schema() {
        let s = Schema::compile(json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"n": {"type": "integer", "exclusiveMinimum": 0}}
        }))
        .unwrap();
        assert!(s.check(br#"{"n":1}"#).is_ok());
        assert_eq!(
            s.check(br#"{"n":0}"#).unwrap_err().keyword,
            "exclusiveMinimum"
        );
    }
}
