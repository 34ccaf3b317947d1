//! Retention for one partition: raise the low watermark past the longest
//! prefix of the log whose events are all older than the cutoff, then
//! delete those records and their segments.
//!
//! Order is what keeps readers right: the watermark object exists before
//! the first delete, so whoever finds a record or segment missing reads it
//! again and answers "expired". Deletes go in ascending seq chunks, each
//! chunk's segments before its records, and the range's last record goes
//! alone at the very end: a run that died half-way leaves that record, which
//! the next run checks (one GET) and, finding it, finishes the range.

use chrono::{DateTime, Utc};
use futures::future::try_join_all;

use super::{stamp, Gc, GcError, PartitionReport};
use crate::log::record::{CommitRecord, StreamPath};
use crate::log::window::millis;
use crate::log::{Raised, Watermark};

/// Records whose segments, then themselves, are deleted per step.
const DELETE_CHUNK: usize = 256;
/// Scans one run starts over when other collectors delete under it.
const RESCANS: u32 = 4;

/// Collect one partition: `cutoff` is now − retention.
pub(super) async fn collect(
    gc: &Gc,
    path: &StreamPath,
    partition: u32,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<PartitionReport, GcError> {
    let err = |source| GcError::Log { partition, source };
    let log = gc.log();
    let mark = log.refresh_watermark(path, partition).await.map_err(err)?;
    let mut report = PartitionReport {
        partition,
        from: (mark.first_seq, mark.first_offset),
        to: (mark.first_seq, mark.first_offset),
        ..Default::default()
    };
    finish(gc, path, partition, &mark, &mut report).await?;
    let expired = expired_records(gc, path, partition, mark, cutoff).await?;
    let Some((last_seq, last)) = expired.last() else {
        return Ok(report);
    };
    let raised = log
        .raise_watermark(
            path,
            partition,
            last_seq + 1,
            last.next_offset(),
            &gc.id,
            stamp(now),
        )
        .await
        .map_err(err)?;
    let w = raised.watermark();
    report.to = (w.first_seq, w.first_offset);
    tracing::info!(stream = %path.base(), partition, first_seq = w.first_seq, first_offset = w.first_offset, "watermark raised");
    match raised {
        // Everything scanned is below it: the ranges of collectors that
        // raised between our look and our raise included.
        Raised::Created(_) => delete_range(gc, path, partition, expired, &mut report).await?,
        // Another collector went at least as far; it deletes (we help only
        // if its range looks unfinished).
        Raised::Already(w) => finish(gc, path, partition, &w, &mut report).await?,
    }
    Ok(report)
}

/// The expired prefix of the retained log. A record missing under the scan
/// means another collector raised the watermark and deleted it: scan again
/// from the new watermark, so this run still reaches its own cutoff (else
/// it would stop at the other collector's, which may be older).
async fn expired_records(
    gc: &Gc,
    path: &StreamPath,
    partition: u32,
    mut mark: Watermark,
    cutoff: DateTime<Utc>,
) -> Result<Vec<(u64, CommitRecord)>, GcError> {
    let err = |source| GcError::Log { partition, source };
    let mut expired = Vec::new();
    for _ in 0..RESCANS {
        let head = gc.log().head(path, partition).await.map_err(err)?;
        let (found, complete) =
            expired_prefix(gc, path, partition, mark.first_seq, head.next_seq, cutoff).await?;
        expired = found;
        if complete {
            break;
        }
        let fresh = gc
            .log()
            .refresh_watermark(path, partition)
            .await
            .map_err(err)?;
        if fresh.first_seq == mark.first_seq {
            break; // not a collector's deletion: leave the rest for a later run
        }
        mark = fresh;
    }
    Ok(expired)
}

/// The records from `start` (at most `gc.max_records_per_run`, never at or
/// past `head`) whose newest event is older than `cutoff`, up to the first
/// that is not. Read `gc.concurrency` at a time. `false` with them when
/// the scan stopped at a missing record.
async fn expired_prefix(
    gc: &Gc,
    path: &StreamPath,
    partition: u32,
    start: u64,
    head: u64,
    cutoff: DateTime<Utc>,
) -> Result<(Vec<(u64, CommitRecord)>, bool), GcError> {
    let end = head.min(start.saturating_add(gc.config.max_records_per_run as u64));
    let cutoff = cutoff.timestamp_millis();
    let step = gc.config.concurrency as u64;
    let mut expired = Vec::new();
    let mut seq = start;
    while seq < end {
        let chunk_end = end.min(seq + step);
        let chunk = read_records(gc, path, partition, seq, chunk_end).await?;
        for (s, record) in (seq..chunk_end).zip(chunk) {
            // Missing: another collector deleted it, so the watermark is past it.
            let Some(record) = record else {
                return Ok((expired, false));
            };
            let newest = millis(&record.max_received_at).ok_or_else(|| GcError::Log {
                partition,
                source: crate::log::LogError::Corrupt {
                    key: path.record(partition, s).to_string(),
                    reason: "max_received_at is not an RFC 3339 time".into(),
                },
            })?;
            if newest >= cutoff {
                return Ok((expired, true));
            }
            expired.push((s, record));
        }
        seq = chunk_end;
    }
    Ok((expired, true))
}

async fn read_records(
    gc: &Gc,
    path: &StreamPath,
    partition: u32,
    from: u64,
    to: u64,
) -> Result<Vec<Option<CommitRecord>>, GcError> {
    try_join_all((from..to).map(|s| gc.log().record(path, partition, s)))
        .await
        .map_err(|source| GcError::Log { partition, source })
}

/// Finish `mark`'s range `[from_seq, first_seq)` if a collector died
/// before deleting it all: its last record still exists then.
async fn finish(
    gc: &Gc,
    path: &StreamPath,
    partition: u32,
    mark: &Watermark,
    report: &mut PartitionReport,
) -> Result<(), GcError> {
    if mark.index.is_none() || mark.first_seq <= mark.from_seq {
        return Ok(());
    }
    let last = read_records(gc, path, partition, mark.first_seq - 1, mark.first_seq).await?;
    if last.first().is_none_or(Option::is_none) {
        return Ok(());
    }
    tracing::info!(stream = %path.base(), partition, from = mark.from_seq, to = mark.first_seq, "finishing a range an earlier gc left");
    let mut left = Vec::new();
    let step = DELETE_CHUNK as u64;
    let mut seq = mark.from_seq;
    while seq < mark.first_seq {
        let end = mark.first_seq.min(seq + step);
        let got = read_records(gc, path, partition, seq, end).await?;
        left.extend((seq..end).zip(got).filter_map(|(s, r)| Some((s, r?))));
        seq = end;
    }
    delete_range(gc, path, partition, left, report).await
}

/// Delete `records` (ascending, all below the watermark) and their
/// segments: chunk by chunk, segments first; the last record alone, last.
async fn delete_range(
    gc: &Gc,
    path: &StreamPath,
    partition: u32,
    mut records: Vec<(u64, CommitRecord)>,
    report: &mut PartitionReport,
) -> Result<(), GcError> {
    let Some(last) = records.pop() else {
        return Ok(());
    };
    for chunk in records
        .chunks(DELETE_CHUNK)
        .chain([std::slice::from_ref(&last)])
    {
        let segments = chunk
            .iter()
            .map(|(_, r)| path.segment(&r.segment))
            .collect();
        report.segments_deleted += gc.delete(segments, "delete_segment", "segment").await?;
        let keys = chunk
            .iter()
            .map(|(s, _)| path.record(partition, *s))
            .collect();
        report.records_deleted += gc.delete(keys, "delete_record", "record").await?;
    }
    Ok(())
}
