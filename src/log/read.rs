//! Reads: envelopes from (partition, offset) on, across segment boundaries.
//!
//! Only committed records are followed, so a segment without a record is never
//! returned. The record holding an offset is found by bisecting the dense
//! seqs from the low watermark. An offset below the watermark is
//! [`LogError::Expired`]; so is one whose record or segment a garbage
//! collector deleted during the read: collectors raise the watermark before
//! they delete, so a read that finds something missing reads the watermark
//! again and answers expired, never "corrupt" and never a silent gap.

use bytes::Bytes;
use object_store::ObjectStoreExt;

use super::head::WATERMARK_ROUNDS;
use super::record::{CommitRecord, StreamPath};
use super::retry::retry;
use super::segment;
use super::{Log, LogError, Watermark};

/// Where a bisection for an offset ended.
enum Bisected {
    Found(u64, CommitRecord),
    /// At or past the last record found (the head, unless a hole misled the probe).
    PastEnd,
    /// A seq between the start and the last record is gone.
    Missing(u64),
}

/// Envelope lines read from one partition.
#[derive(Debug, Clone, Default)]
pub struct ReadBatch {
    /// Offset of `events[0]` (equal to `next_offset` when empty).
    pub first_offset: u64,
    /// Offset to read from next time.
    pub next_offset: u64,
    /// Envelope lines, without their newline.
    pub events: Vec<Bytes>,
}

impl ReadBatch {
    /// Append `record`'s lines (its decompressed segment is `raw`) from
    /// `next_offset` on, until the batch holds `limit` events or `max_bytes`
    /// bytes of them (always at least one event, so a reader moves on).
    pub fn extend_from(
        &mut self,
        record: &CommitRecord,
        raw: &Bytes,
        limit: usize,
        max_bytes: usize,
    ) {
        let skip = (self.next_offset - record.first_offset) as usize;
        let mut bytes: usize = self.events.iter().map(Bytes::len).sum();
        for line in segment::lines(raw).skip(skip) {
            let full = self.events.len() >= limit
                || (!self.events.is_empty() && bytes + line.len() > max_bytes);
            if full {
                break;
            }
            bytes += line.len();
            self.events.push(line);
        }
        self.next_offset = self.first_offset + self.events.len() as u64;
    }
}

impl Log {
    /// The seq and record that hold `offset`, or `None` when the offset is at
    /// or past the head; [`LogError::Expired`] below the watermark.
    ///
    /// Starts from this process's cached watermark (no request); only when
    /// something is missing, or the offset seems past the end, is the
    /// watermark read again (one HEAD), and the bisection redone if it moved.
    pub async fn locate(
        &self,
        stream: &StreamPath,
        partition: u32,
        offset: u64,
    ) -> Result<Option<(u64, CommitRecord)>, LogError> {
        let mut mark = self.watermark(stream, partition).await?;
        for _ in 0..WATERMARK_ROUNDS {
            if offset < mark.first_offset {
                return Err(expired(partition, offset, &mark));
            }
            let found = self
                .bisect(stream, partition, offset, mark.first_seq)
                .await?;
            let missing = match found {
                Bisected::Found(seq, rec) => return Ok(Some((seq, rec))),
                Bisected::PastEnd => None,
                Bisected::Missing(seq) => Some(seq),
            };
            let fresh = self.refresh_watermark(stream, partition).await?;
            if fresh.first_seq != mark.first_seq {
                mark = fresh;
                continue;
            }
            return match missing {
                None => Ok(None),
                Some(seq) => Err(LogError::Corrupt {
                    key: stream.record(partition, seq).to_string(),
                    reason: "a seq between the watermark and the head is missing".into(),
                }),
            };
        }
        Err(self.watermark_moving(stream, partition))
    }

