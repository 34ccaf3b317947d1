//! One tailer per (stream, partition): follows the log forward and publishes
//! its head, so every reader of that partition on this gateway shares one
//! poll loop.
//!
//! Owns the poll cadence (fast while records arrive, backing off to
//! `idle_poll_max_ms` when idle, woken at once by this gateway's own
//! commits) and a bounded index of recent records, so readers that follow
//! the head find their record without bisecting the log. While idle it
//! looks at the low watermark now and then, so a tailer whose next seq a
//! garbage collector deleted (it can only happen to one that fell more than
//! the retention behind) moves on instead of waiting there forever.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::log::record::{CommitRecord, StreamPath};
use crate::log::Log;

/// Recent records kept per tailer.
const INDEX_RECORDS: usize = 1024;
/// An idle tailer reads the watermark once per this many empty polls (one
/// HEAD per ~16 s per idle partition at the default `idle_poll_max_ms`).
const WATERMARK_EVERY_IDLE_POLLS: u32 = 16;

/// How a tailer polls.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    pub poll: Duration,
    pub idle_max: Duration,
    /// A tailer nobody used for this long stops.
    pub linger: Duration,
}

#[derive(Debug)]
pub struct Tailer {
    pub partition: u32,
    path: StreamPath,
    head: watch::Sender<Option<u64>>,
    index: Mutex<VecDeque<(u64, CommitRecord)>>,
    wake: Notify,
    /// When a reader last used this tailer, and whether it has stopped; both
    /// under one lock, so a tailer never stops while being handed out.
    used: Mutex<(Instant, bool)>,
}

impl Tailer {
    pub fn new(path: StreamPath, partition: u32) -> Arc<Tailer> {
        Arc::new(Tailer {
            partition,
            path,
            head: watch::channel(None).0,
            index: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            used: Mutex::new((Instant::now(), false)),
        })
    }

    pub fn path(&self) -> &StreamPath {
        &self.path
    }

    /// Offset one past the last committed event, once known.
    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.0 = Instant::now();
        self.head.subscribe()
    }

    /// Poll now (this gateway just committed to the partition).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Mark a use; `false` when the tailer has already stopped (start a new one).
    pub fn touch(&self) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.0 = Instant::now();
        !used.1
    }

    /// The recent record holding `offset`, with its seq.
    pub fn recent(&self, offset: u64) -> Option<(u64, CommitRecord)> {
        let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let i = index.partition_point(|(_, r)| r.next_offset() <= offset);
        index.get(i).filter(|(_, r)| r.contains(offset)).cloned()
    }

    /// The recent record at `seq`.
    pub fn at_seq(&self, seq: u64) -> Option<CommitRecord> {
        let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let first = index.front()?.0;
        index
            .get(usize::try_from(seq.checked_sub(first)?).ok()?)
            .map(|(_, r)| r.clone())
    }

    fn remember(&self, seq: u64, record: CommitRecord) {
        let next = record.next_offset();
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if index.len() == INDEX_RECORDS {
            index.pop_front();
        }
        index.push_back((seq, record));
        drop(index);
        self.head.send_replace(Some(next));
    }

    /// Records below `first_seq` are gone: forget them, and publish the
    /// watermark's offset as the head if the known head was below it.
    fn skip_to(&self, first_offset: u64) {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.head.send_if_modified(|h| match *h {
            Some(known) if known >= first_offset => false,
            _ => {
                *h = Some(first_offset);
                true
            }
        });
    }

    /// Stop if nobody used this tailer for `linger` and nobody waits on it.
    fn stop_if_unused(&self, linger: Duration) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if used.0.elapsed() > linger && self.head.receiver_count() == 0 {
            used.1 = true;
        }
        used.1
    }

    pub fn stopped(&self) -> bool {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    /// Follow the log until nobody has used this tailer for `linger`.
    pub async fn run(self: Arc<Self>, log: Arc<Log>, cadence: Cadence) {
        let mut next_seq = loop {
            match log.head(&self.path, self.partition).await {
                Ok(h) => {
                    self.head.send_replace(Some(h.next_offset));
                    break h.next_seq;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tailer cannot find the head; retrying");
                    tokio::time::sleep(cadence.idle_max).await;
                }
            }
        };
        let mut delay = cadence.poll;
        let mut empty_polls = 0u32;
        loop {
            match log.record(&self.path, self.partition, next_seq).await {
                Ok(Some(record)) => {
                    self.remember(next_seq, record);
                    next_seq += 1;
                    delay = cadence.poll;
                    empty_polls = 0;
                    continue;
                }
                Ok(None) => {
                    empty_polls = empty_polls.wrapping_add(1);
                    if empty_polls % WATERMARK_EVERY_IDLE_POLLS == 0 {
                        match log.refresh_watermark(&self.path, self.partition).await {
                            Ok(w) if w.first_seq > next_seq => {
                                tracing::warn!(partition = self.partition, from = next_seq, to = w.first_seq, "tailer's next record was garbage collected; moving to the watermark");
                                self.skip_to(w.first_offset);
                                next_seq = w.first_seq;
                                continue;
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "tailer cannot read the watermark")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "tailer poll failed"),
            }
            if self.stop_if_unused(cadence.linger) {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.wake.notified() => {}
            }
            delay = (delay * 2).min(cadence.idle_max);
        }
    }
}
