//! The log: segments and commit records in the bucket (DESIGN §2).
//!
//! Owns the commit protocol (segment PUT, then a create-only PUT of the next
//! sequenced record, re-reading the winner on `AlreadyExists`), head discovery
//! (galloping probe from the low watermark, never a full listing), the low
//! watermarks themselves ([`low`]) and reads from an offset. The public
//! surface is [`Log::append`], [`Log::head`], [`Log::read`] and the
//! watermark calls; batching, HTTP, partition choice and deciding what to
//! delete (`gc`) live elsewhere.

pub mod committed;
mod head;
pub mod low;
pub mod partition;
mod read;
pub mod record;
pub mod retry;
pub mod segment;
pub mod window;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use object_store::{ObjectStoreExt, PutPayload};

use crate::store::Store;
pub use head::{last_dense, last_dense_from};
pub use low::{Raised, Watermark};
pub use read::ReadBatch;
use record::{CommitRecord, StreamPath};
use retry::{retry, RetryPolicy};
use segment::Segment;

/// Log failures the caller must turn into a response (never into a success).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The store kept failing until the deadline; nothing was committed by this call.
    #[error("object store unavailable during {op}: {source}")]
    Unavailable {
        op: &'static str,
        source: object_store::Error,
    },
    /// A commit record in the store is not what this version writes.
    #[error("corrupt commit record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// A committed record points at a segment that is gone or unreadable.
    #[error("segment {key} of a committed record cannot be read: {reason}")]
    BadSegment { key: String, reason: String },
    /// The offset is below the partition's low watermark: retention deleted it.
    #[error("offset {offset} of partition {partition} has expired (deleted by retention); the first retained offset is {first_offset}")]
    Expired {
        partition: u32,
        offset: u64,
        first_offset: u64,
    },
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub partition: u32,
    pub seq: u64,
    pub first_offset: u64,
    pub count: u64,
    /// Lost races to other writers before this commit won.
    pub conflicts: u32,
}

/// What a writer knows of a partition's end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Head {
    /// Seq the next record will be created at.
    pub next_seq: u64,
    /// Offset the next record will start at.
    pub next_offset: u64,
}

type HeadKey = (StreamPath, u32);

/// Times one append re-sends its segment under a new name because the seq
/// it committed at had been garbage collected (a head learned long ago).
const MAX_REWRITES: u32 = 4;

/// How a commit attempt ended.
enum Committed {
    Done(Appended),
    /// The record landed below the watermark (the writer's head was older
    /// than a garbage collection): nobody will read it; commit again.
    BelowWatermark {
        seq: u64,
    },
}

/// One gateway's handle on the shared log.
#[derive(Debug)]
pub struct Log {
    store: Store,
    writer: String,
    policy: RetryPolicy,
    heads: Mutex<HashMap<HeadKey, Arc<tokio::sync::Mutex<Option<Head>>>>>,
    /// Each partition's watermark as last seen ([`low`]).
    lows: Mutex<HashMap<HeadKey, Watermark>>,
}

impl Log {
    pub fn new(store: Store, writer: impl Into<String>, policy: RetryPolicy) -> Self {
        Log {
            store,
            writer: writer.into(),
            policy,
            heads: Mutex::new(HashMap::new()),
            lows: Mutex::new(HashMap::new()),
        }
    }

