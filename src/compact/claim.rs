//! Claims: who compacted which records of a partition's hour.
//!
//! Owns `compaction/dt=…/hr=…/{partition:04}/{first_seq:020}.json`. A claim
//! names the seq range `[first_seq, last_seq]` its table file covers and is
//! created put-if-absent before the file is written, so two runs racing on
//! the same records agree on one range. Claims of a partition's hour chain:
//! the next starts after the previous one's `last_seq`. Never overwritten.

use object_store::path::Path;
use object_store::PutPayload;
use serde::{Deserialize, Serialize};

use super::{CompactError, Hour};
use crate::log::record::StreamPath;
use crate::log::retry::{create, get_if_present, RetryPolicy};
use crate::store::Store;

/// One claimed range of records and what its table holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub first_seq: u64,
    pub last_seq: u64,
    /// Rows of its table (0: no file, the records held no event of the hour).
    pub events: u64,
    /// The run that created it.
    pub writer: String,
}

/// Claims of one partition's hour.
pub struct Claims<'a> {
    pub store: &'a Store,
    pub policy: RetryPolicy,
    pub dir: Path,
}

impl<'a> Claims<'a> {
    pub fn new(
        store: &'a Store,
        policy: RetryPolicy,
        stream: &StreamPath,
        hour: Hour,
        partition: u32,
    ) -> Self {
        let dir = Path::from(format!(
            "{}/compaction/{}/{partition:04}",
            stream.base().as_ref(),
            hour.partition()
        ));
        Claims { store, policy, dir }
    }

    fn key(&self, first_seq: u64) -> Path {
        Path::from(format!("{}/{first_seq:020}.json", self.dir.as_ref()))
    }

    /// First seqs of the existing claims, in order.
    pub async fn list(&self) -> Result<Vec<u64>, CompactError> {
        let mut seqs: Vec<u64> = crate::compact::list_names(self.store, self.policy, &self.dir)
            .await?
            .iter()
            .filter_map(|n| n.strip_suffix(".json")?.parse().ok())
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    pub async fn get(&self, first_seq: u64) -> Result<Claim, CompactError> {
        let key = self.key(first_seq);
        let body = get_if_present(&*self.store.inner, self.policy, "get_claim", &key)
            .await
            .map_err(|source| CompactError::Store {
                op: "get_claim",
                key: key.to_string(),
                source,
            })?;
        let body = body.ok_or_else(|| CompactError::Claim {
            key: key.to_string(),
            reason: "listed but not found".into(),
        })?;
        serde_json::from_slice(&body).map_err(|e| CompactError::Claim {
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    /// Create `claim`; `Ok(None)` when it is ours, `Ok(Some(theirs))` when
    /// another run claimed the same first seq first.
    pub async fn create(&self, claim: &Claim) -> Result<Option<Claim>, CompactError> {
        let key = self.key(claim.first_seq);
        let body = serde_json::to_vec(claim).map_err(|e| CompactError::Claim {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        match create(
            &*self.store.inner,
            self.policy,
            "put_claim",
            &key,
            PutPayload::from(body),
        )
        .await
        {
            Ok(()) => Ok(None),
            Err(object_store::Error::AlreadyExists { .. }) => {
                self.get(claim.first_seq).await.map(Some)
            }
            Err(source) => Err(CompactError::Store {
                op: "put_claim",
                key: key.to_string(),
                source,
            }),
        }
    }
}
