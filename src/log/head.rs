//! Head discovery: where a partition's log ends, in O(log n) HEAD requests.
//!
//! Seqs are dense from 0, so the head is found by galloping (1, 2, 4, 8, …)
//! to the first missing seq and bisecting back; the log is never listed.

use std::future::Future;

use super::record::StreamPath;
use super::{Head, Log, LogError};

/// Last index that exists in a dense sequence (0, 1, 2, … with no gaps), or
/// `None` when index 0 does not: gallop (1, 2, 4, 8, …) to the first missing
/// index, then bisect back. O(log n) calls of `exists`. Used for the log's
/// records and for consumer-group checkpoints, which are both dense.
pub async fn last_dense<E, F, Fut>(mut exists: F) -> Result<Option<u64>, E>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<bool, E>>,
{
    if !exists(0).await? {
        return Ok(None);
    }
    let (mut present, mut missing) = (0u64, 1u64);
    while exists(missing).await? {
        present = missing;
        missing = missing.saturating_mul(2);
    }
    while missing - present > 1 {
        let mid = present + (missing - present) / 2;
        if exists(mid).await? {
            present = mid;
        } else {
            missing = mid;
        }
    }
    Ok(Some(present))
}

impl Log {
    async fn exists(
        &self,
        stream: &StreamPath,
        partition: u32,
        seq: u64,
    ) -> Result<bool, LogError> {
        let key = stream.record(partition, seq);
        super::retry::exists(&*self.store.inner, self.policy, "head_record", &key)
            .await
            .map_err(|source| LogError::Unavailable {
                op: "head_record",
                source,
            })
    }

    /// Last seq that exists, or `None` for an empty partition.
    pub(super) async fn last_seq(
        &self,
        stream: &StreamPath,
        partition: u32,
    ) -> Result<Option<u64>, LogError> {
        last_dense(|seq| self.exists(stream, partition, seq)).await
    }

    pub(super) async fn discover(
        &self,
        stream: &StreamPath,
        partition: u32,
    ) -> Result<Head, LogError> {
        let Some(last) = self.last_seq(stream, partition).await? else {
            return Ok(Head::default());
        };
        let record =
            self.record(stream, partition, last)
                .await?
                .ok_or_else(|| LogError::Corrupt {
                    key: stream.record(partition, last).to_string(),
                    reason: "found by HEAD but not by GET".into(),
                })?;
        Ok(Head {
            next_seq: last + 1,
            next_offset: record.next_offset(),
        })
    }
}
