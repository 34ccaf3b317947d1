//! Orphan segments: objects under `data/` that no commit record names,
//! left by a gateway that died (or gave up) between its segment PUT and its
//! record. Readers never see them; this deletes them.
//!
//! The work is bounded: hours of `data/dt=…/hr=…` are checked once, oldest
//! first, and a cursor object (`gc/orphans.json`, advisory: a lost or stale
//! update only means an hour is checked again) remembers the first hour not
//! checked yet. An hour is checked once it ended `gc.lateness +
//! gc.orphan_grace` ago. Within it, a segment is deleted only when:
//! - its object was written more than `gc.orphan_grace` ago (store clock):
//!   a commit creates its record within a few store operations of its
//!   segment PUT, and a retried commit PUTs the segment again, so a segment
//!   that old whose record does not exist yet never gets one;
//! - it was written at most `gc.lateness` after its hour ended (a later one
//!   is kept: never deleted, whatever the log says);
//! - no record names it, among every partition's records the store created
//!   between the hour's start (less `gc.clock_skew`) and the segment's write
//!   time plus `gc.orphan_grace` (plus the skew). Records are found by
//!   their objects' `last_modified` ([`crate::log::committed`]), the store
//!   clock that also stamped the segment; only the hour's start comes from
//!   a gateway clock (`received_at`), hence the skew.
//!
//! When in doubt a segment is kept: a store error stops the stream's run
//! before anything of the hour is deleted.

use std::collections::HashSet;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::{list_all, stamp, Gc, GcError, StreamReport};
use crate::log::record::StreamPath;
use crate::log::retry::{get_if_present, retry};

const HOUR: TimeDelta = TimeDelta::hours(1);

/// The stored form of the cursor.
#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    /// Every hour starting before this was checked.
    checked_before: String,
    by: String,
    at: String,
}

/// Check the stream's next hours for orphans and delete them.
pub(super) async fn collect(
    gc: &Gc,
    path: &StreamPath,
    partitions: u32,
    now: DateTime<Utc>,
    report: &mut StreamReport,
) -> Result<(), GcError> {
    let grace = delta(gc.config.orphan_grace());
    let lateness = delta(gc.config.lateness());
    let cursor = read_cursor(gc, path).await?;
    let due = |h: DateTime<Utc>| h + HOUR + lateness + grace <= now;
    let hours = hours(gc, path, cursor).await?;
    for hour in hours.into_iter().take(gc.config.orphan_hours_per_run) {
        if !due(hour) {
            break;
        }
        check_hour(gc, path, partitions, hour, now, report).await?;
        write_cursor(gc, path, hour + HOUR, now).await?;
        report.hours_checked += 1;
    }
    Ok(())
}

async fn check_hour(
    gc: &Gc,
    path: &StreamPath,
    partitions: u32,
    hour: DateTime<Utc>,
    now: DateTime<Utc>,
    report: &mut StreamReport,
) -> Result<(), GcError> {
    let grace = delta(gc.config.orphan_grace());
    let lateness = delta(gc.config.lateness());
    let skew = delta(gc.config.clock_skew());
    let dir = hour_dir(hour);
    let prefix = path.segment(&dir);
    let mut candidates = Vec::new();
    for meta in list_all(gc.log(), &prefix).await? {
        if meta.last_modified + grace > now {
            continue;
        }
        if meta.last_modified > hour + HOUR + lateness {
            report.late_kept += 1;
            tracing::info!(segment = %meta.location, "segment written later than gc.lateness after its hour: kept");
            continue;
        }
        candidates.push(meta);
    }
    let Some(newest) = candidates.iter().map(|m| m.last_modified).max() else {
        return Ok(());
    };
    let (from, to) = (hour - skew, newest + grace + skew);
    let named = named_segments(gc, path, partitions, &dir, from, to).await?;
    let base = format!("{}/", path.base().as_ref());
    let orphans: Vec<Path> = candidates
        .into_iter()
        .map(|m| m.location)
        .filter(|key| {
            let relative = key.as_ref().strip_prefix(&base).unwrap_or(key.as_ref());
            !named.contains(relative)
        })
        .collect();
    for key in &orphans {
        tracing::info!(segment = %key, "deleting orphan segment");
    }
    report.orphans_deleted += gc.delete(orphans, "delete_orphan", "orphan").await?;
    Ok(())
}

