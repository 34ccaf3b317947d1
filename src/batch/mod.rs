//! Batching: per-stream buffers, flush triggers and the memory budget.
//!
//! Owns the path from validated events to committed offsets. A request's
//! events are submitted together and land contiguous in one segment; a
//! durable submitter gets its partition and first offset once the segment is
//! committed. This module must not parse HTTP or events.

mod budget;
mod stream;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{BatchConfig, StreamsConfig};
use crate::log::partition::PartitionChooser;
use crate::log::segment::ReceivedAt;
use crate::log::Log;
use crate::tenants::StreamSettings;
pub use budget::Budget;

/// Submissions queued per stream before submitters wait.
const STREAM_QUEUE: usize = 1024;

/// Where a durable submission's events were committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub partition: u32,
    pub first_offset: u64,
}

/// Why a durable submission got no ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommitFailed {
    #[error("the segment could not be built")]
    Internal,
}

/// Why a submission was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("memory budget of {limit} buffered bytes is full")]
    Overloaded { limit: usize },
    #[error("this gateway already serves {limit} streams (streams.max_streams)")]
    TooManyStreams { limit: usize },
    #[error("the gateway is shutting down")]
    Draining,
}

/// One request's accepted events.
pub struct Submission {
    events: Vec<Bytes>,
    at: ReceivedAt,
    reserved: usize,
    received: Instant,
    ack: Option<oneshot::Sender<Result<Ack, CommitFailed>>>,
}

/// Where a submission goes: a tenant's stream and the settings it runs with.
#[derive(Clone, Copy)]
pub struct Dest<'a> {
    pub tenant: &'a str,
    pub stream: &'a str,
    pub settings: &'a Arc<StreamSettings>,
}

/// A pending durable ack.
pub type AckReceiver = oneshot::Receiver<Result<Ack, CommitFailed>>;

/// All streams' buffers of one gateway.
pub struct Batcher {
    log: Arc<Log>,
    streams_config: StreamsConfig,
    budget: Arc<Budget>,
    /// Running streams by tenant, then name; `None` once shut down.
    streams: RwLock<Option<Streams>>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    closing: watch::Sender<bool>,
    hurry: watch::Sender<bool>,
    on_commit: Option<CommitHook>,
}

/// Called with (tenant, stream, partition) after each commit (wakes local readers).
pub type CommitHook = Arc<dyn Fn(&str, &str, u32) + Send + Sync>;

#[derive(Default)]
struct Streams {
    by_tenant: HashMap<String, HashMap<String, Arc<StreamEntry>>>,
    count: usize,
}

impl Streams {
    fn get(&self, tenant: &str, stream: &str) -> Option<&Arc<StreamEntry>> {
        self.by_tenant.get(tenant)?.get(stream)
    }
}

/// A running stream: its queue and its metric handles (registered once).
struct StreamEntry {
    tx: mpsc::Sender<Submission>,
    accepted: metrics::Counter,
    bytes: metrics::Counter,
}

/// Room reserved for one submission; see [`Batcher::reserve`].
pub struct Slot {
    permit: Option<mpsc::OwnedPermit<Submission>>,
    budget: Arc<Budget>,
    reserved: usize,
    count: usize,
    entry: Arc<StreamEntry>,
}

impl Slot {
    /// Queue the events the slot was reserved for; with `durable`, the
    /// receiver yields their offsets once committed.
    pub fn send(
        mut self,
        events: Vec<Bytes>,
        at: ReceivedAt,
        durable: bool,
    ) -> Option<AckReceiver> {
        let permit = self.permit.take()?;
        let (ack, rx) = match durable {
            true => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let bytes: usize = events.iter().map(Bytes::len).sum();
        self.entry.accepted.increment(events.len() as u64);
        self.entry.bytes.increment(bytes as u64);
        permit.send(Submission {
            events,
            at,
            reserved: self.reserved,
            received: Instant::now(),
            ack,
        });
        rx
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.permit.is_some() {
            self.budget.release(self.reserved, self.count);
        }
    }
}

/// Bytes a submission holds in memory: event bytes plus envelope overhead.
/// The `(tenant, stream)` labels of a destination's metrics. Tenants are
/// configured; a stream that is not declared (auto-created on first write)
/// folds into `_other`, so a client's free text never becomes a label value.
fn labels(dest: Dest<'_>) -> (String, String) {
    let stream = match dest.settings.declared {
        true => dest.stream,
        false => OTHER,
    };
    (dest.tenant.to_string(), stream.to_string())
}

/// The stream label of streams that are not declared.
pub const OTHER: &str = "_other";

fn footprint(events: &[Bytes]) -> usize {
    events.iter().map(|e| e.len() + 48).sum()
}

impl Batcher {
    /// `config` gives the memory budget; each stream batches by its own settings.
    pub fn new(log: Arc<Log>, config: &BatchConfig, streams: StreamsConfig) -> Self {
        Batcher {
            log,
            budget: Arc::new(Budget::new(config.memory_budget_bytes)),
            streams_config: streams,
            streams: RwLock::new(Some(Streams::default())),
            tasks: std::sync::Mutex::new(Vec::new()),
            closing: watch::channel(false).0,
            hurry: watch::channel(false).0,
            on_commit: None,
        }
    }

