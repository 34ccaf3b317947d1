//! Consumer-group checkpoints: one dense, create-only sequence per partition.
//!
//! Owns the key layout `consumers/{group}/{partition:04}/{seq:020}.json`, its
//! JSON shape, finding the latest checkpoint (the log's galloping probe,
//! [`crate::log::last_dense`]) and advancing by creating the next seq
//! put-if-absent. It never overwrites or deletes a checkpoint, and it does
//! not read the log or write output (that is [`super`]'s job).

use object_store::path::Path;
use object_store::PutPayload;
use serde::{Deserialize, Serialize};

use super::ConsumeError;
use crate::log::last_dense;
use crate::log::record::StreamPath;
use crate::log::retry::{create, exists, get_if_present, RetryPolicy};
use crate::store::Store;

/// Reads of a refused checkpoint key that was empty, before its create is
/// called in doubt; pauses of 25, 50, 100, 200 ms: 375 ms in all.
const SETTLE_READS: u32 = 4;
const SETTLE_FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);

/// The stored form of one checkpoint object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The next offset the group reads in this partition.
    pub offset: u64,
    /// This checkpoint's seq (also its key's file name).
    pub seq: u64,
    /// When it was created (RFC 3339, UTC, milliseconds).
    pub committed_at: String,
    /// Id of the consumer run that created it.
    pub consumer: String,
}

/// Where a group stands in one partition, as read from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: u32,
    /// Seq the next checkpoint will be created at (0 when there is none).
    pub next_seq: u64,
    /// Offset to read from (0 when there is no checkpoint).
    pub offset: u64,
}

/// Someone else created the checkpoint this consumer meant to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub group: String,
    pub partition: u32,
    /// The seq that was taken.
    pub seq: u64,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "group {} partition {} was advanced by another consumer (checkpoint seq {} taken); \
             nothing was committed for it: run again to re-read from the new checkpoint",
            self.group, self.partition, self.seq
        )
    }
}

/// One group's checkpoints in one stream.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    store: Store,
    policy: RetryPolicy,
    group: String,
    base: Path,
}