    /// Bisect the seqs from `start` to the last one found for `offset`.
    async fn bisect(
        &self,
        stream: &StreamPath,
        partition: u32,
        offset: u64,
        start: u64,
    ) -> Result<Bisected, LogError> {
        let Some(last) = self.last_seq_from(stream, partition, start).await? else {
            return Ok(Bisected::PastEnd);
        };
        let (mut lo, mut hi) = (start, last);
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            let Some(rec) = self.record(stream, partition, mid).await? else {
                return Ok(Bisected::Missing(mid));
            };
            if rec.contains(offset) {
                return Ok(Bisected::Found(mid, rec));
            }
            if offset < rec.first_offset {
                let Some(h) = mid.checked_sub(1) else { break };
                hi = h;
            } else {
                lo = mid + 1;
            }
        }
        Ok(Bisected::PastEnd)
    }

    /// Record `seq`'s segment was missing: [`LogError::Expired`] (at
    /// `offset`) when a collector has passed `seq` since, else `err`.
    pub async fn expired_if_collected(
        &self,
        stream: &StreamPath,
        partition: u32,
        seq: u64,
        offset: u64,
        err: LogError,
    ) -> LogError {
        if !is_missing(&err) {
            return err;
        }
        match self.refresh_watermark(stream, partition).await {
            Ok(w) if seq < w.first_seq => expired(partition, offset, &w),
            Ok(_) => err,
            Err(e) => e,
        }
    }

    /// Up to `max_events` envelopes at and after `offset`, in offset order.
    pub async fn read(
        &self,
        stream: &StreamPath,
        partition: u32,
        offset: u64,
        max_events: usize,
    ) -> Result<ReadBatch, LogError> {
        self.read_bounded(stream, partition, offset, max_events, usize::MAX)
            .await
    }

    /// [`Log::read`], also stopping at about `max_bytes` of envelopes (at
    /// least one event always comes back, so a reader never stalls).
    pub async fn read_bounded(
        &self,
        stream: &StreamPath,
        partition: u32,
        offset: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<ReadBatch, LogError> {
        let mut batch = ReadBatch {
            first_offset: offset,
            next_offset: offset,
            events: Vec::new(),
        };
        let Some((mut seq, mut record)) = self.locate(stream, partition, offset).await? else {
            return Ok(batch);
        };
        loop {
            let raw = match self.segment_bytes(stream, &record).await {
                Ok(raw) => raw,
                Err(e) => {
                    let e = self
                        .expired_if_collected(stream, partition, seq, batch.next_offset, e)
                        .await;
                    // Events read before the collector got there are still good.
                    return match e {
                        LogError::Expired { .. } if !batch.events.is_empty() => Ok(batch),
                        e => Err(e),
                    };
                }
            };
            batch.extend_from(&record, &raw, max_events, max_bytes);
            // Stopped inside this record: a limit was reached.
            if batch.events.len() >= max_events || batch.next_offset < record.next_offset() {
                return Ok(batch);
            }
            seq += 1;
            match self.record(stream, partition, seq).await? {
                Some(next) => record = next,
                None => return Ok(batch),
            }
        }
    }

    /// A committed segment's uncompressed bytes.
    pub async fn segment_bytes(
        &self,
        stream: &StreamPath,
        record: &CommitRecord,
    ) -> Result<Bytes, LogError> {
        let key = stream.segment(&record.segment);
        let data = retry(self.policy, "get_segment", || async {
            self.store.inner.get(&key).await?.bytes().await
        })
        .await
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => LogError::BadSegment {
                key: key.to_string(),
                reason: MISSING.into(),
            },
            source => LogError::Unavailable {
                op: "get_segment",
                source,
            },
        })?;
        segment::decompress(&data, record.bytes).map_err(|e| LogError::BadSegment {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }
}

/// [`LogError::BadSegment`]'s reason when the segment does not exist.
const MISSING: &str = "missing";

fn is_missing(e: &LogError) -> bool {
    matches!(e, LogError::BadSegment { reason, .. } if reason == MISSING)
}

/// `offset` is below `mark`.
pub(super) fn expired(partition: u32, offset: u64, mark: &Watermark) -> LogError {
    LogError::Expired {
        partition,
        offset,
        first_offset: mark.first_offset,
    }
}
