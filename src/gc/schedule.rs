//! The schedule inside `serve` (`[gc] enabled = true`): one gc run every
//! `gc.interval`, the first at a random point of the first interval (so
//! replicas started together spread out), until the gateway drains.
//!
//! Owns timing only. A run cut short by shutdown is simply dropped: gc is
//! safe to stop at any point (the next run finishes what it left).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Gc, Scope};
use crate::config::Config;
use crate::log::Log;

/// Start the schedule if `[gc] enabled`; it ends when `closing` turns true.
pub fn spawn(
    log: Arc<Log>,
    config: &Config,
    closing: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    if !config.gc.enabled {
        return None;
    }
    let gc = Gc::new(log, config);
    let interval = config.gc.interval();
    tracing::info!(interval = ?interval, "gc schedule on");
    Some(tokio::spawn(run(gc, interval, closing)))
}

async fn run(gc: Gc, interval: Duration, mut closing: watch::Receiver<bool>) {
    let mut next = Instant::now() + jitter(interval);
    let everything = Scope::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = closing.wait_for(|c| *c) => return,
        }
        next = Instant::now() + interval;
        let run = gc.run(&everything, chrono::Utc::now());
        let report = tokio::select! {
            r = run => r,
            _ = closing.wait_for(|c| *c) => return,
        };
        match report {
            Ok(r) => {
                let moved: usize = r.streams.iter().map(|s| s.partitions.len()).sum();
                let orphans: u64 = r.streams.iter().map(|s| s.orphans_deleted).sum();
                tracing::info!(
                    streams = r.streams.len(),
                    partitions_collected = moved,
                    orphans,
                    failed = r.failed(),
                    "gc run done"
                );
            }
            Err(e) => tracing::error!(error = %e, "gc run failed"),
        }
    }
}

/// A random point of `interval` (the ULID's random bits).
fn jitter(interval: Duration) -> Duration {
    let r = (ulid::Ulid::new().random() % 1_000_000) as u32;
    interval.mul_f64(f64::from(r) / 1_000_000.0)
}
