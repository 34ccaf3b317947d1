//! Compaction: closed hours of a stream's log as Parquet tables (DESIGN §2
//! `tables/`), for DuckDB, Spark, Trino and Athena to read in place.
//!
//! Owns the job: for each partition of a closed hour, gather the committed
//! records that hold events received in it ([`crate::log::Log::records_in`]),
//! build one Parquet file of those events ([`table`], columns by
//! [`columns`]), claim the records' seq range put-if-absent ([`claim`]) and
//! only then write `tables/dt=…/hr=…/{partition:04}-{first_seq:020}.parquet`.
//! Claims chain by seq, so a re-run, a run on every replica at once, or a
//! record committed after the hour was compacted never puts an event in two
//! files or none. It reads the log and never changes it.

mod claim;
pub mod columns;
pub mod config;
mod hour;
pub mod run;
pub mod table;

use std::collections::HashSet;
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::Serialize;
use serde_json::Value;

use crate::log::record::{CommitRecord, StreamPath};
use crate::log::retry::{retry, RetryPolicy};
use crate::log::segment;
use crate::log::window::Window;
use crate::log::{Log, LogError};
use crate::store::Store;
use claim::{Claim, Claims};
pub use config::CompactionConfig;
pub use hour::Hour;
use table::{TableError, TableSettings};

/// Segments fetched at once while a file is built.
const FETCH_AHEAD: usize = 8;
/// Records asked of the log per window scan.
const SCAN_BATCH: usize = 1000;

/// Why a compaction stopped. Nothing is half-done: a claim without its
/// file is repaired by the next run.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("object store unavailable during {op} of {key}: {source}")]
    Store {
        op: &'static str,
        key: String,
        source: object_store::Error,
    },
    #[error("cannot build the Parquet file {key}: {source}")]
    Table { key: String, source: TableError },
    #[error(
        "hour {hour} is still open: its events may not all be committed until {closes_at} \
         (the hour's end + compaction.lateness_ms)"
    )]
    OpenHour { hour: Hour, closes_at: String },
    #[error("corrupt compaction claim {key}: {reason}")]
    Claim { key: String, reason: String },
}

/// What a run did, summed over its hours and partitions.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Partition-hours looked at.
    pub partition_hours: u64,
    /// Parquet files written (new claims).
    pub files: u64,
    /// Files rewritten for a claim whose file was missing (a run stopped between the two).
    pub repaired: u64,
    /// Claims another run created first (their file is theirs to write).
    pub lost_races: u64,
    /// Events written.
    pub events: u64,
    /// Uncompressed NDJSON bytes of the segments read.
    pub input_bytes: u64,
    /// Parquet bytes written.
    pub output_bytes: u64,
}

/// One stream to compact.
pub struct Target<'a> {
    pub stream: StreamPath,
    pub partitions: u32,
    /// The stream's JSON Schema: columns come from it instead of the data.
    pub schema: Option<&'a Value>,
}

/// Runs compactions against one store.
pub struct Compactor {
    log: Arc<Log>,
    config: CompactionConfig,
    policy: RetryPolicy,
}

/// The events of one file.
struct Gathered {
    partition: u32,
    rows: Vec<table::Row>,
    input_bytes: u64,
}

impl Compactor {
    pub fn new(log: Arc<Log>, config: CompactionConfig, policy: RetryPolicy) -> Self {
        Compactor {
            log,
            config,
            policy,
        }
    }

    fn store(&self) -> &Store {
        self.log.store()
    }

    fn window(&self, hour: Hour) -> Window {
        Window {
            from: hour.start(),
            to: hour.end(),
            lateness: self.config.lateness_ms as i64,
        }
    }

    /// When `hour` may be compacted: its end plus the lateness bound.
    pub fn closes_at(&self, hour: Hour) -> i64 {
        hour.end().saturating_add(self.config.lateness_ms as i64)
    }

    /// Compact every partition of `hour`; refuses an hour not closed at `now_ms`.
    pub async fn hour(
        &self,
        target: &Target<'_>,
        hour: Hour,
        now_ms: i64,
        report: &mut Report,
    ) -> Result<(), CompactError> {
        if now_ms < self.closes_at(hour) {
            let closes_at = segment::ReceivedAt::from_millis(self.closes_at(hour));
            return Err(CompactError::OpenHour {
                hour,
                closes_at: closes_at.as_str().to_string(),
            });
        }
        let dir = self.tables_dir(&target.stream, hour);
        let tables: HashSet<String> = list_names(self.store(), self.policy, &dir)
            .await?
            .into_iter()
            .collect();
        for partition in 0..target.partitions {
            self.partition_hour(target, hour, partition, &tables, report)
                .await?;
        }
        Ok(())
    }

