//! Consumer groups (`sluice consume`): batches from a group's checkpoints to
//! the head, at least once (DESIGN §3).
//!
//! Owns the run: find each partition's checkpoint, read the log from there
//! ([`Log::read`]), write the envelopes out and make them durable, and only
//! then advance each partition's checkpoint put-if-absent ([`checkpoint`]).
//! The two halves are separate calls ([`Consumer::read`], [`Consumer::commit`])
//! so a crash between them re-delivers and never skips. It never writes the
//! log, and it must not commit a checkpoint before its output is durable.
//! A checkpoint below the partition's low watermark (retention deleted
//! events the group never read) stops the run with
//! [`ConsumeError::Expired`] unless the caller asked to skip them
//! ([`Consumer::with_skip_expired`]): never a silent gap.
//! The same checkpoints over HTTP are [`routes`].

pub mod checkpoint;
pub mod lag;
pub mod routes;

use std::io::Write;
use std::path::{Path as FsPath, PathBuf};

use crate::compact::table::{Row, TableSettings};
use crate::log::record::StreamPath;
use crate::log::retry::RetryPolicy;
use crate::log::{Log, LogError, ReadBatch};
use crate::store::{Store, StoreError};
pub use checkpoint::{Checkpoint, Checkpoints, Conflict, Position};

/// Longest group, stream or tenant name accepted (same charset as streams).
pub const MAX_NAME_LEN: usize = 64;

/// Why a consume run failed. Only [`ConsumeError::Conflict`] means another
/// consumer of the group moved on. Every other error leaves the checkpoints
/// of the partitions it names where they were, except
/// [`ConsumeError::CheckpointInDoubt`], whose checkpoint may still land;
/// either way a rerun resumes from the checkpoint that is there (it may
/// re-read, it never skips).
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("{what} name {name:?} is not valid: use 1 to 64 of [A-Za-z0-9._-], not starting with '.' or '-'")]
    BadName { what: &'static str, name: String },
    #[error("unknown output format {0:?}; use ndjson or parquet")]
    UnknownFormat(String),
    #[error("cannot build the Parquet output: {0}; nothing was committed")]
    Parquet(#[from] crate::compact::table::TableError),
    #[error("stored line at partition {partition} offset {offset} is not an envelope; nothing was committed")]
    Envelope { partition: u32, offset: u64 },
    #[error("store {url:?}: no such directory (nothing has been written there)")]
    NoStoreDir { url: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot list partitions under {prefix}: {source}")]
    List {
        prefix: String,
        source: object_store::Error,
    },
    #[error("object store unavailable during {op}: {source}")]
    Unavailable {
        op: &'static str,
        source: object_store::Error,
    },
    /// The checkpoint create met another create of the same key still in
    /// flight, and the key stayed empty while it was read again: whether
    /// this checkpoint (or another consumer's) lands is unknown.
    #[error("group {group} partition {partition}: checkpoint seq {seq} is in doubt: the store reported another write of it in flight (S3 409 ConditionalRequestConflict), perhaps an earlier attempt of this one, perhaps another consumer's, and it is still not there, so whether it lands is unknown. Nothing is skipped: the next read resumes from whichever checkpoint landed")]
    CheckpointInDoubt {
        group: String,
        partition: u32,
        seq: u64,
    },
    #[error("group checkpoint of partition {partition} is at offset {offset}, past the log's head {head}: was the log reset under it? nothing was read (remove the group's checkpoints to start over)")]
    AheadOfLog {
        partition: u32,
        offset: u64,
        head: u64,
    },
    #[error("corrupt checkpoint {key}: {reason}")]
    CorruptCheckpoint { key: String, reason: String },
    #[error("group {group} partition {partition}: the checkpoint (offset {offset}) is below the first retained offset {first_offset}: retention deleted offsets {offset}..{first_offset} before this group read them. Nothing was read or committed; run again with --skip-expired to move the group on to offset {first_offset} (it never gets the deleted events)")]
    Expired {
        group: String,
        partition: u32,
        offset: u64,
        first_offset: u64,
    },
    #[error("reading partition {partition}: {source}")]
    Log { partition: u32, source: LogError },
    #[error("cannot write the output {path}: {source}; nothing was committed")]
    Output {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Conflict(Conflict),
}

/// Output format of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One stored envelope line per event, bytes unchanged.
    #[default]
    Ndjson,
    /// One Parquet file (zstd): `received_at`, `partition`, `offset` and
    /// the events' fields, columns inferred as compaction does.
    Parquet,
}

impl std::str::FromStr for Format {
    type Err = ConsumeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ndjson" => Ok(Format::Ndjson),
            "parquet" => Ok(Format::Parquet),
            other => Err(ConsumeError::UnknownFormat(other.to_string())),
        }
    }
}

