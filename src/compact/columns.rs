//! Which columns a table has, and the one walk over an event's top-level
//! fields that feeds them.
//!
//! Owns the column rule (README "Parquet tables"): a stream with a JSON
//! Schema gets one column per top-level property, typed from its `type`; a
//! stream without one gets a column per field seen in the file, typed when
//! every non-null value is of one kind (string, boolean, integer, other
//! number) and kept as JSON text otherwise. Fields that get no column
//! (reserved or clashing names, past the column cap, values that do not fit
//! the column's type) are kept, as JSON, in `_extra`: never an error, never
//! a lost field. No I/O and no Parquet here.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use serde_json::Value;

/// The column of fields that have no column of their own.
pub const EXTRA: &str = "_extra";

/// Names an event field cannot take: the table's own columns and the hive
/// partition keys readers add (`dt`, `hr`). Compared without case, as DuckDB
/// and Athena compare column names.
const RESERVED: [&str; 6] = ["received_at", "partition", "offset", "dt", "hr", EXTRA];

/// The type of a field's column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Boolean,
    /// Fits an `i64`.
    Integer,
    /// Any other JSON number, as a double.
    Number,
    /// The value's JSON text, as sent.
    Json,
}

/// One event-field column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
}

/// The event-field columns of one table, in order.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    columns: Vec<Column>,
    index: HashMap<String, usize>,
    folded: HashSet<String>,
}

impl Plan {
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The column of field `name`, if it has one.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// [`Plan::column`], trying `hint` first: events of a stream mostly
    /// list their fields in one order, so the column after the previous
    /// field's is usually the one, found without hashing.
    pub fn column_hinted(&self, name: &str, hint: usize) -> Option<usize> {
        match self.columns.get(hint) {
            Some(c) if c.name == name => Some(hint),
            _ => self.column(name),
        }
    }

    fn add(&mut self, name: &str, kind: Kind, max_columns: usize) {
        let folded = name.to_lowercase();
        let refused = name.is_empty()
            || self.columns.len() >= max_columns
            || RESERVED.contains(&folded.as_str())
            || self.folded.contains(&folded);
        if refused {
            return;
        }
        self.index.insert(name.to_string(), self.columns.len());
        self.folded.insert(folded);
        self.columns.push(Column {
            name: name.to_string(),
            kind,
        });
    }

    /// Columns from a JSON Schema's top-level `properties`, in name order.
    pub fn from_schema(document: &Value, max_columns: usize) -> Plan {
        let mut plan = Plan::default();
        if let Some(properties) = document.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                plan.add(name, declared_kind(property), max_columns);
            }
        }
        plan
    }

    /// Columns for the fields of `events`, in the order first seen.
    pub fn infer<'a>(events: impl Iterator<Item = &'a [u8]>, max_columns: usize) -> Plan {
        // Fields in first-seen order with their merged kind; found by the
        // same hint as `column_hinted`, hashing only when the order changes.
        let mut seen: Vec<(String, Option<Kind>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for event in events {
            let mut hint = 0;
            // An event that is not an object has no fields; it goes to `_extra` whole.
            let _ = fields(event, |name, raw| {
                let kind = kind_of(raw);
                let at = match seen.get(hint) {
                    Some((n, _)) if *n == name => Some(hint),
                    _ => index.get(name.as_ref()).copied(),
                };
                let at = at.unwrap_or_else(|| {
                    index.insert(name.to_string(), seen.len());
                    seen.push((name.into_owned(), kind));
                    seen.len() - 1
                });
                seen[at].1 = merge(seen[at].1, kind);
                hint = at + 1;
            });
        }
        let mut plan = Plan::default();
        for (name, kind) in seen {
            plan.add(&name, kind.unwrap_or(Kind::Json), max_columns);
        }
        plan
    }
}

/// A property's column type from its `type` keyword (`"null"` aside).
fn declared_kind(property: &Value) -> Kind {
    let names: Vec<&str> = match property.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let names: Vec<&str> = names.into_iter().filter(|t| *t != "null").collect();
    match names.as_slice() {
        ["string"] => Kind::String,
        ["boolean"] => Kind::Boolean,
        ["integer"] => Kind::Integer,
        ["number"] => Kind::Number,
        _ => Kind::Json,
    }
}

