//! Records by commit time: the records of a partition the store created
//! within an interval of its own clock.
//!
//! Record `s + 1` is created only once record `s` exists, so creation times
//! grow with seq. The store stamps each record object with its clock
//! (`last_modified`; S3 to the second), the same clock that stamps
//! segments, so "which record could name a segment written at time T" is
//! answered without trusting gateway clocks or a bound on how late events
//! are committed. Garbage collection uses it to tell orphan segments from
//! committed ones. Like every scan of the log, it starts at the low
//! watermark and is only trusted if the watermark is unchanged after it.

use chrono::{DateTime, Utc};
use futures::future::try_join_all;

use super::record::{CommitRecord, StreamPath};
use super::retry::get_with_meta;
use super::{Log, LogError};

/// A record and when the store created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub seq: u64,
    pub record: CommitRecord,
    pub at: DateTime<Utc>,
}

impl Log {
    /// Record `seq` with its creation time, or `None` when it does not exist.
    pub async fn record_at(
        &self,
        stream: &StreamPath,
        partition: u32,
        seq: u64,
    ) -> Result<Option<Committed>, LogError> {
        let key = stream.record(partition, seq);
        let got = get_with_meta(&*self.store.inner, self.policy, "get_record", &key)
            .await
            .map_err(|source| LogError::Unavailable {
                op: "get_record",
                source,
            })?;
        let Some((body, meta)) = got else {
            return Ok(None);
        };
        let record = CommitRecord::parse(&body).map_err(|reason| LogError::Corrupt {
            key: key.to_string(),
            reason,
        })?;
        Ok(Some(Committed {
            seq,
            record,
            at: meta.last_modified,
        }))
    }

    /// The records of `partition` the store created between `from` and
    /// `to` (inclusive, its clock) for which `keep` is true, in seq order.
    /// Finds the first by bisection, then reads forward `concurrency`
    /// records at a time; memory holds only the kept ones.
    pub async fn records_committed(
        &self,
        stream: &StreamPath,
        partition: u32,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        concurrency: usize,
        keep: impl Fn(&CommitRecord) -> bool,
    ) -> Result<Vec<Committed>, LogError> {
        let between = Between { from, to };
        self.steady_scan(stream, partition, |first| {
            self.scan_committed(stream, partition, first, between, concurrency, &keep)
        })
        .await
    }

    /// One scan from `start`; `Err(seq)` when record `seq` was missing.
    async fn scan_committed(
        &self,
        stream: &StreamPath,
        partition: u32,
        start: u64,
        between: Between,
        concurrency: usize,
        keep: &impl Fn(&CommitRecord) -> bool,
    ) -> Result<Result<Vec<Committed>, u64>, LogError> {
        let Some(last) = self.last_seq_from(stream, partition, start).await? else {
            return Ok(Ok(Vec::new()));
        };
        let mut seq = match self
            .first_at(stream, partition, start, last, between.from)
            .await?
        {
            Ok(seq) => seq,
            Err(missing) => return Ok(Err(missing)),
        };
        let mut kept = Vec::new();
        let step = concurrency.max(1) as u64;
        while seq <= last {
            let end = last.min(seq.saturating_add(step - 1));
            let chunk =
                try_join_all((seq..=end).map(|s| self.record_at(stream, partition, s))).await?;
            for (s, got) in (seq..=end).zip(chunk) {
                let Some(c) = got else { return Ok(Err(s)) };
                if c.at > between.to {
                    return Ok(Ok(kept));
                }
                if keep(&c.record) {
                    kept.push(c);
                }
            }
            seq = end + 1;
        }
        Ok(Ok(kept))
    }

    /// The first seq in `[lo, last]` created at or after `from` (`last + 1`
    /// when none was); `Err(seq)` when a probed record is missing.
    async fn first_at(
        &self,
        stream: &StreamPath,
        partition: u32,
        mut lo: u64,
        last: u64,
        from: DateTime<Utc>,
    ) -> Result<Result<u64, u64>, LogError> {
        let mut hi = last + 1;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some(c) = self.record_at(stream, partition, mid).await? else {
                return Ok(Err(mid));
            };
            if c.at < from {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(Ok(lo))
    }
}

#[derive(Clone, Copy)]
struct Between {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::retry::RetryPolicy;
    use crate::log::segment::{ReceivedAt, SegmentBuilder};
    use crate::store::Store;

    #[tokio::test]
    async fn finds_the_records_created_in_an_interval() {
        let store = Store::open("memory://").unwrap();
        let log = Log::new(store, "w", RetryPolicy::default());
        let s = log.stream("t", "s");
        let mut times = Vec::new();
        for i in 0..12 {
            let mut b = SegmentBuilder::with_capacity(64);
            b.push(ReceivedAt::now(), b"{}");
            let seg = b.seal(1).unwrap().unwrap();
            log.append(&s, 0, &seg, &format!("seg{i}")).await.unwrap();
            times.push(log.record_at(&s, 0, i).await.unwrap().unwrap().at);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let got = log
            .records_committed(&s, 0, times[3], times[7], 4, |_| true)
            .await
            .unwrap();
        let seqs: Vec<u64> = got.iter().map(|c| c.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5, 6, 7]);
        let odd = log
            .records_committed(&s, 0, times[0], times[11], 5, |r| {
                r.segment.contains("seg1")
            })
            .await
            .unwrap();
        assert_eq!(odd.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 10, 11]);
        let none = log
            .records_committed(&s, 1, times[0], times[11], 5, |_| true)
            .await
            .unwrap();
        assert!(none.is_empty());
    }
}
