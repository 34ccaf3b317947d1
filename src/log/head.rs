//! Head discovery: where a partition's log ends, in O(log n) HEAD requests.
//!
//! Seqs are dense from the partition's watermark (0 until garbage
//! collection has run), so the head is found by galloping (1, 2, 4, 8, …
//! past the start) to the first missing seq and bisecting back; the log is
//! never listed. Records below the watermark may be deleted while a probe
//! runs, so a discovery checks afterwards that the watermark did not move
//! past where it started (one HEAD), and starts again from the new one if
//! it did.

use std::future::Future;

use super::record::StreamPath;
use super::{Head, Log, LogError};

/// Times a discovery or a read starts again because garbage collection
/// moved the watermark under it (each time is another collector's run).
pub(super) const WATERMARK_ROUNDS: u32 = 8;

/// Last index that exists in a dense sequence (0, 1, 2, … with no gaps), or
/// `None` when index 0 does not: gallop (1, 2, 4, 8, …) to the first missing
/// index, then bisect back. O(log n) calls of `exists`. Used for the log's
/// records, the watermarks and consumer-group checkpoints, which are all dense.
pub async fn last_dense<E, F, Fut>(exists: F) -> Result<Option<u64>, E>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<bool, E>>,
{
    last_dense_from(0, exists).await
}

/// [`last_dense`] for a sequence dense from `start` (indexes below it may
/// be gone): `None` when `start` does not exist.
pub async fn last_dense_from<E, F, Fut>(start: u64, mut exists: F) -> Result<Option<u64>, E>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<bool, E>>,
{
    if !exists(start).await? {
        return Ok(None);
    }
    gallop(start, exists).await.map(Some)
}

/// Last index of a dense sequence, given that `present` exists: probe
/// `present + 1, + 2, + 4, …` to a missing one, then bisect back.
pub async fn gallop<E, F, Fut>(mut present: u64, mut exists: F) -> Result<u64, E>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<bool, E>>,
{
    let mut step = 1u64;
    let mut missing = present.saturating_add(step);
    while exists(missing).await? {
        present = missing;
        step = step.saturating_mul(2);
        missing = present.saturating_add(step);
    }
    while missing - present > 1 {
        let mid = present + (missing - present) / 2;
        if exists(mid).await? {
            present = mid;
        } else {
            missing = mid;
        }
    }
    Ok(present)
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

    /// Last seq at or after `start` that exists, or `None` when `start`
    /// does not. Not checked against the watermark: see [`Log::discover`].
    pub(super) async fn last_seq_from(
        &self,
        stream: &StreamPath,
        partition: u32,
        start: u64,
    ) -> Result<Option<u64>, LogError> {
        last_dense_from(start, |seq| self.exists(stream, partition, seq)).await
    }

    /// The head, galloping from the watermark. Afterwards the watermark is
    /// read again: if it moved, records the probe relied on may have been
    /// deleted under it, so it starts over from the new one. On a
    /// partition garbage collection never touched this costs one HEAD more
    /// than the probe (the watermark that is not there).
    pub(super) async fn discover(
        &self,
        stream: &StreamPath,
        partition: u32,
    ) -> Result<Head, LogError> {
        let mut start = self
            .watermark_if_known(stream, partition)
            .unwrap_or_default();
        for _ in 0..WATERMARK_ROUNDS {
            let last = self
                .last_seq_from(stream, partition, start.first_seq)
                .await?;
            let now = self.refresh_watermark(stream, partition).await?;
            if now.first_seq != start.first_seq {
                start = now;
                continue;
            }
            let Some(last) = last else {
                return Ok(Head {
                    next_seq: now.first_seq,
                    next_offset: now.first_offset,
                });
            };
            match self.record(stream, partition, last).await? {
                Some(record) => {
                    return Ok(Head {
                        next_seq: last + 1,
                        next_offset: record.next_offset(),
                    })
                }
                // Deleted since the HEAD: the watermark has moved on.
                None => start = self.refresh_watermark(stream, partition).await?,
            }
        }
        Err(self.watermark_moving(stream, partition))
    }

    /// Run `scan` from the watermark's `first_seq` until the watermark holds
    /// still across one scan (garbage collection may have deleted what a
    /// scan read). `Err(seq)` from a scan under a steady watermark means
    /// record `seq` is missing between the watermark and the head.
    pub(super) async fn steady_scan<T, Fut>(
        &self,
        stream: &StreamPath,
        partition: u32,
        mut scan: impl FnMut(u64) -> Fut,
    ) -> Result<T, LogError>
    where
        Fut: std::future::Future<Output = Result<Result<T, u64>, LogError>>,
    {
        let mut mark = self.watermark(stream, partition).await?;
        for _ in 0..WATERMARK_ROUNDS {
            let scanned = scan(mark.first_seq).await?;
            let fresh = self.refresh_watermark(stream, partition).await?;
            if fresh.first_seq != mark.first_seq {
                mark = fresh;
                continue;
            }
            return scanned.map_err(|seq| LogError::Corrupt {
                key: stream.record(partition, seq).to_string(),
                reason: "a seq between the watermark and the head is missing".into(),
            });
        }
        Err(self.watermark_moving(stream, partition))
    }

    /// The error when the watermark kept moving for [`WATERMARK_ROUNDS`].
    pub(super) fn watermark_moving(&self, stream: &StreamPath, partition: u32) -> LogError {
        LogError::Corrupt {
            key: stream.low(partition, 0).to_string(),
            reason: format!(
                "the watermark moved {WATERMARK_ROUNDS} times during one read; \
                 are many garbage collectors running at once?"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn last_of(start: u64, present: std::ops::Range<u64>) -> (Option<u64>, usize) {
        let mut calls = 0;
        let found = last_dense_from(start, |i| {
            calls += 1;
            let hit = present.contains(&i);
            async move { Ok::<_, ()>(hit) }
        })
        .await
        .unwrap();
        (found, calls)
    }

    #[tokio::test]
    async fn finds_the_last_index_from_any_start() {
        assert_eq!(last_of(0, 0..0).await.0, None);
        assert_eq!(last_of(0, 0..1).await.0, Some(0));
        assert_eq!(last_of(0, 0..1000).await.0, Some(999));
        // Dense from 700 (0..700 deleted): from 700 it is found, in O(log n).
        let (found, calls) = last_of(700, 700..1000).await;
        assert_eq!(found, Some(999));
        assert!(calls <= 20, "{calls} probes");
        assert_eq!(last_of(700, 0..0).await.0, None);
        assert_eq!(last_of(5, 5..6).await.0, Some(5));
    }
}