    async fn partition_hour(
        &self,
        target: &Target<'_>,
        hour: Hour,
        partition: u32,
        tables: &HashSet<String>,
        report: &mut Report,
    ) -> Result<(), CompactError> {
        report.partition_hours += 1;
        let claims = Claims::new(self.store(), self.policy, &target.stream, hour, partition);
        let mut after = 0;
        for first_seq in claims.list().await? {
            let claim = claims.get(first_seq).await?;
            let name = table_name(partition, first_seq);
            if claim.events > 0 && !tables.contains(&name) {
                self.repair(target, hour, partition, &claim).await?;
                report.repaired += 1;
            }
            after = after.max(claim.last_seq + 1);
        }
        loop {
            let records = self
                .gather_records(&target.stream, partition, hour, after, None)
                .await?;
            let (Some(first), Some(last)) = (records.first(), records.last()) else {
                return Ok(());
            };
            let (first_seq, last_seq) = (first.0, last.0);
            let gathered = self
                .gather_rows(&target.stream, partition, hour, &records)
                .await?;
            let claim = Claim {
                first_seq,
                last_seq,
                events: gathered.rows.len() as u64,
                writer: self.log.writer().to_string(),
            };
            match claims.create(&claim).await? {
                None => {
                    self.write(target, hour, first_seq, &gathered, report)
                        .await?;
                    after = last_seq + 1;
                }
                Some(theirs) => {
                    report.lost_races += 1;
                    after = theirs.last_seq + 1;
                }
            }
        }
    }

    /// Rewrite the file of a claim whose run stopped before writing it.
    async fn repair(
        &self,
        target: &Target<'_>,
        hour: Hour,
        partition: u32,
        claim: &Claim,
    ) -> Result<(), CompactError> {
        let records = self
            .gather_records(
                &target.stream,
                partition,
                hour,
                claim.first_seq,
                Some(claim.last_seq),
            )
            .await?;
        let gathered = self
            .gather_rows(&target.stream, partition, hour, &records)
            .await?;
        let mut scratch = Report::default();
        self.write(target, hour, claim.first_seq, &gathered, &mut scratch)
            .await
    }

    /// Records holding events of `hour`, from seq `after` on (to `until`),
    /// up to about `max_file_bytes` of segments (at least one record).
    async fn gather_records(
        &self,
        stream: &StreamPath,
        partition: u32,
        hour: Hour,
        mut after: u64,
        until: Option<u64>,
    ) -> Result<Vec<(u64, CommitRecord)>, CompactError> {
        let window = self.window(hour);
        let mut records = Vec::new();
        let mut bytes = 0u64;
        loop {
            let found = self
                .log
                .records_in(stream, partition, window, after, SCAN_BATCH)
                .await?;
            let Some(last) = found.last().map(|(seq, _)| *seq) else {
                return Ok(records);
            };
            for (seq, record) in found {
                let full = !records.is_empty() && bytes + record.bytes > self.config.max_file_bytes;
                if full || until.is_some_and(|u| seq > u) {
                    return Ok(records);
                }
                bytes += record.bytes;
                records.push((seq, record));
            }
            after = last + 1;
        }
    }

    /// The events of `records` received in `hour`, in offset order.
    async fn gather_rows(
        &self,
        stream: &StreamPath,
        partition: u32,
        hour: Hour,
        records: &[(u64, CommitRecord)],
    ) -> Result<Gathered, CompactError> {
        let mut segments = Vec::with_capacity(records.len());
        for chunk in records.chunks(FETCH_AHEAD) {
            let fetches = chunk.iter().map(|(seq, record)| async move {
                match self.log.segment_bytes(stream, record).await {
                    Ok(bytes) => Ok(bytes),
                    // Collected by gc under us: `Expired`, not a corrupt log.
                    Err(e) => Err(self
                        .log
                        .expired_if_collected(stream, partition, *seq, record.first_offset, e)
                        .await),
                }
            });
            segments.extend(futures::future::try_join_all(fetches).await?);
        }
        let mut gathered = Gathered {
            partition,
            rows: Vec::new(),
            input_bytes: 0,
        };
        for ((_, record), raw) in records.iter().zip(&segments) {
            gathered.input_bytes += raw.len() as u64;
            for (i, line) in segment::lines(raw).enumerate() {
                let offset = record.first_offset + i as u64;
                let row = table::Row::of_line(partition, offset, &line).ok_or_else(|| {
                    LogError::BadSegment {
                        key: stream.segment(&record.segment).to_string(),
                        reason: format!("line of offset {offset} is not an envelope"),
                    }
                })?;
                if (hour.start()..hour.end()).contains(&row.received_at) {
                    gathered.rows.push(row);
                }
            }
        }
        Ok(gathered)
    }

