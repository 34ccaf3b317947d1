//! One stream's buffer and its committer: two tasks joined by a one-slot queue.
//!
//! The accumulator appends each submission's events, contiguous, to the
//! current segment and seals it on `max_bytes`, `max_events` or `max_age`.
//! The committer compresses, appends to the log (retrying the same segment on
//! the same partition until it lands, so a retry never commits twice), then
//! acks every waiter with its offsets and releases the budget. One segment
//! commits while the next fills.

use std::sync::Arc;
use std::time::Instant as StdInstant;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};

use super::budget::Budget;
use super::{Ack, CommitFailed, Submission};
use crate::config::BatchConfig;
use crate::log::partition::PartitionChooser;
use crate::log::record::StreamPath;
use crate::log::segment::{Segment, SegmentBuilder};
use crate::log::{Log, LogError};

/// Segments smaller than this are compressed inline, larger on a blocking thread.
const INLINE_SEAL_BYTES: usize = 256 * 1024;

struct Waiter {
    index: u64,
    ack: oneshot::Sender<Result<Ack, CommitFailed>>,
    received: StdInstant,
}

/// A buffer ready to commit.
struct Pending {
    builder: SegmentBuilder,
    waiters: Vec<Waiter>,
    reserved: usize,
}

pub(super) struct StreamTask {
    pub metrics: StreamMetrics,
    pub tenant: String,
    pub name: String,
    pub path: StreamPath,
    pub log: Arc<Log>,
    pub config: BatchConfig,
    pub budget: Arc<Budget>,
    pub chooser: PartitionChooser,
    /// Turns true on shutdown: stop taking submissions, flush, return.
    pub closing: watch::Receiver<bool>,
    /// Turns true when the gateway starts draining: from then on every buffer
    /// is sealed at once (`max_age` 0), so waiting requests get their acks.
    pub hurry: watch::Receiver<bool>,
    pub on_commit: Option<super::CommitHook>,
}

impl StreamTask {
    /// Run until `rx` closes, then flush what is left and return when committed.
    pub async fn run(self, mut rx: mpsc::Receiver<Submission>) {
        let mut closing = self.closing.clone();
        let mut hurry = self.hurry.clone();
        let mut max_age = self.config.max_age();
        let (tx_commit, rx_commit) = mpsc::channel::<Pending>(1);
        let committer = tokio::spawn(Committer::from(&self).run(rx_commit));
        let mut pending = self.empty();
        let mut deadline: Option<Instant> = None;
        loop {
            let next = tokio::select! {
                sub = rx.recv() => sub,
                // Closing the queue fails new sends; what is queued still
                // arrives, then `recv` ends the loop.
                _ = async { closing.wait_for(|c| *c).await.map(|_| ()) }, if !rx.is_closed() => {
                    rx.close();
                    continue;
                }
                _ = async { hurry.wait_for(|h| *h).await.map(|_| ()) }, if !max_age.is_zero() => {
                    max_age = std::time::Duration::ZERO;
                    deadline = deadline.map(|_| Instant::now());
                    continue;
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    deadline = None;
                    self.seal(&mut pending, &tx_commit).await;
                    continue;
                }
            };
            let Some(sub) = next else { break };
            if !pending.builder.is_empty()
                && pending.builder.count() + sub.events.len() as u64 > self.config.max_events as u64
            {
                deadline = None;
                self.seal(&mut pending, &tx_commit).await;
            }
            add(&mut pending, sub);
            deadline.get_or_insert_with(|| Instant::now() + max_age);
            if pending.builder.len() >= self.config.max_bytes
                || pending.builder.count() >= self.config.max_events as u64
            {
                deadline = None;
                self.seal(&mut pending, &tx_commit).await;
            }
        }
        self.seal(&mut pending, &tx_commit).await;
        drop(tx_commit);
        let _ = committer.await;
    }

    fn empty(&self) -> Pending {
        Pending {
            builder: SegmentBuilder::with_capacity(self.config.max_bytes.min(1 << 20)),
            waiters: Vec::new(),
            reserved: 0,
        }
    }

    async fn seal(&self, pending: &mut Pending, tx: &mpsc::Sender<Pending>) {
        if pending.builder.is_empty() {
            return;
        }
        let full = std::mem::replace(pending, self.empty());
        // A closed committer only happens if it panicked; its waiters then see
        // their ack channel close and answer 503.
        let _ = tx.send(full).await;
    }
}

fn add(pending: &mut Pending, sub: Submission) {
    let index = pending.builder.count();
    for event in &sub.events {
        pending.builder.push(sub.at, event);
    }
    pending.reserved += sub.reserved;
    if let Some(ack) = sub.ack {
        pending.waiters.push(Waiter {
            index,
            ack,
            received: sub.received,
        });
    }
}

