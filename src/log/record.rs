//! Commit records and the keys of the log.
//!
//! Owns the JSON shape of `log/{partition:04}/{seq:020}.json` and the key
//! layout of DESIGN §2 under a stream's prefix (plus the watermarks'
//! `low/{partition:04}/{n:020}.json`, see [`super::low`]). No I/O here.

use object_store::path::Path;
use serde::{Deserialize, Serialize};

/// One commit: a segment and the dense offsets it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// Segment key, relative to the stream's prefix (`data/dt=…/hr=…/{writer}-{ulid}.ndjson.zst`).
    pub segment: String,
    /// Offset of the segment's first line.
    pub first_offset: u64,
    /// Lines (events) in the segment.
    pub count: u64,
    /// Uncompressed bytes.
    pub bytes: u64,
    /// Stored (compressed) bytes.
    pub stored_bytes: u64,
    pub min_received_at: String,
    pub max_received_at: String,
    /// Id of the gateway process that committed it.
    pub writer: String,
}

impl CommitRecord {
    /// A record from the bytes of its object. Besides the JSON shape, its
    /// offsets must fit in a `u64` (`first_offset + count`): every reader
    /// computes the next offset from them. The error says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<CommitRecord, String> {
        let record: CommitRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if record.first_offset.checked_add(record.count).is_none() {
            return Err(format!(
                "first_offset {} + count {} is past the largest offset",
                record.first_offset, record.count
            ));
        }
        Ok(record)
    }

    /// Offset one past the last event of this record.
    pub fn next_offset(&self) -> u64 {
        self.first_offset + self.count
    }

    pub fn contains(&self, offset: u64) -> bool {
        offset >= self.first_offset && offset < self.next_offset()
    }
}

/// A stream's place in the store: `{root}/{tenant}/{stream}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamPath {
    base: Path,
}

impl StreamPath {
    pub fn new(root: &Path, tenant: &str, stream: &str) -> Self {
        StreamPath {
            base: root.clone().join(tenant).join(stream),
        }
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    pub fn record(&self, partition: u32, seq: u64) -> Path {
        Path::from(format!(
            "{}/log/{partition:04}/{seq:020}.json",
            self.base.as_ref()
        ))
    }

    /// Watermark object `n` of `partition` (`low/{partition:04}/{n:020}.json`):
    /// a sibling of `log/`, so nothing that lists or parses record keys sees it.
    pub fn low(&self, partition: u32, n: u64) -> Path {
        Path::from(format!(
            "{}/low/{partition:04}/{n:020}.json",
            self.base.as_ref()
        ))
    }

    pub fn log_dir(&self, partition: u32) -> Path {
        Path::from(format!("{}/log/{partition:04}", self.base.as_ref()))
    }

    /// Absolute key of a segment named relative to this stream.
    pub fn segment(&self, relative: &str) -> Path {
        Path::from(format!("{}/{relative}", self.base.as_ref()))
    }
}

/// Seq of a record key's file name (`00000000000000000042.json` → 42).
pub fn seq_of(key: &Path) -> Option<u64> {
    key.filename()?.strip_suffix(".json")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refuses_offsets_past_u64() {
        let record = |first: u64, count: u64| {
            format!(
                r#"{{"segment":"data/x.ndjson.zst","first_offset":{first},"count":{count},"bytes":1,"stored_bytes":1,"min_received_at":"","max_received_at":"","writer":"w"}}"#
            )
        };
        let ok = CommitRecord::parse(record(u64::MAX - 1, 1).as_bytes()).unwrap();
        assert_eq!(ok.next_offset(), u64::MAX);
        let err = CommitRecord::parse(record(u64::MAX, 1).as_bytes()).unwrap_err();
        assert!(err.contains("past the largest offset"), "{err}");
        assert!(CommitRecord::parse(b"{}").is_err());
    }
}
