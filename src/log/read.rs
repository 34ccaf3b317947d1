//! Reads: envelopes from (partition, offset) on, across segment boundaries.
//!
//! Only committed records are followed, so a segment without a record is never
//! returned. The record holding an offset is found by bisecting the dense seqs.

use bytes::Bytes;
use object_store::ObjectStoreExt;

use super::record::{CommitRecord, StreamPath};
use super::retry::retry;
use super::segment;
use super::{Log, LogError};

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
    /// or past the head.
    pub async fn locate(
        &self,
        stream: &StreamPath,
        partition: u32,
        offset: u64,
    ) -> Result<Option<(u64, CommitRecord)>, LogError> {
        let Some(last) = self.last_seq(stream, partition).await? else {
            return Ok(None);
        };
        let (mut lo, mut hi) = (0u64, last);
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            let rec = self.required_record(stream, partition, mid).await?;
            if rec.contains(offset) {
                return Ok(Some((mid, rec)));
            }
            if offset < rec.first_offset {
                let Some(h) = mid.checked_sub(1) else { break };
                hi = h;
            } else {
                lo = mid + 1;
            }
        }
        Ok(None)
    }

    pub(super) async fn required_record(
        &self,
        stream: &StreamPath,
        partition: u32,
        seq: u64,
    ) -> Result<CommitRecord, LogError> {
        self.record(stream, partition, seq)
            .await?
            .ok_or_else(|| LogError::Corrupt {
                key: stream.record(partition, seq).to_string(),
                reason: "a seq below the head is missing".into(),
            })
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
            let raw = self.segment_bytes(stream, &record).await?;
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
                reason: "missing".into(),
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
