//! Names that become store keys (tenants, streams): a small safe charset.

/// `[A-Za-z0-9._-]`, 1 to `max_len` bytes, not starting with `.` or `-`.
pub fn valid(name: &str, max_len: usize) -> bool {
    let ok_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    !name.is_empty()
        && name.len() <= max_len
        && !name.starts_with(['.', '-'])
        && name.bytes().all(ok_char)
}

#[cfg(test)]
mod tests {
    #[test]
    fn charset_and_length() {
        assert!(super::valid("clicks.dlq", 64));
        assert!(!super::valid("", 64));
        assert!(!super::valid("../etc", 64));
        assert!(!super::valid("a/b", 64));
        assert!(!super::valid(&"a".repeat(65), 64));
    }
}