impl Checkpoints {
    /// The group's checkpoints under `stream`. The group name must already be
    /// valid ([`super::check_name`]).
    pub fn new(store: Store, policy: RetryPolicy, stream: &StreamPath, group: &str) -> Self {
        let base = Path::from(format!("{}/consumers/{group}", stream.base().as_ref()));
        Checkpoints {
            store,
            policy,
            group: group.to_string(),
            base,
        }
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// Key of checkpoint `seq` of `partition`.
    pub fn key(&self, partition: u32, seq: u64) -> Path {
        Path::from(format!(
            "{}/{partition:04}/{seq:020}.json",
            self.base.as_ref()
        ))
    }

    async fn exists(&self, partition: u32, seq: u64) -> Result<bool, ConsumeError> {
        let key = self.key(partition, seq);
        exists(&*self.store.inner, self.policy, "head_checkpoint", &key)
            .await
            .map_err(|source| ConsumeError::Unavailable {
                op: "head_checkpoint",
                source,
            })
    }

    /// Checkpoint `seq` of `partition`, or `None` when it does not exist.
    pub async fn get(&self, partition: u32, seq: u64) -> Result<Option<Checkpoint>, ConsumeError> {
        let key = self.key(partition, seq);
        let got = get_if_present(&*self.store.inner, self.policy, "get_checkpoint", &key).await;
        let body = match got {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(source) => {
                return Err(ConsumeError::Unavailable {
                    op: "get_checkpoint",
                    source,
                })
            }
        };
        let corrupt = |reason: String| ConsumeError::CorruptCheckpoint {
            key: key.to_string(),
            reason,
        };
        let cp: Checkpoint = serde_json::from_slice(&body).map_err(|e| corrupt(e.to_string()))?;
        if cp.seq != seq {
            return Err(corrupt(format!("holds seq {} under seq {seq}", cp.seq)));
        }
        Ok(Some(cp))
    }

    /// The latest checkpoint of `partition` (`None`: there is none), found
    /// in O(log n) HEAD requests, then read once.
    pub async fn latest(&self, partition: u32) -> Result<Option<Checkpoint>, ConsumeError> {
        let Some(last) = last_dense(|seq| self.exists(partition, seq)).await? else {
            return Ok(None);
        };
        let cp =
            self.get(partition, last)
                .await?
                .ok_or_else(|| ConsumeError::CorruptCheckpoint {
                    key: self.key(partition, last).to_string(),
                    reason: "found by HEAD but not by GET".into(),
                })?;
        Ok(Some(cp))
    }

    /// The group's position in `partition`, from [`Checkpoints::latest`].
    pub async fn position(&self, partition: u32) -> Result<Position, ConsumeError> {
        let latest = self.latest(partition).await?;
        Ok(Position {
            partition,
            next_seq: latest.as_ref().map_or(0, |cp| cp.seq + 1),
            offset: latest.map_or(0, |cp| cp.offset),
        })
    }

    /// Create the checkpoint after `from` holding `offset`, put-if-absent.
    ///
    /// On `AlreadyExists` the checkpoint at the key decides: this consumer's
    /// own earlier attempt (a PUT that landed but reported an error) counts
    /// as done, anyone else's is a lost race ([`ConsumeError::Conflict`]).
    /// Nothing there is S3's 409 while another create of the key is in
    /// flight: it is read again for a while, and if it is still not there
    /// the outcome is unknown ([`ConsumeError::CheckpointInDoubt`]).
    pub async fn advance(
        &self,
        from: Position,
        offset: u64,
        consumer: &str,
        committed_at: String,
    ) -> Result<Checkpoint, ConsumeError> {
        let cp = Checkpoint {
            offset,
            seq: from.next_seq,
            committed_at,
            consumer: consumer.to_string(),
        };
        let key = self.key(from.partition, cp.seq);
        let body = serde_json::to_vec(&cp).map_err(|e| ConsumeError::CorruptCheckpoint {
            key: key.to_string(),
            reason: format!("cannot serialise the checkpoint: {e}"),
        })?;
        let payload = PutPayload::from(body);
        let put = create(
            &*self.store.inner,
            self.policy,
            "put_checkpoint",
            &key,
            payload,
        )
        .await;
        match put {
            Ok(_) => Ok(cp),
            Err(object_store::Error::AlreadyExists { .. }) => {
                match self.settled(from.partition, cp.seq).await? {
                    Some(t) if t.consumer == cp.consumer && t.offset == cp.offset => Ok(t),
                    None => Err(ConsumeError::CheckpointInDoubt {
                        group: self.group.clone(),
                        partition: from.partition,
                        seq: cp.seq,
                    }),
                    Some(_) => Err(ConsumeError::Conflict(Conflict {
                        group: self.group.clone(),
                        partition: from.partition,
                        seq: cp.seq,
                    })),
                }
            }
            Err(source) => Err(ConsumeError::Unavailable {
                op: "put_checkpoint",
                source,
            }),
        }
    }

    /// The checkpoint at `seq` once a create of it was refused: S3 answers
    /// 409 ConditionalRequestConflict, which object_store reports as
    /// `AlreadyExists`, while another create of the key is still in flight
    /// (perhaps this consumer's own earlier attempt), so an empty key is read
    /// again, `SETTLE_READS` times with a doubling pause, before `None`.
    async fn settled(&self, partition: u32, seq: u64) -> Result<Option<Checkpoint>, ConsumeError> {
        let mut pause = SETTLE_FIRST_PAUSE;
        for _ in 0..SETTLE_READS {
            if let Some(cp) = self.get(partition, seq).await? {
                return Ok(Some(cp));
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        self.get(partition, seq).await
    }
}
