//! JSON strings inside events, at the byte level: where one ends, checked
//! the way serde_json checks a string it parses into a `String` (no raw
//! control characters, only valid escapes, surrogates in pairs; UTF-8 is
//! checked once for the whole input by the walker), and its text with
//! escapes undone, for the rare constrained string that has any. Must never
//! pass a string serde_json would refuse.

/// A checked string.
pub(super) struct Text<'a> {
    /// The contents as sent, between the quotes (escapes not undone).
    pub raw: &'a [u8],
    /// Where the contents start.
    pub start: usize,
    /// Index just past the closing quote.
    pub end: usize,
    /// The contents hold a `\` escape.
    pub escaped: bool,
}

/// The string whose contents start at `from` (just past its opening
/// quote), in `bytes` known to be UTF-8. `None`: unterminated, or a string
/// serde_json would refuse.
pub(super) fn scan(bytes: &[u8], from: usize) -> Option<Text<'_>> {
    let (mut at, mut escaped) = (from, false);
    loop {
        at = skip_plain(bytes, at);
        match *bytes.get(at)? {
            b'"' => break,
            b'\\' => {
                escaped = true;
                at = escape_end(bytes, at + 1)?;
            }
            // A control character (`skip_plain` stops only on these three).
            _ => return None,
        }
    }
    Some(Text {
        raw: bytes.get(from..at)?,
        start: from,
        end: at + 1,
        escaped,
    })
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` that is zero. Exact for the lowest
/// such byte (a borrow only starts at a zero byte), so the lowest set bit
/// finds the first one; bytes above it may be flagged wrongly.
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// The high bit of each byte of `w` that ends a plain run: `"`, `\` or a
/// control character (below 0x20; the lowest flag is exact, as above).
fn stops(w: u64) -> u64 {
    let quote = zero_bytes(w ^ (ONES * u64::from(b'"')));
    let backslash = zero_bytes(w ^ (ONES * u64::from(b'\\')));
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    quote | backslash | control
}

/// The index of the first `"`, `\` or control character at or after `at`
/// (or the end), eight bytes at a time.
fn skip_plain(bytes: &[u8], mut at: usize) -> usize {
    while let Some(chunk) = bytes.get(at..).and_then(<[u8]>::first_chunk::<8>) {
        let s = stops(u64::from_le_bytes(*chunk));
        if s != 0 {
            return at + (s.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while let Some(&b) = bytes.get(at) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        at += 1;
    }
    at
}

/// The index just past the escape whose backslash is just before `at`.
/// A `\u` escape of a surrogate must be a leading one followed at once by
/// a trailing one, as serde_json requires of a `String`.
fn escape_end(bytes: &[u8], at: usize) -> Option<usize> {
    match *bytes.get(at)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(at + 1),
        b'u' => match hex4(bytes, at + 1)? {
            0xD800..=0xDBFF => {
                let trailing = bytes.get(at + 5..at + 7)? == b"\\u"
                    && (0xDC00..=0xDFFF).contains(&hex4(bytes, at + 7)?);
                trailing.then_some(at + 11)
            }
            0xDC00..=0xDFFF => None,
            _ => Some(at + 5),
        },
        _ => None,
    }
}

/// Four hex digits at `at`.
fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at + 4)?
        .iter()
        .try_fold(0u32, |n, &c| Some(n << 4 | char::from(c).to_digit(16)?))
}

/// The text of a string's `raw` contents (already checked by `scan`),
/// escapes undone, appended to `out`.
pub(super) fn unescape(raw: &str, out: &mut String) -> Option<()> {
    let mut rest = raw;
    while let Some(slash) = rest.find('\\') {
        out.push_str(rest.get(..slash)?);
        let (c, len) = escaped_char(rest.as_bytes().get(slash + 1..)?)?;
        out.push(c);
        rest = rest.get(slash + 1 + len..)?;
    }
    out.push_str(rest);
    Some(())
}

