//! The read path: tailers, the segment cache, and reads from an offset.
//!
//! Owns everything between the log and a reader on this gateway: one tailer
//! per (stream, partition) shared by all readers (N readers never cost N
//! times the store requests), a bounded segment cache, and `read`, which
//! serves recent offsets from the tailer's index and older ones by bisecting
//! the log. An offset below the partition's low watermark, or one whose
//! segment a garbage collector deleted during the read, is
//! [`LogError::Expired`] (410 on the routes), never a gap. HTTP shapes live
//! in `routes`.

mod cache;
pub mod routes;
mod tail;
pub mod ws;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::config::ReadConfig;
use crate::log::record::CommitRecord;
use crate::log::{Log, LogError, ReadBatch};
use cache::SegmentCache;
pub use tail::{Cadence, Tailer};

/// Why a read could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("offset {offset} is past the head {head} of partition {partition}")]
    OutOfRange {
        partition: u32,
        offset: u64,
        head: u64,
    },
    #[error("this gateway already follows {limit} partitions (read.max_tailers)")]
    TooManyTailers { limit: usize },
}

struct Running {
    tailer: Arc<Tailer>,
    task: JoinHandle<()>,
}

/// All readers' shared state on one gateway.
pub struct Readers {
    log: Arc<Log>,
    config: ReadConfig,
    cache: SegmentCache,
    /// Segment fetches under way: readers woken by the same commit share one GET.
    fetching: Fetches,
    /// By (tenant, stream, partition).
    tailers: Mutex<HashMap<(String, String, u32), Running>>,
}

impl Readers {
    pub fn new(log: Arc<Log>, config: ReadConfig) -> Self {
        Readers {
            cache: SegmentCache::new(config.cache_bytes),
            log,
            config,
            fetching: Mutex::new(HashMap::new()),
            tailers: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &ReadConfig {
        &self.config
    }

    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// The tailer of a partition, started if need be.
    pub fn tailer(
        &self,
        tenant: &str,
        stream: &str,
        partition: u32,
    ) -> Result<Arc<Tailer>, ReadError> {
        let mut tailers = self.tailers.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tenant.to_string(), stream.to_string(), partition);
        if let Some(r) = tailers.get(&key).filter(|r| r.tailer.touch()) {
            return Ok(r.tailer.clone());
        }
        tailers.retain(|_, r| !r.task.is_finished() && !r.tailer.stopped());
        if tailers.len() >= self.config.max_tailers {
            return Err(ReadError::TooManyTailers {
                limit: self.config.max_tailers,
            });
        }
        let tailer = Tailer::new(self.log.stream(tenant, stream), partition);
        let task = tokio::spawn(tailer.clone().run(self.log.clone(), self.cadence()));
        tailers.insert(
            key,
            Running {
                tailer: tailer.clone(),
                task,
            },
        );
        Ok(tailer)
    }

    fn cadence(&self) -> Cadence {
        Cadence {
            poll: self.config.poll_interval(),
            idle_max: self.config.idle_poll_max(),
            linger: self.config.linger(),
        }
    }

    /// This gateway committed to `partition`: its tailer (if any) polls now.
    pub fn wake(&self, tenant: &str, stream: &str, partition: u32) {
        let tailers = self.tailers.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tenant.to_string(), stream.to_string(), partition);
        if let Some(r) = tailers.get(&key) {
            r.tailer.wake();
        }
    }

    /// Up to `limit` envelopes at and after `offset`, never past `head`.
    pub async fn read(
        &self,
        tailer: &Tailer,
        offset: u64,
        head: u64,
        limit: usize,
    ) -> Result<ReadBatch, ReadError> {
        let partition = tailer.partition;
        if offset > head {
            return Err(ReadError::OutOfRange {
                partition,
                offset,
                head,
            });
        }
        let mut batch = ReadBatch {
            first_offset: offset,
            next_offset: offset,
            events: Vec::new(),
        };
        let path = tailer.path();
        // This process's view of the watermark: no request once looked up.
        let mark = self.log.watermark(path, partition).await?;
        if offset < mark.first_offset {
            return Err(ReadError::Log(LogError::Expired {
                partition,
                offset,
                first_offset: mark.first_offset,
            }));
        }
        if offset == head || limit == 0 {
            return Ok(batch);
        }
        let found = match tailer.recent(offset) {
            Some(hit) => Some(hit),
            None => self.log.locate(path, partition, offset).await?,
        };
        let Some((mut seq, mut record)) = found else {
            return Ok(batch);
        };
        loop {
            let raw = match self.segment(path, &record).await {
                Ok(raw) => raw,
                Err(e) => {
                    let e = (self.log)
                        .expired_if_collected(path, partition, seq, batch.next_offset, e)
                        .await;
                    // Events read before the collector got there are still good.
                    return match e {
                        LogError::Expired { .. } if !batch.events.is_empty() => Ok(batch),
                        e => Err(e.into()),
                    };
                }
            };
            batch.extend_from(&record, &raw, limit, self.config.max_batch_bytes);
            // Stopped inside this record (limit or bytes), or reached the head.
            if batch.next_offset < record.next_offset() || batch.next_offset >= head {
                return Ok(batch);
            }
            seq += 1;
            record = match tailer.at_seq(seq) {
                Some(r) => r,
                None => match self.log.record(path, partition, seq).await? {
                    Some(r) => r,
                    None => return Ok(batch),
                },
            };
        }
    }

    /// A committed segment's lines: from the cache, or one fetch shared by
    /// every reader that wants it at the same time.
    async fn segment(
        &self,
        path: &crate::log::record::StreamPath,
        record: &CommitRecord,
    ) -> Result<Bytes, LogError> {
        let key = path.segment(&record.segment).to_string();
        if let Some(raw) = self.cache.get(&key) {
            return Ok(raw);
        }
        let cell = {
            let mut fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
            fetching.entry(key.clone()).or_default().clone()
        };
        // Removes the entry however this call ends, cancellation included.
        let _done = FetchDone {
            fetching: &self.fetching,
            key: &key,
            cell: &cell,
        };
        let fetched = cell
            .get_or_try_init(|| self.log.segment_bytes(path, record))
            .await
            .cloned();
        if let Ok(raw) = &fetched {
            self.cache.insert(&key, raw.clone());
        }
        fetched
    }
}

type Fetches = Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Bytes>>>>;

/// Drops a finished (or abandoned) fetch from the in-flight map.
struct FetchDone<'a> {
    fetching: &'a Fetches,
    key: &'a str,
    cell: &'a Arc<tokio::sync::OnceCell<Bytes>>,
}

impl Drop for FetchDone<'_> {
    fn drop(&mut self) {
        let mut fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        if fetching
            .get(self.key)
            .is_some_and(|c| Arc::ptr_eq(c, self.cell))
        {
            fetching.remove(self.key);
        }
    }
}