/// Where the events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The writer given to [`consume`] (the CLI's stdout); flushed before committing.
    Stdout,
    /// A new file `{stream}-{group}-{ulid}.ndjson` in this directory, fsynced
    /// (file and directory) before committing. No events: no file.
    Dir(PathBuf),
}

/// One `sluice consume` run.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// Store URL (`file://`, `s3://`, `memory://`).
    pub store: String,
    pub tenant: String,
    pub stream: String,
    pub group: String,
    pub output: Output,
    pub format: Format,
    /// Most events in this run, over all partitions (`None`: up to the head).
    pub max_events: Option<u64>,
    /// About the most envelope bytes in this run (at least one event still
    /// comes back); bounds the run's memory whatever the event sizes.
    pub max_bytes: u64,
    /// Partitions read at least; more when the bucket holds a higher one.
    pub partitions: u32,
    /// A checkpoint below the low watermark moves on to it (its events were
    /// deleted by retention) instead of stopping the run.
    pub skip_expired: bool,
}

/// What one partition contributed to a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReport {
    pub partition: u32,
    pub events: u64,
    /// Offset read from (the checkpoint's).
    pub from_offset: u64,
    /// The new checkpoint's offset (equal to `from_offset` when there were no events).
    pub next_offset: u64,
    /// Seq of the checkpoint created, `None` when the partition had no events.
    pub checkpoint_seq: Option<u64>,
    /// Offsets skipped because retention deleted them (`--skip-expired`):
    /// `from_offset..from_offset + skipped` were never delivered.
    pub skipped: u64,
}

/// What a run consumed and committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub partitions: Vec<PartitionReport>,
    /// The file written (`Output::Dir` with events).
    pub file: Option<PathBuf>,
    /// Partitions another consumer advanced first: their events are in the
    /// output but their checkpoints did not move (the next run re-reads them).
    pub conflicts: Vec<Conflict>,
    /// Partitions whose checkpoint could not be written (store errors).
    pub failures: Vec<(u32, String)>,
}

impl Report {
    pub fn events(&self) -> u64 {
        self.partitions.iter().map(|p| p.events).sum()
    }
}

/// Events read from one partition, not yet committed.
#[derive(Debug, Clone)]
pub struct PartitionBatch {
    /// The checkpoint they were read from.
    pub from: Position,
    pub batch: ReadBatch,
    /// Offsets after the checkpoint that retention had deleted, skipped
    /// (only with [`Consumer::with_skip_expired`]); `batch` starts after them.
    pub skipped: u64,
}

/// A read that is not committed: write it out, make it durable, then
/// [`Consumer::commit`] it. Dropping it commits nothing (re-delivered next run).
#[derive(Debug, Clone, Default)]
pub struct Pending {
    pub partitions: Vec<PartitionBatch>,
}

impl Pending {
    pub fn events(&self) -> u64 {
        let n = self.partitions.iter().map(|p| p.batch.events.len());
        n.sum::<usize>() as u64
    }

    /// One Parquet file of every event (columns inferred from the events).
    pub fn write_parquet(&self, out: &mut impl Write) -> Result<(), ConsumeError> {
        let mut rows = Vec::with_capacity(self.events() as usize);
        for p in &self.partitions {
            let partition = p.from.partition;
            for (i, line) in p.batch.events.iter().enumerate() {
                let offset = p.batch.first_offset + i as u64;
                let row = Row::of_line(partition, offset, line)
                    .ok_or(ConsumeError::Envelope { partition, offset })?;
                rows.push(row);
            }
        }
        let defaults = crate::compact::CompactionConfig::default();
        let settings = TableSettings {
            row_group_rows: defaults.row_group_rows,
            zstd_level: defaults.zstd_level,
        };
        let file = crate::compact::table::file(&rows, None, defaults.max_columns, settings)?;
        out.write_all(&file).map_err(|source| ConsumeError::Output {
            path: "the Parquet output".into(),
            source,
        })
    }

    /// Write every event in `format`.
    pub fn write(&self, format: Format, out: &mut impl Write) -> Result<(), ConsumeError> {
        match format {
            Format::Parquet => self.write_parquet(out),
            Format::Ndjson => self
                .write_ndjson(out)
                .map_err(|source| ConsumeError::Output {
                    path: "the output".into(),
                    source,
                }),
        }
    }