/// Segment keys under `dir` that records created between `from` and `to`
/// (store clock) name, in any partition.
async fn named_segments(
    gc: &Gc,
    path: &StreamPath,
    partitions: u32,
    dir: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<HashSet<String>, GcError> {
    let mut named = HashSet::new();
    let in_dir = format!("{dir}/");
    for partition in 0..partitions {
        let found = gc
            .log()
            .records_committed(path, partition, from, to, gc.config.concurrency, |r| {
                r.segment.starts_with(&in_dir)
            })
            .await
            .map_err(|source| GcError::Log { partition, source })?;
        named.extend(found.into_iter().map(|c| c.record.segment));
    }
    Ok(named)
}

/// The stream's hours under `data/`, oldest first, from `after` on.
async fn hours(
    gc: &Gc,
    path: &StreamPath,
    after: Option<DateTime<Utc>>,
) -> Result<Vec<DateTime<Utc>>, GcError> {
    let mut found = Vec::new();
    let data = path.segment("data");
    for day_dir in gc.dirs(&data, "list_hours").await? {
        let Some(day) = day_dir
            .strip_prefix("dt=")
            .and_then(|d| d.parse::<NaiveDate>().ok())
        else {
            continue;
        };
        if after.is_some_and(|a| day.and_hms_opt(23, 0, 0).is_some_and(|e| e.and_utc() < a)) {
            continue;
        }
        for hour_dir in gc
            .dirs(&data.clone().join(day_dir.as_str()), "list_hours")
            .await?
        {
            let hour = hour_dir
                .strip_prefix("hr=")
                .and_then(|h| h.parse::<u32>().ok())
                .and_then(|h| day.and_hms_opt(h, 0, 0))
                .map(|t| t.and_utc());
            if let Some(h) = hour.filter(|h| after.is_none_or(|a| *h >= a)) {
                found.push(h);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// `data/dt=YYYY-MM-DD/hr=HH` of the hour starting at `hour`.
fn hour_dir(hour: DateTime<Utc>) -> String {
    hour.format("data/dt=%Y-%m-%d/hr=%H").to_string()
}

fn cursor_key(path: &StreamPath) -> Path {
    path.segment("gc/orphans.json")
}

/// The first hour not checked yet; `None` (check from the oldest) when
/// there is no cursor or it cannot be read as one.
async fn read_cursor(gc: &Gc, path: &StreamPath) -> Result<Option<DateTime<Utc>>, GcError> {
    let key = cursor_key(path);
    let log = gc.log();
    let body = get_if_present(&*log.store().inner, log.policy(), "get_gc_cursor", &key)
        .await
        .map_err(|source| GcError::Store {
            op: "get_gc_cursor",
            key: key.to_string(),
            source,
        })?;
    let Some(body) = body else { return Ok(None) };
    let at = serde_json::from_slice::<Cursor>(&body)
        .ok()
        .and_then(|c| DateTime::parse_from_rfc3339(&c.checked_before).ok());
    if at.is_none() {
        tracing::warn!(key = %key, "unreadable orphan cursor: checking every hour again");
    }
    Ok(at.map(|t| t.with_timezone(&Utc)))
}

/// Remember that every hour before `before` was checked (a plain PUT: a
/// racing run that writes an older value only makes hours be checked again).
async fn write_cursor(
    gc: &Gc,
    path: &StreamPath,
    before: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), GcError> {
    let key = cursor_key(path);
    let cursor = Cursor {
        checked_before: stamp(before),
        by: gc.id.clone(),
        at: stamp(now),
    };
    let body = serde_json::to_vec(&cursor).unwrap_or_default();
    let payload = PutPayload::from(body);
    let store = gc.log().store().inner.clone();
    retry(gc.log().policy(), "put_gc_cursor", || {
        store.put(&key, payload.clone())
    })
    .await
    .map(|_| ())
    .map_err(|source| GcError::Store {
        op: "put_gc_cursor",
        key: key.to_string(),
        source,
    })
}

fn delta(d: std::time::Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}
