//! A DOM-free route to "valid" for the common subset of JSON Schema.
//!
//! Owns a second, cheaper check: the event's bytes are walked once, by hand,
//! against a tree compiled from the schema document (`compile`), checking
//! the JSON grammar as serde_json's `Value` parse does and each keyword as
//! jsonschema does (`walk`, `strings`). No `Value`, no allocation per event.
//! It answers `true` only where the full validator would too; anything it
//! does not model exactly (a float where an integer is wanted, a huge
//! integer against a bound, an escaped key, an invalid or malformed event)
//! answers `false`, and the caller asks the full validator, which also
//! writes the error. A schema that uses anything outside the subset gets no
//! fast path at all.
//!
//! The same walk frames events for `decode`: it reports where each accepted
//! event lies, whether it holds a raw newline, and refuses one past the
//! size or depth limits, so an accepted body needs no other pass.
//!
//! The subset: `type` (one name) on every node, or a node with no keywords;
//! objects with `properties`, `required`, `additionalProperties`; arrays with
//! `items` (one schema), `minItems`, `maxItems`; strings with `minLength`,
//! `maxLength`, `pattern` (translated like jsonschema does, without
//! look-around or back-references) and `enum` of strings; numbers and
//! integers with `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`;
//! booleans; null; plus annotations. Draft 2020-12 only (or no `$schema`).

mod compile;
mod strings;
mod walk;

#[cfg(test)]
mod tests;

use std::ops::Range;

use serde_json::Value;

use walk::Walker;

/// A compiled subset schema.
pub struct Fast {
    root: Node,
}

/// The limits every event of a framed body is held to. An event past one
/// is not accepted here; the usual route reports it.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Most events in one array body.
    pub max_items: usize,
    /// Largest event, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of an event (its own object counts one).
    pub max_depth: usize,
}

/// One accepted event of a framed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Where the event is in the body, without surrounding whitespace.
    pub range: Range<usize>,
    /// A raw `\n` or `\r` occurs in it (only possible as whitespace).
    pub has_newline: bool,
}

/// Deepest nesting the walk follows, whatever the limits say: below serde_json's
/// recursion limit (128), so the full route could parse what passes here.
const DEPTH_CAP: usize = 100;

impl Fast {
    /// The fast path for `document`, if it stays inside the subset.
    pub fn compile(document: &Value) -> Option<Fast> {
        compile::root(document).map(|root| Fast { root })
    }

    /// `true`: the event is valid. `false`: ask the full validator.
    pub fn accepts(&self, event: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(event) else {
            return false;
        };
        Walker::new(text, DEPTH_CAP).document(&self.root).is_some()
    }

    /// `body` holds one JSON object, valid and within `caps`: where it is.
    /// `None`: take the usual route.
    pub fn frame(&self, body: &[u8], caps: &Caps) -> Option<Frame> {
        let text = std::str::from_utf8(body).ok()?;
        let mut walker = Walker::new(text, caps.max_depth.min(DEPTH_CAP));
        walker.ws();
        let frame = walker.event(&self.root, caps.max_bytes)?;
        walker.ws();
        walker.at_end().then_some(frame)
    }

    /// `true`: `body` is a JSON array of 1 to `caps.max_items` objects,
    /// every one valid and within `caps`, each given to `each` in order.
    /// One pass over the whole body, so it is also known to be well-formed.
    /// `false` (possibly after some calls to `each`): take the usual route.
    pub fn frame_array(&self, body: &[u8], caps: &Caps, each: impl FnMut(Frame)) -> bool {
        let Ok(text) = std::str::from_utf8(body) else {
            return false;
        };
        Walker::new(text, caps.max_depth.min(DEPTH_CAP))
            .events(&self.root, caps, each)
            .is_some()
    }
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
    /// A short list searched by tag beats hashing every key.
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
    /// `tag(name)`, compared before the name itself.
    tag: u32,
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
    /// `enum`, sorted for a binary search.
    one_of: Option<Vec<String>>,
    pattern: Option<regex::Regex>,
}

#[derive(Clone, Copy)]
struct Bounds {
    min: Option<(f64, bool)>,
    max: Option<(f64, bool)>,
}

/// Integers up to this magnitude convert to f64 exactly (2^53).
const EXACT: u64 = 1 << 53;

/// A cheap summary of a key: its length and first and last bytes.
fn tag(name: &[u8]) -> u32 {
    let first = name.first().copied().unwrap_or(0);
    let last = name.last().copied().unwrap_or(0);
    (name.len() as u32) << 16 | u32::from(first) << 8 | u32::from(last)
}

impl ObjectNode {
    /// The schema for the value of key `name`, marking it in `seen` if it
    /// is required. `None`: the key is refused.
    fn lookup(&self, name: &[u8], seen: &mut u64) -> Option<&Node> {
        let t = tag(name);
        let declared = self
            .properties
            .iter()
            .find(|p| p.tag == t && same(p.name.as_bytes(), name));
        if let Some(p) = declared {
            *seen |= p.bit;
            return Some(&p.node);
        }
        let mut elsewhere = self.required_elsewhere.iter();
        if let Some((_, bit)) = elsewhere.find(|(r, _)| r.as_bytes() == name) {
            *seen |= bit;
        }
        self.additional.as_ref()
    }
}

/// Byte equality of short names, eight bytes at a time, without a library
/// call per key.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a, mut b) = (a, b);
    while let (Some((x, rest_a)), Some((y, rest_b))) =
        (a.split_first_chunk::<8>(), b.split_first_chunk::<8>())
    {
        if x != y {
            return false;
        }
        (a, b) = (rest_a, rest_b);
    }
    a.iter().zip(b).all(|(x, y)| x == y)
}

impl StringNode {
    /// No keyword to check: any well-formed string passes.
    fn is_free(&self) -> bool {
        self.min == 0 && self.max == usize::MAX && self.one_of.is_none() && self.pattern.is_none()
    }

    /// Does the string `v` pass?
    fn holds(&self, v: &str) -> bool {
        self.length_holds(v)
            && self.one_of.as_ref().is_none_or(|set| one_of(set, v))
            && self.pattern.as_ref().is_none_or(|p| p.is_match(v))
    }

    /// Length in characters, as jsonschema counts it. A string has at most
    /// one character per byte and at least one per four: count characters
    /// only when the byte length cannot decide.
    fn length_holds(&self, v: &str) -> bool {
        let (most, least) = (v.len(), v.len().div_ceil(4));
        if most <= self.max && least >= self.min {
            return true;
        }
        if most < self.min || least > self.max {
            return false;
        }
        (self.min..=self.max).contains(&v.chars().count())
    }
}

/// Is `v` in the sorted `set`? A short set is searched in order, lengths
/// first: most names are ruled out without comparing their bytes.
fn one_of(set: &[String], v: &str) -> bool {
    if set.len() <= 16 {
        return set.iter().any(|e| same(e.as_bytes(), v.as_bytes()));
    }
    set.binary_search_by(|e| e.as_str().cmp(v)).is_ok()
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

    /// Does `n` pass, for an `integer` node or a `number` one? A float
    /// where an integer is wanted (even 1.0): the full validator decides.
    fn admits(&self, n: walk::Num, integer: bool) -> bool {
        match n {
            walk::Num::U64(v) => self.holds_int(v as f64, v),
            walk::Num::I64(v) => self.holds_int(v as f64, v.unsigned_abs()),
            walk::Num::F64(v) => {
                !integer && (!self.is_set() || (v.abs() <= EXACT as f64 && self.holds(v)))
            }
        }
    }
}
