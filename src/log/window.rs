//! Time windows over the log: which records may hold events received in an
//! interval, without reading the whole partition.
//!
//! Records are in commit order, not receive order: several writers commit to
//! one partition, and a segment waits up to `max_age` (longer while the store
//! is down) before its record exists. The scan relies on one bound, the
//! *lateness*: an event's record is created at most `lateness` after the
//! event was received. Under it, a record whose oldest event is older than
//! `from - lateness` was committed before `from`, and so was every record
//! before it (seqs grow with commit time); a record whose oldest event is
//! newer than `to + lateness` is followed only by records committed after
//! `to + lateness`, which hold nothing received before `to`. Callers that
//! must not miss a record committed later than the bound (compaction) chain
//! their runs by seq, so a late record is picked up by the next run.
//!
//! The scan starts at the partition's low watermark at the earliest
//! (records below it may be deleted), and is only trusted once the
//! watermark is read again unchanged after it (one HEAD): a collector that
//! deleted records during the scan moved the watermark first.

use chrono::DateTime;

use super::record::{CommitRecord, StreamPath};
use super::{Log, LogError};

/// Milliseconds since the epoch of a record's `…_received_at`.
pub fn millis(at: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// A record's oldest and newest receive times, in milliseconds.
pub fn span(record: &CommitRecord, key: impl Fn() -> String) -> Result<(i64, i64), LogError> {
    let bad = |what: &str| LogError::Corrupt {
        key: key(),
        reason: format!("{what} is not an RFC 3339 time"),
    };
    let min = millis(&record.min_received_at).ok_or_else(|| bad("min_received_at"))?;
    let max = millis(&record.max_received_at).ok_or_else(|| bad("max_received_at"))?;
    Ok((min, max))
}

/// Half-open receive-time window `[from, to)` in milliseconds, and the
/// lateness bound the scan may rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: i64,
    pub to: i64,
    pub lateness: i64,
}

impl Window {
    fn overlaps(&self, (min, max): (i64, i64)) -> bool {
        min < self.to && max >= self.from
    }
}

impl Log {
    /// Records of `partition` at or after `after_seq` (and the watermark)
    /// that hold at least one event received in `window`, with their seqs,
    /// in seq order. At most `limit` records come back: pass the last seq +
    /// 1 to continue.
    pub async fn records_in(
        &self,
        stream: &StreamPath,
        partition: u32,
        window: Window,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, CommitRecord)>, LogError> {
        self.steady_scan(stream, partition, |first| {
            self.scan(stream, partition, window, after_seq.max(first), limit)
        })
        .await
    }

    /// One scan from `start`; `Err(seq)` when record `seq` was missing.
    async fn scan(
        &self,
        stream: &StreamPath,
        partition: u32,
        window: Window,
        start: u64,
        limit: usize,
    ) -> Result<Result<Vec<(u64, CommitRecord)>, u64>, LogError> {
        let Some(last) = self.last_seq_from(stream, partition, start).await? else {
            return Ok(Ok(Vec::new()));
        };
        let mut seq = match self
            .window_start(stream, partition, window, start, last)
            .await?
        {
            Ok(seq) => seq,
            Err(missing) => return Ok(Err(missing)),
        };
        let mut found = Vec::new();
        while seq <= last && found.len() < limit {
            let Some(record) = self.record(stream, partition, seq).await? else {
                return Ok(Err(seq));
            };
            let span = span(&record, || stream.record(partition, seq).to_string())?;
            if span.0 >= window.to.saturating_add(window.lateness) {
                break;
            }
            if window.overlaps(span) {
                found.push((seq, record));
            }
            seq += 1;
        }
        Ok(Ok(found))
    }

    /// A seq at or after `after_seq` before which no record can hold an event
    /// of `window`: bisect for a record committed before `window.from`.
    async fn window_start(
        &self,
        stream: &StreamPath,
        partition: u32,
        window: Window,
        after_seq: u64,
        last: u64,
    ) -> Result<Result<u64, u64>, LogError> {
        let (mut lo, mut hi) = (after_seq, last);
        let mut start = after_seq;
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            let Some(record) = self.record(stream, partition, mid).await? else {
                return Ok(Err(mid));
            };
            let (min, _) = span(&record, || stream.record(partition, mid).to_string())?;
            if min.saturating_add(window.lateness) < window.from {
                start = mid + 1;
                lo = mid + 1;
            } else {
                let Some(h) = mid.checked_sub(1) else { break };
                hi = h;
            }
        }
        Ok(Ok(start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::retry::RetryPolicy;
    use crate::log::segment::{ReceivedAt, SegmentBuilder};
    use crate::store::Store;

    const HOUR: i64 = 3_600_000;

    async fn append_at(log: &Log, stream: &StreamPath, millis: &[i64]) {
        let mut b = SegmentBuilder::with_capacity(1024);
        for &m in millis {
            b.push(ReceivedAt::from_millis(m), b"{\"a\":1}");
        }
        let seg = b.seal(1).unwrap().unwrap();
        log.append(stream, 0, &seg, &ulid::Ulid::new().to_string())
            .await
            .unwrap();
    }

    fn log() -> (Log, StreamPath) {
        let store = Store::open("memory://").unwrap();
        let log = Log::new(store, "w", RetryPolicy::default());
        let stream = log.stream("t", "s");
        (log, stream)
    }

    #[tokio::test]
    async fn finds_exactly_the_records_that_overlap_an_hour() {
        let (log, stream) = log();
        let h = 100 * HOUR;
        // seq 0..=5; seq 3 straddles the hour's end; seq 4 is a late commit
        // of an event inside the hour (within the lateness bound).
        for at in [
            vec![h - 2 * HOUR],
            vec![h - 10],
            vec![h + 5, h + 10],
            vec![h + HOUR - 1, h + HOUR + 1],
            vec![h + 20],
            vec![h + 3 * HOUR],
        ] {
            append_at(&log, &stream, &at).await;
        }
        let window = Window {
            from: h,
            to: h + HOUR,
            lateness: HOUR / 4,
        };
        let found = log.records_in(&stream, 0, window, 0, 100).await.unwrap();
        let seqs: Vec<u64> = found.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        let from_3 = log.records_in(&stream, 0, window, 3, 100).await.unwrap();
        assert_eq!(from_3.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [3, 4]);
        let one = log.records_in(&stream, 0, window, 0, 1).await.unwrap();
        assert_eq!(one.len(), 1);
    }

    #[tokio::test]
    async fn an_empty_partition_has_no_records() {
        let (log, stream) = log();
        let window = Window {
            from: 0,
            to: HOUR,
            lateness: 0,
        };
        assert!(log
            .records_in(&stream, 0, window, 0, 10)
            .await
            .unwrap()
            .is_empty());
    }
}
