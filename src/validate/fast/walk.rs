//! The walk: one pass over JSON text (UTF-8 already checked, whole) against
//! a node tree. The grammar is checked as serde_json's `Value` parse checks
//! it (numbers other than plain integers are handed to serde_json itself),
//! each node as jsonschema checks it.
//! Every step answers `None` on anything invalid, malformed or beyond what
//! is modelled; the walk never decides "invalid", only "not accepted here".

use super::strings::{self, Text};
use super::{ArrayNode, Caps, Frame, Node, ObjectNode, StringNode};

/// `None`: not accepted here.
pub(super) type Step = Option<()>;

/// A number as serde_json's `Value` holds it.
#[derive(Clone, Copy)]
pub(super) enum Num {
    U64(u64),
    I64(i64),
    F64(f64),
}

pub(super) struct Walker<'a> {
    /// The input, known to be UTF-8, and its bytes.
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    depth: usize,
    max_depth: usize,
    /// A raw `\n` or `\r` was passed as whitespace (since last cleared).
    newline: bool,
    /// Text of a constrained string with escapes (rare; allocated lazily).
    scratch: String,
}

impl<'a> Walker<'a> {
    pub(super) fn new(text: &'a str, max_depth: usize) -> Self {
        Walker {
            text,
            bytes: text.as_bytes(),
            at: 0,
            depth: 0,
            max_depth,
            newline: false,
            scratch: String::new(),
        }
    }

    /// A whole document: one value satisfying `node`, whitespace around it.
    pub(super) fn document(&mut self, node: &Node) -> Step {
        self.ws();
        self.value(node)?;
        self.ws();
        self.at_end().then_some(())
    }

    /// An array of events, each an object satisfying `node` within `caps`,
    /// and nothing after it.
    pub(super) fn events(&mut self, node: &Node, caps: &Caps, mut each: impl FnMut(Frame)) -> Step {
        self.ws();
        self.eat(b'[')?;
        self.ws();
        let mut n = 0usize;
        loop {
            let frame = self.event(node, caps.max_bytes)?;
            n += 1;
            (n <= caps.max_items).then_some(())?;
            each(frame);
            self.ws();
            match self.bump()? {
                b',' => self.ws(),
                b']' => break,
                _ => return None,
            }
        }
        self.ws();
        self.at_end().then_some(())
    }

    /// One event at the cursor: an object satisfying `node`, no larger
    /// than `max_bytes`.
    pub(super) fn event(&mut self, node: &Node, max_bytes: usize) -> Option<Frame> {
        let start = self.at;
        if self.peek()? != b'{' {
            return None;
        }
        self.newline = false;
        self.value(node)?;
        let range = start..self.at;
        (range.len() <= max_bytes).then_some(Frame {
            range,
            has_newline: self.newline,
        })
    }

    pub(super) fn ws(&mut self) {
        while let Some(&b) = self.bytes.get(self.at) {
            match b {
                b' ' | b'\t' => {}
                b'\n' | b'\r' => self.newline = true,
                _ => return,
            }
            self.at += 1;
        }
    }