struct Committer {
    on_commit: Option<super::CommitHook>,
    tenant: String,
    name: String,
    path: StreamPath,
    log: Arc<Log>,
    config: BatchConfig,
    budget: Arc<Budget>,
    chooser: PartitionChooser,
    metrics: StreamMetrics,
}

impl From<&StreamTask> for Committer {
    fn from(t: &StreamTask) -> Self {
        Committer {
            on_commit: t.on_commit.clone(),
            tenant: t.tenant.clone(),
            name: t.name.clone(),
            path: t.path.clone(),
            log: t.log.clone(),
            config: t.config.clone(),
            budget: t.budget.clone(),
            chooser: t.chooser.clone(),
            metrics: t.metrics.clone(),
        }
    }
}

impl Committer {
    async fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
        while let Some(p) = rx.recv().await {
            let (reserved, events) = (p.reserved, p.builder.count() as usize);
            self.commit(p).await;
            self.budget.release(reserved, events);
        }
    }

    async fn commit(&mut self, p: Pending) {
        let started = StdInstant::now();
        let segment = match seal(p.builder, self.config.zstd_level).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(stream = %self.name, error = %e, "cannot compress segment");
                return fail(p.waiters, CommitFailed::Internal);
            }
        };
        let name = ulid::Ulid::new().to_string().to_ascii_lowercase();
        let mut backoff = std::time::Duration::from_millis(50);
        let mut partition = self.chooser.current();
        let appended = loop {
            match self
                .log
                .append(&self.path, partition, &segment, &name)
                .await
            {
                Ok(a) => break a,
                Err(e @ LogError::Corrupt { .. }) => {
                    // The record at our seq is someone else's and unreadable:
                    // ours did not land there, so another partition is safe.
                    tracing::error!(stream = %self.name, partition, error = %e, "partition unusable; moving");
                    self.chooser.skip();
                    partition = self.chooser.current();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                }
                Err(e) => {
                    // Same segment, same partition: a retry finds its own record.
                    tracing::error!(stream = %self.name, error = %e, "commit failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                }
            }
        };
        self.chooser.observe(appended.conflicts);
        if let Some(hook) = &self.on_commit {
            hook(&self.tenant, &self.name, appended.partition);
        }
        self.record_metrics(&segment, appended.conflicts, started);
        for w in p.waiters {
            self.metrics
                .ack_latency
                .record(w.received.elapsed().as_secs_f64());
            let _ = w.ack.send(Ok(Ack {
                partition: appended.partition,
                first_offset: appended.first_offset + w.index,
            }));
        }
    }

    fn record_metrics(&self, segment: &Segment, conflicts: u32, started: StdInstant) {
        let m = &self.metrics;
        m.committed.increment(1);
        m.conflicts.increment(u64::from(conflicts));
        m.flush.record(started.elapsed().as_secs_f64());
        m.segment_bytes.record(segment.data.len() as f64);
    }
}

/// A stream's commit-side metrics, registered once (under its labels).
#[derive(Clone)]
pub(super) struct StreamMetrics {
    committed: metrics::Counter,
    conflicts: metrics::Counter,
    ack_latency: metrics::Histogram,
    flush: metrics::Histogram,
    segment_bytes: metrics::Histogram,
}

impl StreamMetrics {
    pub fn new(tenant: &str, stream: &str) -> StreamMetrics {
        let labels = [
            ("tenant", tenant.to_string()),
            ("stream", stream.to_string()),
        ];
        StreamMetrics {
            committed: metrics::counter!("sluice_segments_committed_total", &labels),
            conflicts: metrics::counter!("sluice_commit_conflicts_total", &labels),
            ack_latency: metrics::histogram!("sluice_ack_latency_seconds"),
            flush: metrics::histogram!("sluice_flush_duration_seconds"),
            segment_bytes: metrics::histogram!("sluice_segment_bytes"),
        }
    }
}

fn fail(waiters: Vec<Waiter>, why: CommitFailed) {
    for w in waiters {
        let _ = w.ack.send(Err(why));
    }
}

async fn seal(builder: SegmentBuilder, level: i32) -> std::io::Result<Segment> {
    let sealed = if builder.len() <= INLINE_SEAL_BYTES {
        builder.seal(level)
    } else {
        tokio::task::spawn_blocking(move || builder.seal(level))
            .await
            .map_err(std::io::Error::other)?
    };
    sealed?.ok_or_else(|| std::io::Error::other("empty segment"))
}
