//! Low watermarks: where a partition's retained log begins.
//!
//! Owns `low/{partition:04}/{n:020}.json` under a stream: a dense sequence
//! of objects, each created put-if-absent, each holding the first retained
//! seq and offset of the partition. The latest one (found with the log's
//! galloping probe) is the watermark; a new one is created only when its
//! `first_seq` is higher than the latest's, so the watermark never moves
//! back, however many garbage collectors race (a plain overwrite could be
//! lowered by a stale one). Records below the watermark may be deleted at
//! any time after it exists; nothing at or above it ever is.
//!
//! Also owns this process's cache of each partition's watermark: looked up
//! once per partition, then refreshed (one HEAD of the next index) only
//! where something may have been deleted. It never deletes anything: that
//! is `gc`'s job.

use object_store::{PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use super::head::{gallop, last_dense};
use super::record::StreamPath;
use super::retry::{exists, get_if_present, retry};
use super::{HeadKey, Log, LogError};

/// Watermark objects one raise may find taken by other collectors before
/// it gives up (each one taken is another collector's progress).
const RAISE_ATTEMPTS: u32 = 16;

/// The stored form of one watermark object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowMark {
    /// This object's index in the sequence (also its key's file name).
    pub index: u64,
    /// First retained seq: records below it may be deleted.
    pub first_seq: u64,
    /// First retained offset: the `first_offset` of record `first_seq`.
    pub first_offset: u64,
    /// The previous watermark's `first_seq`: `[from_seq, first_seq)` is the
    /// range this one released for deletion.
    pub from_seq: u64,
    /// When it was created (RFC 3339, UTC).
    pub created_at: String,
    /// Who created it (a gc run id).
    pub by: String,
}

/// A partition's watermark as this process knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermark {
    /// Index of the latest watermark object; `None`: none existed when looked.
    pub index: Option<u64>,
    pub first_seq: u64,
    pub first_offset: u64,
    pub from_seq: u64,
}

impl Watermark {
    fn of(mark: &LowMark) -> Self {
        Watermark {
            index: Some(mark.index),
            first_seq: mark.first_seq,
            first_offset: mark.first_offset,
            from_seq: mark.from_seq,
        }
    }

    /// The next index to create.
    fn next_index(&self) -> u64 {
        self.index.map_or(0, |i| i + 1)
    }
}

/// What a raise did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raised {
    /// This call created the watermark.
    Created(Watermark),
    /// The watermark was already at or past the asked seq (another collector).
    Already(Watermark),
}

impl Raised {
    pub fn watermark(&self) -> Watermark {
        match *self {
            Raised::Created(w) | Raised::Already(w) => w,
        }
    }
}

impl Log {
    /// The partition's watermark: this process's cached view (a lookup on
    /// first use). It may be behind the store's; it is never ahead.
    pub async fn watermark(
        &self,
        stream: &StreamPath,
        partition: u32,
    ) -> Result<Watermark, LogError> {
        match self.cached_watermark(&(stream.clone(), partition)) {
            Some(w) => Ok(w),
            None => self.refresh_watermark(stream, partition).await,
        }
    }

    /// The partition's latest watermark in the store, now: one HEAD when it
    /// has not moved since this process last looked.
    pub async fn refresh_watermark(
        &self,
        stream: &StreamPath,
        partition: u32,
    ) -> Result<Watermark, LogError> {
        let key = (stream.clone(), partition);
        let cached = self.cached_watermark(&key);
        let probe = |n: u64| self.low_exists(stream, partition, n);
        let latest = match cached.and_then(|w| w.index) {
            Some(known) => Some(gallop(known, probe).await?),
            None => last_dense(probe).await?,
        };
        let Some(latest) = latest else {
            return Ok(self.cache_watermark(key, Watermark::default()));
        };
        if let Some(w) = cached.filter(|w| w.index == Some(latest)) {
            return Ok(w);
        }
        let mark = self.low_mark(stream, partition, latest).await?;
        Ok(self.cache_watermark(key, Watermark::of(&mark)))
    }

    /// Make `first_seq` (whose record starts at `first_offset`) the
    /// partition's watermark, unless it already is at or past it. Creates
    /// the next watermark object put-if-absent; a lost race re-reads the
    /// winner and tries again only while the winner is lower.
    pub async fn raise_watermark(
        &self,
        stream: &StreamPath,
        partition: u32,
        first_seq: u64,
        first_offset: u64,
        by: &str,
        created_at: String,
    ) -> Result<Raised, LogError> {
        for _ in 0..RAISE_ATTEMPTS {
            let latest = self.refresh_watermark(stream, partition).await?;
            if latest.first_seq >= first_seq {
                return Ok(Raised::Already(latest));
            }
            let mark = LowMark {
                index: latest.next_index(),
                first_seq,
                first_offset,
                from_seq: latest.first_seq,
                created_at: created_at.clone(),
                by: by.to_string(),
            };
            match self.create_low(stream, partition, &mark).await {
                Ok(()) => {
                    let w = Watermark::of(&mark);
                    return Ok(Raised::Created(
                        self.cache_watermark((stream.clone(), partition), w),
                    ));
                }
                Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(source) => {
                    return Err(LogError::Unavailable {
                        op: "put_low",
                        source,
                    })
                }
            }
        }
        Err(LogError::Corrupt {
            key: stream.low(partition, 0).to_string(),
            reason: format!(
                "{RAISE_ATTEMPTS} watermark objects in a row were taken by other collectors"
            ),
        })
    }

    /// The cached watermark, without asking the store (`None`: not looked up yet).
    pub(super) fn watermark_if_known(
        &self,
        stream: &StreamPath,
        partition: u32,
    ) -> Option<Watermark> {
        self.cached_watermark(&(stream.clone(), partition))
    }