    pub fn writer(&self) -> &str {
        &self.writer
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// How this log retries store calls (jobs that share its store use it too).
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    pub fn stream(&self, tenant: &str, stream: &str) -> StreamPath {
        StreamPath::new(&self.store.root, tenant, stream)
    }

    fn head_slot(&self, key: HeadKey) -> Arc<tokio::sync::Mutex<Option<Head>>> {
        let mut heads = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        heads.entry(key).or_default().clone()
    }

    /// Store `segment` and commit it as the next record of `partition`.
    ///
    /// Idempotent per segment: if an earlier attempt's record PUT landed but
    /// reported an error, the retry finds its own record and returns it.
    ///
    /// Every commit checks the watermark after its record landed (one
    /// HEAD): a writer whose head is older than a garbage collection could
    /// otherwise re-create a deleted seq below the watermark, where no
    /// reader looks, and ack events nobody can read. Such a record is
    /// removed and the segment committed again at the real head, under a
    /// new name (a collector may be deleting the old one).
    pub async fn append(
        &self,
        stream: &StreamPath,
        partition: u32,
        segment: &Segment,
        segment_name: &str,
    ) -> Result<Appended, LogError> {
        let mut name = segment_name.to_string();
        for rewrite in 1..=MAX_REWRITES {
            let relative = format!(
                "data/{}/{}-{name}.ndjson.zst",
                segment.min_received_at.hour_partition(),
                self.writer
            );
            let key = stream.segment(&relative);
            let payload = PutPayload::from_bytes(segment.data.clone());
            retry(self.policy, "put_segment", || {
                self.store.inner.put(&key, payload.clone())
            })
            .await
            .map_err(|source| LogError::Unavailable {
                op: "put_segment",
                source,
            })?;
            match self.commit(stream, partition, segment, relative).await? {
                Committed::Done(appended) => return Ok(appended),
                Committed::BelowWatermark { seq } => {
                    tracing::warn!(stream = %stream.base(), partition, seq, "commit landed below the low watermark (a head older than a garbage collection); committing again at the head");
                    name = format!("{segment_name}-rewrite{rewrite}");
                }
            }
        }
        Err(self.watermark_moving(stream, partition))
    }

    async fn commit(
        &self,
        stream: &StreamPath,
        partition: u32,
        segment: &Segment,
        relative: String,
    ) -> Result<Committed, LogError> {
        let slot = self.head_slot((stream.clone(), partition));
        let mut guard = slot.lock().await;
        let mut head = match *guard {
            Some(h) => h,
            None => self.discover(stream, partition).await?,
        };
        // Cache it now: if the record PUT below lands but reports failure, a
        // retry of this segment must try the same seq and find its own record.
        *guard = Some(head);
        let mut conflicts = 0;
        loop {
            let record = CommitRecord {
                segment: relative.clone(),
                first_offset: head.next_offset,
                count: segment.count,
                bytes: segment.raw_len,
                stored_bytes: segment.data.len() as u64,
                min_received_at: segment.min_received_at.as_str().to_string(),
                max_received_at: segment.max_received_at.as_str().to_string(),
                writer: self.writer.clone(),
            };
            let landed = match self
                .create_record(stream, partition, head.next_seq, &record)
                .await
            {
                Ok(()) => record,
                Err(source @ object_store::Error::AlreadyExists { .. }) => {
                    let Some(winner) = self.record(stream, partition, head.next_seq).await? else {
                        // Deleted since it was reported: a collector passed this seq.
                        if self
                            .below_watermark(stream, partition, head.next_seq)
                            .await?
                        {
                            head = self.discover(stream, partition).await?;
                            *guard = Some(head);
                            continue;
                        }
                        // Not there (yet): S3 answers 409 ConditionalRequestConflict,
                        // which object_store reports as `AlreadyExists`, while
                        // another create of the key is in flight, perhaps this
                        // segment's own earlier attempt that timed out here and
                        // still lands. Retry this seq later; never another
                        // partition, or the segment could be committed twice.
                        return Err(LogError::Unavailable {
                            op: "put_record",
                            source,
                        });
                    };
                    if stem(&winner.segment) != stem(&relative) {
                        conflicts += 1;
                        head = advance(head, &winner);
                        *guard = Some(head);
                        continue;
                    }
                    // Our own earlier attempt landed (perhaps under a name an
                    // earlier rewrite gave it): the commit is done.
                    winner
                }
                Err(source) => {
                    // The head stays where it was: a retry re-creates at the same seq.
                    return Err(LogError::Unavailable {
                        op: "put_record",
                        source,
                    });
                }
            };
            let seq = head.next_seq;
            if self.below_watermark(stream, partition, seq).await? {
                self.remove_stray(stream, partition, seq, &landed).await;
                *guard = None;
                return Ok(Committed::BelowWatermark { seq });
            }
            *guard = Some(advance(head, &landed));
            return Ok(Committed::Done(
                self.appended(partition, seq, &landed, conflicts),
            ));
        }
    }

    /// Is `seq` below the partition's watermark in the store, now?
    async fn below_watermark(
        &self,
        stream: &StreamPath,
        partition: u32,
        seq: u64,
    ) -> Result<bool, LogError> {
        let w = self.refresh_watermark(stream, partition).await?;
        Ok(seq < w.first_seq)
    }

    /// Delete a record this writer created below the watermark, and its
    /// segment: nobody reads there, and the segment is sent again under a
    /// new name. Best effort: what stays is garbage no reader sees.
    async fn remove_stray(
        &self,
        stream: &StreamPath,
        partition: u32,
        seq: u64,
        record: &CommitRecord,
    ) {
        for key in [
            stream.record(partition, seq),
            stream.segment(&record.segment),
        ] {
            let deleted = retry(self.policy, "delete_stray", || {
                self.store.inner.delete(&key)
            })
            .await;
            if let Err(e) = deleted.or_else(|e| match e {
                object_store::Error::NotFound { .. } => Ok(()),
                e => Err(e),
            }) {
                tracing::warn!(key = %key, error = %e, "cannot delete a record left below the watermark");
            }
        }
    }

    fn appended(&self, partition: u32, seq: u64, r: &CommitRecord, conflicts: u32) -> Appended {
        Appended {
            partition,
            seq,
            first_offset: r.first_offset,
            count: r.count,
            conflicts,
        }
    }

    async fn create_record(
        &self,
        stream: &StreamPath,
        partition: u32,
        seq: u64,
        record: &CommitRecord,
    ) -> Result<(), object_store::Error> {
        let key = stream.record(partition, seq);
        let body = serde_json::to_vec(record).map_err(|e| object_store::Error::Generic {
            store: "sluice",
            source: Box::new(e),
        })?;
        let payload = PutPayload::from(body);
        retry::create(&*self.store.inner, self.policy, "put_record", &key, payload).await
    }

    /// How many partitions `stream` has in the store: at least `at_least`,
    /// more when `log/` (or `low/`: a partition whose records garbage
    /// collection all deleted has only its watermarks) holds a higher one.
    /// One listing of each; the error names what was listed.
    pub async fn partitions(
        &self,
        stream: &StreamPath,
        at_least: u32,
    ) -> Result<u32, (String, object_store::Error)> {
        let mut count = at_least;
        for dir in ["log", "low"] {
            let prefix =
                object_store::path::Path::from(format!("{}/{dir}", stream.base().as_ref()));
            let listing = match self.store.inner.list_with_delimiter(Some(&prefix)).await {
                Ok(l) => l,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(source) => return Err((prefix.to_string(), source)),
            };
            let highest = listing
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename()?.parse::<u32>().ok())
                .max();
            count = highest.map_or(count, |h| count.max(h.saturating_add(1)));
        }
        Ok(count)
    }