    /// Call `hook` after every commit.
    pub fn on_commit(mut self, hook: CommitHook) -> Self {
        self.on_commit = Some(hook);
        self
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Take room for `events` on `dest`: a place in the stream's queue
    /// (waiting until `deadline` at most, then `Overloaded`) and their share
    /// of the memory budget. `held` is the bytes the events keep alive until
    /// they are copied into a segment (the decoded body they are slices of).
    /// Nothing is queued yet: a request that must put events on two streams
    /// reserves both first, so it never ends half queued. A slot dropped
    /// unsent gives everything back, so a client that goes away leaks nothing.
    pub async fn reserve(
        &self,
        dest: Dest<'_>,
        events: &[Bytes],
        held: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Slot, SubmitError> {
        let entry = self.entry(dest)?;
        let overloaded = SubmitError::Overloaded {
            limit: self.budget.limit(),
        };
        let permit = match tokio::time::timeout_at(deadline, entry.tx.clone().reserve_owned()).await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(SubmitError::Draining),
            Err(_) => return Err(overloaded),
        };
        let reserved = held.max(footprint(events));
        if !self.budget.try_reserve(reserved, events.len()) {
            return Err(overloaded);
        }
        Ok(Slot {
            permit: Some(permit),
            budget: self.budget.clone(),
            reserved,
            count: events.len(),
            entry,
        })
    }

    /// Count events that were not accepted (`outcome`), under the stream's
    /// metric label.
    pub fn count(&self, dest: Dest<'_>, outcome: &'static str, n: usize) {
        if n == 0 {
            return;
        }
        let (tenant, stream) = labels(dest);
        metrics::counter!("sluice_events_total", "tenant" => tenant, "stream" => stream, "outcome" => outcome)
            .increment(n as u64);
    }

    fn entry(&self, dest: Dest<'_>) -> Result<Arc<StreamEntry>, SubmitError> {
        {
            let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
            let map = streams.as_ref().ok_or(SubmitError::Draining)?;
            if let Some(s) = map.get(dest.tenant, dest.stream) {
                return Ok(s.clone());
            }
        }
        let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
        let map = streams.as_mut().ok_or(SubmitError::Draining)?;
        if let Some(s) = map.get(dest.tenant, dest.stream) {
            return Ok(s.clone());
        }
        if map.count >= self.streams_config.max_streams {
            return Err(SubmitError::TooManyStreams {
                limit: self.streams_config.max_streams,
            });
        }
        let entry = Arc::new(self.start_stream(dest));
        map.by_tenant
            .entry(dest.tenant.to_string())
            .or_default()
            .insert(dest.stream.to_string(), entry.clone());
        map.count += 1;
        Ok(entry)
    }

    fn start_stream(&self, dest: Dest<'_>) -> StreamEntry {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let (tenant, label) = labels(dest);
        let task = stream::StreamTask {
            metrics: stream::StreamMetrics::new(&tenant, &label),
            tenant: dest.tenant.to_string(),
            name: dest.stream.to_string(),
            path: self.log.stream(dest.tenant, dest.stream),
            log: self.log.clone(),
            config: dest.settings.batch.clone(),
            budget: self.budget.clone(),
            chooser: PartitionChooser::new(self.log.writer(), dest.settings.partitions),
            closing: self.closing.subscribe(),
            hurry: self.hurry.subscribe(),
            on_commit: self.on_commit.clone(),
        };
        let handle = tokio::spawn(task.run(rx));
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
        StreamEntry {
            tx,
            accepted: metrics::counter!("sluice_events_total", "tenant" => tenant.clone(), "stream" => label.clone(), "outcome" => "accepted"),
            bytes: metrics::counter!("sluice_ingest_bytes_total", "tenant" => tenant, "stream" => label),
        }
    }

    /// Seal every buffer now and from now on (the gateway is draining):
    /// requests still in flight get their acks without waiting `max_age`.
    pub fn hurry(&self) {
        self.hurry.send_replace(true);
    }

    /// Stop taking submissions, flush and commit everything buffered, and
    /// return once every stream's last segment is committed.
    pub async fn shutdown(&self) {
        self.streams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.closing.send_replace(true);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }
}
