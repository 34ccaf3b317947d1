//! API keys: generating them, hashing them, finding the one presented.
//!
//! Owns the key format (`sk_` and 64 hex digits: 256 random bits), its
//! stored form (`sha256:` and the hex digest; the config never holds a key),
//! the lookup by digest with a constant-time final comparison, and the `*`
//! patterns keys use for stream names and origins.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::digest::{digest, SHA256};

/// Every key starts with this.
pub const PREFIX: &str = "sk_";

/// A new random key.
pub fn generate() -> Result<String, aws_lc_rs::error::Unspecified> {
    let mut secret = [0u8; 32];
    aws_lc_rs::rand::fill(&mut secret)?;
    Ok(format!("{PREFIX}{}", hex(&secret)))
}

/// The config's `hash` value for `key`.
pub fn hash_text(key: &str) -> String {
    format!("sha256:{}", hex(&sha256(key)))
}

pub fn sha256(key: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, key.as_bytes()).as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parse a config `hash` (`sha256:` + 64 hex digits).
pub fn parse_hash(text: &str) -> Result<[u8; 32], String> {
    let hex = text
        .strip_prefix("sha256:")
        .ok_or_else(|| "must start with \"sha256:\" (run `sluice keygen`)".to_string())?;
    if hex.len() != 64 {
        return Err("must be \"sha256:\" and 64 hex digits (run `sluice keygen`)".into());
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
        out[i] = u8::from_str_radix(text, 16)
            .map_err(|_| format!("{text:?} is not a hex byte (run `sluice keygen`)"))?;
    }
    Ok(out)
}

/// Keys by digest. The map is indexed by the digest's first 8 bytes, which
/// say nothing usable about a key (SHA-256 is one-way); the whole digest is
/// then compared in constant time.
#[derive(Debug)]
pub struct KeyTable<K> {
    by_prefix: HashMap<u64, Vec<Entry<K>>>,
}

type Entry<K> = ([u8; 32], Arc<K>);

impl<K> KeyTable<K> {
    pub fn new(entries: impl IntoIterator<Item = ([u8; 32], Arc<K>)>) -> Self {
        let mut by_prefix: HashMap<u64, Vec<_>> = HashMap::new();
        for (digest, key) in entries {
            by_prefix
                .entry(prefix(&digest))
                .or_default()
                .push((digest, key));
        }
        KeyTable { by_prefix }
    }

    /// The entry whose key `presented` is.
    pub fn find(&self, presented: &str) -> Option<&Arc<K>> {
        let digest = sha256(presented);
        self.by_prefix
            .get(&prefix(&digest))?
            .iter()
            .find(|(d, _)| aws_lc_rs::constant_time::verify_slices_are_equal(d, &digest).is_ok())
            .map(|(_, k)| k)
    }
}

fn prefix(digest: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// Does `text` match `pattern` (case-sensitive), where `*` stands for any run of characters?
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_found_by_their_hash_only() {
        let key = generate().unwrap();
        assert!(key.starts_with(PREFIX) && key.len() == 67, "{key}");
        assert_ne!(key, generate().unwrap());
        let digest = parse_hash(&hash_text(&key)).unwrap();
        let table = KeyTable::new([(digest, Arc::new("web"))]);
        assert_eq!(table.find(&key).map(|k| **k), Some("web"));
        assert!(table.find(&generate().unwrap()).is_none());
        assert!(table.find("").is_none());
    }

    #[test]
    fn bad_hashes_say_what_is_wrong() {
        assert!(parse_hash("md5:00").unwrap_err().contains("sha256:"));
        assert!(parse_hash("sha256:abc").unwrap_err().contains("64 hex"));
        let not_hex = format!("sha256:{}", "zz".repeat(32));
        assert!(parse_hash(&not_hex).unwrap_err().contains("hex"));
    }

    #[test]
    fn globs() {
        assert!(glob("*", "clicks"));
        assert!(glob("app.*", "app.views"));
        assert!(!glob("app.*", "apps.views"));
        assert!(glob("*.dlq", "clicks.dlq"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("clicks", "clicks"));
        assert!(!glob("clicks", "clicks2"));
        assert!(glob("https://*.shop.example", "https://eu.shop.example"));
        assert!(!glob("https://*.shop.example", "https://shop.example"));
    }
}