/// The character an escape stands for (`after` starts just past its
/// backslash) and how many bytes of `after` it takes.
fn escaped_char(after: &[u8]) -> Option<(char, usize)> {
    let simple = match *after.first()? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let unit = hex4(after, 1)?;
            if !(0xD800..=0xDBFF).contains(&unit) {
                return Some((char::from_u32(unit)?, 5));
            }
            let low = hex4(after, 7)?;
            let code = 0x1_0000 + ((unit - 0xD800) << 10 | low.checked_sub(0xDC00)?);
            return Some((char::from_u32(code)?, 11));
        }
        _ => return None,
    };
    Some((simple, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time skip stops exactly where a byte-at-a-time one
    /// does, for every byte value at every position of a word.
    #[test]
    fn skip_plain_matches_a_plain_loop() {
        let naive = |bytes: &[u8], from: usize| {
            (from..bytes.len())
                .find(|&i| matches!(bytes[i], b'"' | b'\\' | 0..=0x1f))
                .unwrap_or(bytes.len())
        };
        for fill in [b'a', 0x7f, 0x80, 0xff, b'!', b'#', 0x20, 0x5b, 0x5d] {
            for stop in 0..=255u8 {
                for pos in 0..20 {
                    let mut bytes = vec![fill; 24];
                    bytes[pos] = stop;
                    for from in [0, 1, 3] {
                        let got = skip_plain(&bytes, from);
                        assert_eq!(got, naive(&bytes, from), "{fill:#x} {stop:#x}@{pos}");
                    }
                }
            }
        }
    }

    /// `scan` passes exactly the strings serde_json parses into a
    /// `String`, and `unescape` gives the same text.
    #[test]
    fn scan_and_unescape_agree_with_serde_json() {
        let strings: [&[u8]; 28] = [
            br#""plain""#,
            br#""""#,
            br#""a\"b\\c\/d\be\ff\ng\rh\ti""#,
            br#""\u0041\u00e9\u20AC""#,
            br#""\ud83d\ude00 face""#,
            br#""\ud83d""#,
            br#""\ud83dx""#,
            br#""\ud83d\u0041""#,
            br#""\ude00""#,
            br#""\ud83d\ud83d\ude00""#,
            br#""\u12""#,
            br#""\u12g4""#,
            br#""\x""#,
            br#""\'""#,
            br#""unterminated"#,
            br#""ends in slash\""#,
            b"\"tab\tinside\"",
            b"\"nul\0inside\"",
            b"\"del\x7finside\"",
            "\"caf\u{e9} \u{1F600} \u{4e2d}\u{6587}\"".as_bytes(),
            b"\"\xff\"",
            b"\"\xc3\"",
            b"\"\xc0\xaf\"",
            b"\"\xed\xa0\x80\"",
            b"\"\xe2\x82\"",
            b"\"long plain text that spans several words of eight\"",
            b"\"\xc3\xa9\\n\xc3\xa9\"",
            b"\"\xc3\\n\xa9\"",
        ];
        for s in strings {
            let want = serde_json::from_slice::<String>(s).ok();
            // The walker checks UTF-8 for its whole input first.
            let scanned = std::str::from_utf8(s)
                .ok()
                .and_then(|text| Some((text, scan(s, 1)?)))
                .filter(|(_, t)| t.end == s.len());
            let shown = String::from_utf8_lossy(s);
            assert_eq!(scanned.is_some(), want.is_some(), "{shown}");
            if let (Some((text, t)), Some(want)) = (scanned, want) {
                let mut out = String::new();
                let raw = &text[t.start..t.end - 1];
                assert_eq!(raw.as_bytes(), t.raw);
                assert_eq!(unescape(raw, &mut out), Some(()), "{shown}");
                assert_eq!(out, want, "{shown}");
                assert_eq!(t.escaped, s.contains(&b'\\'), "{shown}");
            }
        }
    }
}