/// The kind of one JSON value's text; `None` for `null`.
pub fn kind_of(raw: &[u8]) -> Option<Kind> {
    match raw.first() {
        Some(b'"') => Some(Kind::String),
        Some(b't' | b'f') => Some(Kind::Boolean),
        Some(b'n') => None,
        Some(b'{' | b'[') => Some(Kind::Json),
        _ if raw.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) => Some(Kind::Number),
        _ if integer(raw).is_some() => Some(Kind::Integer),
        _ => Some(Kind::Json),
    }
}

/// A JSON integer's value, if it fits an `i64`.
pub fn integer(raw: &[u8]) -> Option<i64> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}

fn merge(known: Option<Kind>, next: Option<Kind>) -> Option<Kind> {
    match (known, next) {
        (None, k) | (k, None) => k,
        (Some(a), Some(b)) if a == b => Some(a),
        _ => Some(Kind::Json),
    }
}

/// `event` is not one JSON object (only possible for bytes that were never
/// validated: the gateway stores objects only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a JSON object")]
pub struct NotAnObject;

/// Call `each` with every top-level field of the JSON object `event`: its
/// name (borrowed unless it has escapes) and its value's text as sent.
///
/// A byte scan, not a parse: committed events were validated as JSON when
/// they were ingested, so only the object's top level is walked (strings
/// skipped to their closing quote, nested values by depth). Bytes that do
/// not fit the grammar's shape fail the whole event, which the table keeps
/// whole in `_extra`.
pub fn fields<'a>(
    event: &'a [u8],
    mut each: impl FnMut(Cow<'a, str>, &'a [u8]),
) -> Result<(), NotAnObject> {
    let mut i = skip_ws(event, 0);
    if event.get(i) != Some(&b'{') {
        return Err(NotAnObject);
    }
    i = skip_ws(event, i + 1);
    if event.get(i) == Some(&b'}') {
        return at_end(event, i + 1);
    }
    loop {
        if event.get(i) != Some(&b'"') {
            return Err(NotAnObject);
        }
        let name_end = string_end(event, i)?;
        let name = name_of(&event[i..name_end])?;
        i = skip_ws(event, name_end);
        if event.get(i) != Some(&b':') {
            return Err(NotAnObject);
        }
        i = skip_ws(event, i + 1);
        let value_end = value_end(event, i)?;
        each(name, &event[i..value_end]);
        i = skip_ws(event, value_end);
        match event.get(i) {
            Some(b',') => i = skip_ws(event, i + 1),
            Some(b'}') => return at_end(event, i + 1),
            _ => return Err(NotAnObject),
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

fn at_end(b: &[u8], i: usize) -> Result<(), NotAnObject> {
    match skip_ws(b, i) == b.len() {
        true => Ok(()),
        false => Err(NotAnObject),
    }
}

/// Index after the closing quote of the string opening at `start`.
fn string_end(b: &[u8], start: usize) -> Result<usize, NotAnObject> {
    let mut i = start + 1;
    loop {
        let at =
            i + memchr::memchr2(b'"', b'\\', b.get(i..).ok_or(NotAnObject)?).ok_or(NotAnObject)?;
        if b[at] == b'"' {
            return Ok(at + 1);
        }
        i = at + 2;
    }
}

/// Index after the value starting at `start`.
fn value_end(b: &[u8], start: usize) -> Result<usize, NotAnObject> {
    match b.get(start).ok_or(NotAnObject)? {
        b'"' => string_end(b, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while let Some(&c) = b.get(i) {
                match c {
                    b'"' => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            Err(NotAnObject)
        }
        _ => {
            let len = b[start..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(b.len() - start);
            match len {
                0 => Err(NotAnObject),
                _ => Ok(start + len),
            }
        }
    }
}

/// A name from its quoted text: borrowed when it has no escapes.
fn name_of(quoted: &[u8]) -> Result<Cow<'_, str>, NotAnObject> {
    let inner = &quoted[1..quoted.len() - 1];
    if memchr::memchr(b'\\', inner).is_none() {
        return std::str::from_utf8(inner)
            .map(Cow::Borrowed)
            .map_err(|_| NotAnObject);
    }
    serde_json::from_slice::<String>(quoted)
        .map(Cow::Owned)
        .map_err(|_| NotAnObject)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(plan: &Plan) -> Vec<(&str, Kind)> {
        plan.columns()
            .iter()
            .map(|c| (c.name.as_str(), c.kind))
            .collect()
    }

    #[test]
    fn inference_types_a_field_only_when_all_its_values_agree() {
        let events: [&[u8]; 3] = [
            br#"{"s":"a","n":1,"f":1.5,"b":true,"mixed":1,"o":{"x":1},"z":null}"#,
            br#"{"s":"b","n":-2,"f":2e3,"b":false,"mixed":"one","late":7}"#,
            br#"{"s":null,"n":null,"big":123456789012345678901234567890}"#,
        ];
        let plan = Plan::infer(events.into_iter(), 100);
        assert_eq!(
            names(&plan),
            [
                ("s", Kind::String),
                ("n", Kind::Integer),
                ("f", Kind::Number),
                ("b", Kind::Boolean),
                ("mixed", Kind::Json),
                ("o", Kind::Json),
                ("z", Kind::Json),
                ("late", Kind::Integer),
                ("big", Kind::Json),
            ]
        );
    }

    #[test]
    fn reserved_clashing_and_excess_names_get_no_column() {
        let events: [&[u8]; 1] =
            [br#"{"Offset":1,"dt":"x","a":1,"A":2,"":3,"_EXTRA":4,"b":5,"c":6}"#];
        let plan = Plan::infer(events.into_iter(), 2);
        assert_eq!(names(&plan), [("a", Kind::Integer), ("b", Kind::Integer)]);
        assert_eq!(plan.column("A"), None);
    }

    #[test]
    fn schema_types_come_from_each_property() {
        let schema = serde_json::json!({"properties": {
            "s": {"type": "string"}, "i": {"type": ["integer", "null"]},
            "n": {"type": "number"}, "b": {"type": "boolean"},
            "either": {"type": ["string", "integer"]}, "free": {}
        }});
        let plan = Plan::from_schema(&schema, 100);
        assert_eq!(
            names(&plan),
            [
                ("b", Kind::Boolean),
                ("either", Kind::Json),
                ("free", Kind::Json),
                ("i", Kind::Integer),
                ("n", Kind::Number),
                ("s", Kind::String),
            ]
        );
    }

    #[test]
    fn fields_borrow_plain_names_and_keep_values_as_sent() {
        let mut seen = Vec::new();
        let event = br#" { "a" : [1, {"]": "}\""}],"b\u0041":"x\n" , "c":-1.5e3,"d":{},"e":null} "#;
        fields(event, |k, v| {
            let v = std::str::from_utf8(v).unwrap();
            seen.push((matches!(k, Cow::Borrowed(_)), k.into_owned(), v))
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                (true, "a".to_string(), r#"[1, {"]": "}\""}]"#),
                (false, "bA".to_string(), r#""x\n""#),
                (true, "c".to_string(), "-1.5e3"),
                (true, "d".to_string(), "{}"),
                (true, "e".to_string(), "null"),
            ]
        );
        // The same fields as a full parse finds, for every shape it accepts.
        let parsed: serde_json::Map<String, Value> = serde_json::from_slice(event).unwrap();
        assert_eq!(seen.len(), parsed.len());
        for bad in [
            &b"[1]"[..],
            b"{} x",
            b"",
            b"{",
            br#"{"a"}"#,
            br#"{"a":1,}"#,
            br#"{"a":"x}"#,
            br#"{"a":}"#,
        ] {
            assert!(
                fields(bad, |_, _| {}).is_err(),
                "{:?}",
                std::str::from_utf8(bad)
            );
        }
        assert!(fields(b"{}", |_, _| {}).is_ok());
    }
}