    pub(super) fn at_end(&self) -> bool {
        self.at == self.bytes.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    /// The byte at the cursor, moved past.
    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn eat(&mut self, b: u8) -> Step {
        (self.bump()? == b).then_some(())
    }

    fn value(&mut self, node: &Node) -> Step {
        match node {
            Node::Any => self.any(),
            Node::Object(o) => self.object(o),
            Node::Array(a) => self.array(a),
            Node::String(s) => self.string(s),
            Node::Integer(b) => b.admits(self.number()?, true).then_some(()),
            Node::Number(b) => b.admits(self.number()?, false).then_some(()),
            Node::Boolean => match self.peek()? {
                b't' => self.literal(b"true"),
                _ => self.literal(b"false"),
            },
            Node::Null => self.literal(b"null"),
        }
    }

    /// Any value: still read whole, so malformed bytes never pass.
    fn any(&mut self) -> Step {
        match self.peek()? {
            b'{' => self.entries(|w, _| w.any()),
            b'[' => self.elements(|w| w.any()),
            b'"' => self.text().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }

    fn object(&mut self, o: &ObjectNode) -> Step {
        let mut seen = 0u64;
        self.entries(|w, key| {
            // An escaped key would need unescaping to be looked up.
            if key.escaped {
                return None;
            }
            w.value(o.lookup(key.raw, &mut seen)?)
        })?;
        // Every occurrence of a repeated key was checked, so whichever one
        // a parse keeps is valid.
        (seen == o.required_mask).then_some(())
    }

    fn array(&mut self, a: &ArrayNode) -> Step {
        let mut n = 0usize;
        self.elements(|w| {
            n += 1;
            (n <= a.max).then_some(())?;
            w.value(&a.items)
        })?;
        (n >= a.min).then_some(())
    }

    fn string(&mut self, s: &StringNode) -> Step {
        let text = self.text()?;
        if s.is_free() {
            return Some(());
        }
        let v = self.text.get(text.start..text.end - 1)?;
        if !text.escaped {
            return s.holds(v).then_some(());
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let holds = strings::unescape(v, &mut scratch).is_some() && s.holds(&scratch);
        self.scratch = scratch;
        holds.then_some(())
    }

    /// An object at the cursor; `each` reads the value of every key.
    fn entries(&mut self, mut each: impl FnMut(&mut Self, Text<'a>) -> Step) -> Step {
        self.eat(b'{')?;
        self.enter()?;
        self.ws();
        if self.peek()? == b'}' {
            self.at += 1;
        } else {
            loop {
                let key = self.text()?;
                self.ws();
                self.eat(b':')?;
                self.ws();
                each(self, key)?;
                self.ws();
                match self.bump()? {
                    b',' => self.ws(),
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    /// An array at the cursor; `each` reads every element.
    fn elements(&mut self, mut each: impl FnMut(&mut Self) -> Step) -> Step {
        self.eat(b'[')?;
        self.enter()?;
        self.ws();
        if self.peek()? == b']' {
            self.at += 1;
        } else {
            loop {
                each(self)?;
                self.ws();
                match self.bump()? {
                    b',' => self.ws(),
                    b']' => break,
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    fn enter(&mut self) -> Step {
        self.depth += 1;
        (self.depth <= self.max_depth).then_some(())
    }

    /// A string at the cursor, checked and moved past.
    fn text(&mut self) -> Option<Text<'a>> {
        if self.peek()? != b'"' {
            return None;
        }
        let text = strings::scan(self.bytes, self.at + 1)?;
        self.at = text.end;
        Some(text)
    }

    fn literal(&mut self, word: &[u8]) -> Step {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// A number at the cursor. Plain integers of up to 18 digits are read
    /// here; anything else (fractions, exponents, long or odd forms) is
    /// handed to serde_json, so it is read exactly as the full route reads
    /// it, or refused as it would be.
    fn number(&mut self) -> Option<Num> {
        let start = self.at;
        let negative = self.peek()? == b'-';
        self.at += usize::from(negative);
        let digits = self.at;
        let mut n = 0u64;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            if self.at - digits == 18 {
                return self.long_number(start);
            }
            n = n * 10 + u64::from(d - b'0');
            self.at += 1;
        }
        let len = self.at - digits;
        let leading_zero = len > 1 && self.bytes.get(digits) == Some(&b'0');
        let more = matches!(self.peek(), Some(b'.' | b'e' | b'E'));
        if len == 0 || leading_zero || more || (negative && n == 0) {
            return self.long_number(start);
        }
        // At most 18 digits: below 2^63, so the negation cannot overflow.
        Some(if negative {
            Num::I64(-(n as i64))
        } else {
            Num::U64(n)
        })
    }

    /// The number token starting at `start`, read by serde_json.
    fn long_number(&mut self, start: usize) -> Option<Num> {
        let token = self
            .bytes
            .get(start..)?
            .iter()
            .take_while(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'));
        // The longest run of number characters: if serde_json reads it all
        // as one number, so would the full parse (a valid number cannot be
        // followed by another of these characters).
        let end = start + token.count();
        let n: serde_json::Number = serde_json::from_slice(self.bytes.get(start..end)?).ok()?;
        self.at = end;
        Some(if let Some(u) = n.as_u64() {
            Num::U64(u)
        } else if let Some(i) = n.as_i64() {
            Num::I64(i)
        } else {
            Num::F64(n.as_f64()?)
        })
    }
}