    /// The record at `seq`, or `None` when it does not exist (yet).
    pub async fn record(
        &self,
        stream: &StreamPath,
        partition: u32,
        seq: u64,
    ) -> Result<Option<CommitRecord>, LogError> {
        let key = stream.record(partition, seq);
        let got = retry::get_if_present(&*self.store.inner, self.policy, "get_record", &key).await;
        let body = match got {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(source) => {
                return Err(LogError::Unavailable {
                    op: "get_record",
                    source,
                })
            }
        };
        CommitRecord::parse(&body)
            .map(Some)
            .map_err(|reason| LogError::Corrupt {
                key: key.to_string(),
                reason,
            })
    }

    /// The partition's current head, found in O(log n) requests.
    ///
    /// A writer that knows no head yet starts from this one. A head it already
    /// knows is never moved here (only the commit path moves it), so a
    /// segment retried after an error still finds its own record.
    pub async fn head(&self, stream: &StreamPath, partition: u32) -> Result<Head, LogError> {
        let slot = self.head_slot((stream.clone(), partition));
        let mut guard = slot.lock().await;
        let head = self.discover(stream, partition).await?;
        guard.get_or_insert(head);
        Ok(head)
    }
}

/// A segment key without its extension and rewrite suffix (`-rewrite1`,
/// see [`Log::append`]): the same segment sent again has the same stem.
fn stem(relative: &str) -> &str {
    let base = relative.strip_suffix(".ndjson.zst").unwrap_or(relative);
    match base.rsplit_once("-rewrite") {
        Some((stem, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => stem,
        _ => base,
    }
}

fn advance(head: Head, record: &CommitRecord) -> Head {
    Head {
        next_seq: head.next_seq + 1,
        next_offset: record.next_offset(),
    }
}