    /// Build and store the file of `gathered` (none for no rows).
    async fn write(
        &self,
        target: &Target<'_>,
        hour: Hour,
        first_seq: u64,
        gathered: &Gathered,
        report: &mut Report,
    ) -> Result<(), CompactError> {
        report.input_bytes += gathered.input_bytes;
        if gathered.rows.is_empty() {
            return Ok(());
        }
        let key = Path::from(format!(
            "{}/{}",
            self.tables_dir(&target.stream, hour).as_ref(),
            table_name(gathered.partition, first_seq)
        ));
        let settings = TableSettings {
            row_group_rows: self.config.row_group_rows,
            zstd_level: self.config.zstd_level,
        };
        let file = table::file(
            &gathered.rows,
            target.schema,
            self.config.max_columns,
            settings,
        )
        .map_err(|source| CompactError::Table {
            key: key.to_string(),
            source,
        })?;
        let payload = PutPayload::from_bytes(file.clone());
        retry(self.policy, "put_table", || {
            self.store().inner.put(&key, payload.clone())
        })
        .await
        .map_err(|source| CompactError::Store {
            op: "put_table",
            key: key.to_string(),
            source,
        })?;
        report.files += 1;
        report.events += gathered.rows.len() as u64;
        report.output_bytes += file.len() as u64;
        metrics::counter!("sluice_compaction_events_total").increment(gathered.rows.len() as u64);
        metrics::counter!("sluice_compaction_bytes_total", "kind" => "input")
            .increment(gathered.input_bytes);
        metrics::counter!("sluice_compaction_bytes_total", "kind" => "output")
            .increment(file.len() as u64);
        Ok(())
    }

    fn tables_dir(&self, stream: &StreamPath, hour: Hour) -> Path {
        Path::from(format!(
            "{}/tables/{}",
            stream.base().as_ref(),
            hour.partition()
        ))
    }

    /// Closed hours (at `now_ms`) that may hold events: each hour with
    /// segments under `data/`, and the hour after it (a segment is filed
    /// under its first event's hour and may run into the next). With
    /// `since`, only hours starting at or after it.
    pub async fn closed_hours(
        &self,
        stream: &StreamPath,
        now_ms: i64,
        since: Option<Hour>,
    ) -> Result<Vec<Hour>, CompactError> {
        let data = Path::from(format!("{}/data", stream.base().as_ref()));
        let mut hours = std::collections::BTreeSet::new();
        for day in list_dirs(self.store(), self.policy, &data).await? {
            let day_dir = Path::from(format!("{}/{day}", data.as_ref()));
            for hr in list_dirs(self.store(), self.policy, &day_dir).await? {
                if let Some(h) = Hour::from_partition(&format!("{day}/{hr}")) {
                    hours.insert(h);
                    hours.insert(h.next());
                }
            }
        }
        Ok(hours
            .into_iter()
            .filter(|h| now_ms >= self.closes_at(*h) && since.is_none_or(|s| *h >= s))
            .collect())
    }
}

fn table_name(partition: u32, first_seq: u64) -> String {
    format!("{partition:04}-{first_seq:020}.parquet")
}

/// File names directly under `dir` (empty when it does not exist).
pub(crate) async fn list_names(
    store: &Store,
    policy: RetryPolicy,
    dir: &Path,
) -> Result<Vec<String>, CompactError> {
    let listing = listing(store, policy, dir).await?;
    Ok(listing
        .objects
        .iter()
        .filter_map(|o| o.location.filename().map(str::to_string))
        .collect())
}

/// Sub-directory names directly under `dir`.
async fn list_dirs(
    store: &Store,
    policy: RetryPolicy,
    dir: &Path,
) -> Result<Vec<String>, CompactError> {
    let listing = listing(store, policy, dir).await?;
    Ok(listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect())
}

async fn listing(
    store: &Store,
    policy: RetryPolicy,
    dir: &Path,
) -> Result<object_store::ListResult, CompactError> {
    match retry(policy, "list", || {
        store.inner.list_with_delimiter(Some(dir))
    })
    .await
    {
        Ok(l) => Ok(l),
        Err(object_store::Error::NotFound { .. }) => Ok(object_store::ListResult {
            common_prefixes: Vec::new(),
            objects: Vec::new(),
            extensions: Default::default(),
        }),
        Err(source) => Err(CompactError::Store {
            op: "list",
            key: dir.to_string(),
            source,
        }),
    }
}