    fn cached_watermark(&self, key: &HeadKey) -> Option<Watermark> {
        let lows = self.lows.lock().unwrap_or_else(|p| p.into_inner());
        lows.get(key).copied()
    }

    /// Keep `w` unless the cache already holds a later one; the cached value then.
    fn cache_watermark(&self, key: HeadKey, w: Watermark) -> Watermark {
        let mut lows = self.lows.lock().unwrap_or_else(|p| p.into_inner());
        let slot = lows.entry(key).or_insert(w);
        if w.index > slot.index {
            *slot = w;
        }
        *slot
    }

    async fn low_exists(
        &self,
        stream: &StreamPath,
        partition: u32,
        n: u64,
    ) -> Result<bool, LogError> {
        let key = stream.low(partition, n);
        exists(&*self.store.inner, self.policy, "head_low", &key)
            .await
            .map_err(|source| LogError::Unavailable {
                op: "head_low",
                source,
            })
    }

    /// Watermark object `n`, which must exist (it was found by HEAD).
    async fn low_mark(
        &self,
        stream: &StreamPath,
        partition: u32,
        n: u64,
    ) -> Result<LowMark, LogError> {
        let key = stream.low(partition, n);
        let corrupt = |reason: String| LogError::Corrupt {
            key: key.to_string(),
            reason,
        };
        let body = get_if_present(&*self.store.inner, self.policy, "get_low", &key)
            .await
            .map_err(|source| LogError::Unavailable {
                op: "get_low",
                source,
            })?
            .ok_or_else(|| corrupt("found by HEAD but not by GET".into()))?;
        let mark: LowMark = serde_json::from_slice(&body).map_err(|e| corrupt(e.to_string()))?;
        if mark.index != n {
            return Err(corrupt(format!(
                "holds index {} under index {n}",
                mark.index
            )));
        }
        Ok(mark)
    }

    async fn create_low(
        &self,
        stream: &StreamPath,
        partition: u32,
        mark: &LowMark,
    ) -> Result<(), object_store::Error> {
        let key = stream.low(partition, mark.index);
        let body = serde_json::to_vec(mark).map_err(|e| object_store::Error::Generic {
            store: "sluice",
            source: Box::new(e),
        })?;
        let payload = PutPayload::from(body);
        retry(self.policy, "put_low", || {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            self.store.inner.put_opts(&key, payload.clone(), opts)
        })
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::retry::RetryPolicy;
    use crate::store::Store;

    fn log(store: &Store) -> (Log, StreamPath) {
        let log = Log::new(store.clone(), "gc", RetryPolicy::default());
        let stream = log.stream("t", "s");
        (log, stream)
    }

    async fn raise(log: &Log, s: &StreamPath, seq: u64) -> Raised {
        log.raise_watermark(s, 0, seq, seq * 10, "test", "now".into())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn none_until_raised_then_only_upwards() {
        let store = Store::open("memory://").unwrap();
        let (log, s) = log(&store);
        assert_eq!(log.watermark(&s, 0).await.unwrap(), Watermark::default());
        let first = raise(&log, &s, 5).await;
        assert!(matches!(first, Raised::Created(w) if w.first_seq == 5 && w.index == Some(0)));
        // A stale collector asking for less changes nothing.
        let stale = raise(&log, &s, 3).await;
        assert!(matches!(stale, Raised::Already(w) if w.first_seq == 5));
        let again = raise(&log, &s, 5).await;
        assert!(matches!(again, Raised::Already(_)));
        let second = raise(&log, &s, 9).await.watermark();
        assert_eq!(
            (second.index, second.from_seq, second.first_offset),
            (Some(1), 5, 90)
        );
        assert_eq!(log.watermark(&s, 1).await.unwrap(), Watermark::default());
    }

    #[tokio::test]
    async fn another_process_sees_the_latest_and_a_stale_cache_catches_up() {
        let store = Store::open("memory://").unwrap();
        let (a, s) = log(&store);
        let (b, _) = log(&store);
        raise(&a, &s, 4).await;
        assert_eq!(b.watermark(&s, 0).await.unwrap().first_seq, 4);
        for seq in [6, 8, 20] {
            raise(&a, &s, seq).await;
        }
        // b's cache is behind until it refreshes; never ahead.
        assert_eq!(b.watermark(&s, 0).await.unwrap().first_seq, 4);
        let fresh = b.refresh_watermark(&s, 0).await.unwrap();
        assert_eq!((fresh.first_seq, fresh.index), (20, Some(3)));
        assert_eq!(b.watermark(&s, 0).await.unwrap().first_seq, 20);
        // b raising from its view creates index 4, after a's.
        let w = raise(&b, &s, 30).await.watermark();
        assert_eq!((w.index, w.from_seq), (Some(4), 20));
    }

    /// Collectors racing with different goals: the sequence of watermarks
    /// they leave only ever rises, and ends at the highest goal.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_raises_stay_monotonic() {
        let store = Store::open("memory://").unwrap();
        let mut tasks = Vec::new();
        for i in 0..8u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let (log, s) = log(&store);
                for step in 0..10u64 {
                    let goal = (step * 8 + i) % 50 + 1;
                    let _ = raise(&log, &s, goal).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let (log, s) = log(&store);
        let latest = log.refresh_watermark(&s, 0).await.unwrap();
        assert_eq!(latest.first_seq, 50);
        let mut previous = 0;
        for n in 0..=latest.index.unwrap() {
            let mark = log.low_mark(&s, 0, n).await.unwrap();
            assert!(mark.first_seq > previous, "{mark:?} after {previous}");
            assert_eq!(mark.from_seq, previous, "each names the one before it");
            previous = mark.first_seq;
        }
    }
}