    /// Every envelope line, newline-terminated, partition by partition.
    pub fn write_ndjson(&self, out: &mut impl Write) -> std::io::Result<()> {
        for p in &self.partitions {
            for line in &p.batch.events {
                out.write_all(line)?;
                out.write_all(b"\n")?;
            }
        }
        Ok(())
    }
}

/// One consumer of a group in one stream.
#[derive(Debug)]
pub struct Consumer {
    log: Log,
    stream: StreamPath,
    checkpoints: Checkpoints,
    id: String,
    max_bytes: u64,
    skip_expired: bool,
}

/// Reject names that would not be safe key segments.
pub fn check_name(what: &'static str, name: &str) -> Result<(), ConsumeError> {
    if crate::names::valid(name, MAX_NAME_LEN) {
        Ok(())
    } else {
        Err(ConsumeError::BadName {
            what,
            name: name.to_string(),
        })
    }
}

impl Consumer {
    /// A consumer of `group` on `tenant`/`stream`. `id` is written into the
    /// checkpoints it creates; give each run its own (see [`new_consumer_id`]).
    pub fn new(
        store: Store,
        tenant: &str,
        stream: &str,
        group: &str,
        id: impl Into<String>,
        policy: RetryPolicy,
    ) -> Result<Self, ConsumeError> {
        check_name("tenant", tenant)?;
        check_name("stream", stream)?;
        check_name("group", group)?;
        let id = id.into();
        let log = Log::new(store.clone(), id.clone(), policy);
        let stream = log.stream(tenant, stream);
        let checkpoints = Checkpoints::new(store, policy, &stream, group);
        Ok(Consumer {
            log,
            stream,
            checkpoints,
            id,
            max_bytes: u64::MAX,
            skip_expired: false,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn checkpoints(&self) -> &Checkpoints {
        &self.checkpoints
    }

    /// At least `at_least`; more when the bucket holds a higher partition.
    pub async fn partitions(&self, at_least: u32) -> Result<u32, ConsumeError> {
        self.log
            .partitions(&self.stream, at_least)
            .await
            .map_err(|(prefix, source)| ConsumeError::List { prefix, source })
    }

    /// Read partitions `0..partitions` from the group's checkpoints towards
    /// the head, at most `max_events` in all. Commits nothing.
    ///
    /// The budget is shared: each partition first takes at most an even
    /// share of what is left, then what the quieter ones did not use goes to
    /// the busier ones, so a busy partition 0 cannot starve the others.
    pub async fn read(
        &self,
        partitions: u32,
        max_events: Option<u64>,
    ) -> Result<Pending, ConsumeError> {
        let mut left = max_events.unwrap_or(u64::MAX);
        let mut bytes = self.max_bytes;
        let mut pending = Pending::default();
        let mut full = Vec::new();
        for partition in 0..partitions {
            let share = left.div_ceil(u64::from(partitions - partition));
            let from = self.checkpoints.position(partition).await?;
            self.check_behind_head(partition, from.offset).await?;
            let share = if bytes == 0 { 0 } else { share };
            let (batch, skipped) = self.read_checkpoint(from, share, bytes).await?;
            left -= batch.events.len() as u64;
            bytes = bytes.saturating_sub(size(&batch));
            if share > 0 && batch.events.len() as u64 == share {
                full.push(pending.partitions.len());
            }
            pending.partitions.push(PartitionBatch {
                from,
                batch,
                skipped,
            });
        }
        for i in full {
            if left == 0 || bytes == 0 {
                break;
            }
            let p = &mut pending.partitions[i];
            let more = self
                .read_from(p.from.partition, p.batch.next_offset, left, bytes)
                .await?;
            left -= more.events.len() as u64;
            bytes = bytes.saturating_sub(size(&more));
            p.batch.next_offset = more.next_offset;
            p.batch.events.extend(more.events);
        }
        Ok(pending)
    }

    /// A checkpoint past the head means the log was reset or restored under
    /// the group: reading would silently skip, so refuse.
    async fn check_behind_head(&self, partition: u32, offset: u64) -> Result<(), ConsumeError> {
        if offset == 0 {
            return Ok(());
        }
        let head = self
            .log
            .head(&self.stream, partition)
            .await
            .map_err(|source| ConsumeError::Log { partition, source })?;
        match offset > head.next_offset {
            true => Err(ConsumeError::AheadOfLog {
                partition,
                offset,
                head: head.next_offset,
            }),
            false => Ok(()),
        }
    }

    /// Read from a checkpoint: below the watermark, an error, or (skipping)
    /// from the watermark on, with how many offsets were skipped.
    async fn read_checkpoint(
        &self,
        from: Position,
        max: u64,
        max_bytes: u64,
    ) -> Result<(ReadBatch, u64), ConsumeError> {
        let partition = from.partition;
        match self.read_from(partition, from.offset, max, max_bytes).await {
            Err(ConsumeError::Log {
                source: LogError::Expired { first_offset, .. },
                ..
            }) => {
                if !self.skip_expired {
                    return Err(ConsumeError::Expired {
                        group: self.checkpoints.group().to_string(),
                        partition,
                        offset: from.offset,
                        first_offset,
                    });
                }
                tracing::warn!(
                    group = self.checkpoints.group(),
                    partition,
                    from = from.offset,
                    to = first_offset,
                    "skipping offsets deleted by retention"
                );
                let batch = self
                    .read_from(partition, first_offset, max, max_bytes)
                    .await?;
                Ok((batch, first_offset - from.offset))
            }
            other => other.map(|b| (b, 0)),
        }
    }

    async fn read_from(
        &self,
        partition: u32,
        offset: u64,
        max: u64,
        max_bytes: u64,
    ) -> Result<ReadBatch, ConsumeError> {
        let limit = usize::try_from(max).unwrap_or(usize::MAX);
        let bytes = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        self.log
            .read_bounded(&self.stream, partition, offset, limit, bytes)
            .await
            .map_err(|source| ConsumeError::Log { partition, source })
    }

    /// Cap this consumer's runs at about `max_bytes` of envelopes.
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// A checkpoint below the low watermark moves on to it (the deleted
    /// offsets are reported as skipped) instead of failing the run.
    pub fn with_skip_expired(mut self, skip: bool) -> Self {
        self.skip_expired = skip;
        self
    }

    /// Advance the checkpoint of every partition of `pending` that had
    /// events. Call it only once the output is durable.
    ///
    /// A lost race on one partition does not stop the others; the first
    /// conflict is returned after all were tried (the partitions committed
    /// are logged).
    pub async fn commit(&self, pending: &Pending) -> Result<Report, ConsumeError> {
        let report = self.commit_all(pending).await;
        if let Some(c) = report.conflicts.first() {
            return Err(ConsumeError::Conflict(c.clone()));
        }
        Ok(report)
    }

    /// Try every partition's checkpoint and say what happened to each:
    /// advanced (`partitions`), lost to another consumer (`conflicts`), or
    /// not written (`failures`).
    pub async fn commit_all(&self, pending: &Pending) -> Report {
        let mut report = Report::default();
        for p in &pending.partitions {
            let events = p.batch.events.len() as u64;
            let mut row = PartitionReport {
                partition: p.from.partition,
                events,
                from_offset: p.from.offset,
                next_offset: p.from.offset,
                checkpoint_seq: None,
                skipped: p.skipped,
            };
            if events > 0 || p.skipped > 0 {
                let next = p.batch.next_offset;
                match self
                    .checkpoints
                    .advance(p.from, next, &self.id, now())
                    .await
                {
                    Ok(cp) => {
                        row.next_offset = cp.offset;
                        row.checkpoint_seq = Some(cp.seq);
                        tracing::info!(
                            group = self.checkpoints.group(),
                            partition = p.from.partition,
                            seq = cp.seq,
                            offset = cp.offset,
                            "checkpoint advanced"
                        );
                    }
                    Err(ConsumeError::Conflict(c)) => {
                        report.conflicts.push(c);
                        continue;
                    }
                    Err(e) => {
                        report.failures.push((p.from.partition, e.to_string()));
                        continue;
                    }
                }
            }
            report.partitions.push(row);
        }
        report
    }
}

/// A fresh consumer id for one run: `consume-{ulid}`.
pub fn new_consumer_id() -> String {
    format!("consume-{}", ulid::Ulid::new())
}

/// Now, as checkpoints record it (RFC 3339, UTC, milliseconds).
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Write `pending` to a new file in `dir` and make it durable: write a
/// hidden temporary file, fsync it, rename it, fsync the directory.
/// Blocking I/O: it runs once per run, on the CLI's runtime, before the commit.
pub fn write_file(
    pending: &Pending,
    format: Format,
    dir: &FsPath,
    stream: &str,
    group: &str,
) -> Result<PathBuf, ConsumeError> {
    let extension = match format {
        Format::Ndjson => "ndjson",
        Format::Parquet => "parquet",
    };
    let name = format!("{stream}-{group}-{}.{extension}", ulid::Ulid::new());
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |source| ConsumeError::Output {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let mut out = std::io::BufWriter::new(file);
    pending.write(format, &mut out)?;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(path)
}

/// Open the store `opts.store` names, without creating a missing local directory.
pub async fn open_store(url: &str) -> Result<Store, ConsumeError> {
    if let Some(dir) = url.strip_prefix("file://").filter(|d| !d.is_empty()) {
        if !FsPath::new(dir).is_dir() {
            return Err(ConsumeError::NoStoreDir {
                url: url.to_string(),
            });
        }
    }
    let store = Store::open(url)?;
    store.check(url).await?;
    Ok(store)
}

/// One run: read from the checkpoints, write the output (`Output::Stdout`
/// goes to `stdout`), make it durable, then advance the checkpoints.
pub async fn consume(
    opts: &ConsumeOptions,
    stdout: &mut impl Write,
) -> Result<Report, ConsumeError> {
    check_name("group", &opts.group)?;
    check_name("stream", &opts.stream)?;
    check_name("tenant", &opts.tenant)?;
    let store = open_store(&opts.store).await?;
    let consumer = Consumer::new(
        store,
        &opts.tenant,
        &opts.stream,
        &opts.group,
        new_consumer_id(),
        RetryPolicy::default(),
    )?
    .with_max_bytes(opts.max_bytes)
    .with_skip_expired(opts.skip_expired);
    let partitions = consumer.partitions(opts.partitions).await?;
    let pending = consumer.read(partitions, opts.max_events).await?;
    let file = match &opts.output {
        Output::Stdout => {
            let io = |source| ConsumeError::Output {
                path: "stdout".into(),
                source,
            };
            pending.write(opts.format, stdout)?;
            stdout.flush().map_err(io)?;
            sync_stdout();
            None
        }
        Output::Dir(_) if pending.events() == 0 => None,
        Output::Dir(dir) => Some(write_file(
            &pending,
            opts.format,
            dir,
            &opts.stream,
            &opts.group,
        )?),
    };
    let mut report = consumer.commit_all(&pending).await;
    report.file = file;
    Ok(report)
}

/// When stdout is a file (`> batch.ndjson`), put it on disk before the
/// checkpoints move. A pipe cannot be synced: the reader owns durability.
fn sync_stdout() {
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/stdout") {
        let regular = f.metadata().is_ok_and(|m| m.is_file());
        if regular {
            if let Err(e) = f.sync_all() {
                tracing::warn!(error = %e, "cannot fsync stdout");
            }
        }
    }
}

/// Envelope bytes a batch holds.
fn size(batch: &ReadBatch) -> u64 {
    batch.events.iter().map(|e| e.len() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_formats() {
        assert!(check_name("group", "billing-v2").is_ok());
        assert!(matches!(
            check_name("group", "../x"),
            Err(ConsumeError::BadName { what: "group", .. })
        ));
        assert_eq!("ndjson".parse::<Format>().unwrap(), Format::Ndjson);
        assert_eq!("parquet".parse::<Format>().unwrap(), Format::Parquet);
        assert!("csv".parse::<Format>().is_err());
    }

    #[test]
    fn conflict_message_names_group_partition_and_seq() {
        let c = Conflict {
            group: "g".into(),
            partition: 3,
            seq: 7,
        };
        assert_eq!(
            ConsumeError::Conflict(c).to_string(),
            "group g partition 3 was advanced by another consumer (checkpoint seq 7 taken); \
             nothing was committed for it: run again to re-read from the new checkpoint"
        );
    }

    #[test]
    fn checkpoint_keys_follow_the_layout() {
        let store = Store::from_parts(
            std::sync::Arc::new(object_store::memory::InMemory::new()),
            "root",
            crate::store::StoreKind::Memory,
        );
        let stream = StreamPath::new(&store.root, "default", "clicks");
        let cps = Checkpoints::new(store, RetryPolicy::default(), &stream, "g1");
        assert_eq!(
            cps.key(2, 42).as_ref(),
            "root/default/clicks/consumers/g1/0002/00000000000000000042.json"
        );
    }

    #[tokio::test]
    async fn position_finds_the_latest_of_many() {
        let store = Store::from_parts(
            std::sync::Arc::new(object_store::memory::InMemory::new()),
            "",
            crate::store::StoreKind::Memory,
        );
        let stream = StreamPath::new(&store.root, "default", "clicks");
        let cps = Checkpoints::new(store, RetryPolicy::default(), &stream, "g");
        let mut pos = cps.position(0).await.unwrap();
        assert_eq!((pos.next_seq, pos.offset), (0, 0));
        for i in 0..37u64 {
            cps.advance(pos, i * 10 + 5, "c", now()).await.unwrap();
            pos = cps.position(0).await.unwrap();
            assert_eq!((pos.next_seq, pos.offset), (i + 1, i * 10 + 5));
        }
        assert_eq!(cps.position(1).await.unwrap().offset, 0);
    }
}
