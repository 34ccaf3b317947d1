//! Garbage collection: retention and orphan segments (`sluice gc`, and the
//! optional schedule inside `serve`).
//!
//! Owns deciding what to delete and deleting it, stream by stream:
//! - [`retention`]: per partition, the records of a prefix of the log whose
//!   events are all older than the stream's retention, and their segments.
//!   The low watermark ([`crate::log::low`]) is raised *before* anything is
//!   deleted, so a reader that finds a record or segment missing reads the
//!   watermark again and answers "expired", never a gap; offsets never
//!   move (appends continue after the head as before).
//! - [`orphans`]: segments under `data/` that no record names, once they
//!   are older than `gc.orphan_grace` (written, never committed: a crash
//!   between the segment PUT and the record).
//!
//! It never writes a commit record and never deletes at or above a
//! watermark. Any number of runs may overlap (replicas, CronJobs): the
//! watermark only rises (create-only objects) and deleting twice is
//! harmless. Time comes in as an explicit `now`, so tests decide it. Like
//! every batch job it never serves requests, and the routes never run it.

pub mod config;
mod orphans;
mod retention;
pub mod schedule;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStoreExt;

use crate::config::Config;
use crate::log::record::StreamPath;
use crate::log::retry::retry;
use crate::log::{Log, LogError};
use crate::metrics::{GC_DELETED_TOTAL, GC_LAST_SUCCESS, GC_RUNS_TOTAL};
use crate::tenants::{StreamSettings, Tenant, Tenants};
pub use config::GcConfig;

/// Why gc could not finish a stream (the others still run).
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("partition {partition}: {source}")]
    Log { partition: u32, source: LogError },
    #[error("{op} {key}: {source}")]
    Store {
        op: &'static str,
        key: String,
        source: object_store::Error,
    },
    #[error("tenant {0:?} is not in the configuration (declare [tenants.{0}] or pass the top-level `tenant`)")]
    UnknownTenant(String),
}

/// What one run looks at: everything, one tenant, or one stream of it.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub tenant: Option<String>,
    pub stream: Option<String>,
}

/// What gc did to one partition's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionReport {
    pub partition: u32,
    /// The watermark before and after (`first_seq`, `first_offset`).
    pub from: (u64, u64),
    pub to: (u64, u64),
    pub records_deleted: u64,
    pub segments_deleted: u64,
}

/// What gc did to one stream.
#[derive(Debug, Clone, Default)]
pub struct StreamReport {
    pub tenant: String,
    pub stream: String,
    /// `None`: the stream keeps its events forever (only orphans are collected).
    pub retention: Option<Duration>,
    /// Partitions whose watermark moved.
    pub partitions: Vec<PartitionReport>,
    pub orphans_deleted: u64,
    /// Segments kept because they were written later than `gc.lateness`
    /// after their hour (they may be committed; see [`orphans`]).
    pub late_kept: u64,
    /// Hours of `data/` checked for orphans.
    pub hours_checked: u64,
    /// Why the stream was left alone (not a stream this configuration
    /// serves: an undeclared one of a tenant with `auto_create = false`).
    pub skipped: Option<String>,
    pub error: Option<String>,
}

/// What one run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub streams: Vec<StreamReport>,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.streams.iter().any(|s| s.error.is_some())
    }
}

/// One collector: a log handle, the tenants and their streams' settings.
pub struct Gc {
    log: Arc<Log>,
    tenants: Tenants,
    config: GcConfig,
    /// Written into the watermark objects this collector creates.
    id: String,
}

impl Gc {
    pub fn new(log: Arc<Log>, config: &Config) -> Gc {
        Gc {
            log,
            tenants: Tenants::from_config(config),
            config: config.gc.clone(),
            id: format!("gc-{}", ulid::Ulid::new().to_string().to_ascii_lowercase()),
        }
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Collect every stream in `scope`, deciding with `now`. A stream that
    /// fails is reported and the others still run.
    pub async fn run(&self, scope: &Scope, now: DateTime<Utc>) -> Result<Report, GcError> {
        let mut report = Report::default();
        for tenant in self.tenants_in(scope)? {
            let streams = match &scope.stream {
                Some(s) => vec![s.clone()],
                None => self.streams_of(&tenant.name).await?,
            };
            for stream in streams {
                let r = self.stream(&tenant, &stream, now).await;
                if let Some(e) = &r.error {
                    tracing::error!(tenant = %tenant.name, stream = %stream, error = %e, "gc of a stream failed");
                }
                report.streams.push(r);
            }
        }
        let outcome = if report.failed() { "failed" } else { "ok" };
        metrics::counter!(GC_RUNS_TOTAL, "outcome" => outcome).increment(1);
        if !report.failed() {
            metrics::gauge!(GC_LAST_SUCCESS).set(now.timestamp() as f64);
        }
        Ok(report)
    }

    fn tenants_in(&self, scope: &Scope) -> Result<Vec<Arc<Tenant>>, GcError> {
        match &scope.tenant {
            Some(name) => {
                let t = self.tenants.get(name);
                Ok(vec![t
                    .cloned()
                    .ok_or_else(|| GcError::UnknownTenant(name.clone()))?])
            }
            None => {
                let mut all: Vec<_> = self.tenants.iter().cloned().collect();
                all.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(all)
            }
        }
    }

    /// The streams a tenant has in the bucket (one listing).
    async fn streams_of(&self, tenant: &str) -> Result<Vec<String>, GcError> {
        let prefix = self.log.store().root.clone().join(tenant);
        self.dirs(&prefix, "list_streams").await
    }

    /// Names of the "directories" directly under `prefix`, sorted (one
    /// listing; `op` names it in errors).
    async fn dirs(&self, prefix: &Path, op: &'static str) -> Result<Vec<String>, GcError> {
        let listed = self
            .log
            .store()
            .inner
            .list_with_delimiter(Some(prefix))
            .await;
        let prefixes = match listed {
            Ok(l) => l.common_prefixes,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(source) => {
                return Err(GcError::Store {
                    op,
                    key: prefix.to_string(),
                    source,
                })
            }
        };
        let mut names: Vec<String> = prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn stream(&self, tenant: &Tenant, stream: &str, now: DateTime<Utc>) -> StreamReport {
        let mut report = StreamReport {
            tenant: tenant.name.clone(),
            stream: stream.to_string(),
            ..Default::default()
        };
        let settings = match tenant.stream(stream) {
            Ok(s) => s.clone(),
            Err(e) => {
                report.skipped = Some(e.to_string());
                return report;
            }
        };
        report.retention = settings.retention;
        let path = self.log.stream(&tenant.name, stream);
        if let Err(e) = self.collect(&path, &settings, now, &mut report).await {
            report.error = Some(e.to_string());
        }
        report
    }

    async fn collect(
        &self,
        path: &StreamPath,
        settings: &StreamSettings,
        now: DateTime<Utc>,
        report: &mut StreamReport,
    ) -> Result<(), GcError> {
        let partitions = self
            .log
            .partitions(path, settings.partitions)
            .await
            .map_err(|(key, source)| GcError::Store {
                op: "list_partitions",
                key,
                source,
            })?;
        if let Some(keep) = settings.retention {
            let keep = chrono::TimeDelta::from_std(keep).unwrap_or(chrono::TimeDelta::MAX);
            let cutoff = now
                .checked_sub_signed(keep)
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            for partition in 0..partitions {
                let r = retention::collect(self, path, partition, cutoff, now).await?;
                if r.to != r.from || r.records_deleted > 0 || r.segments_deleted > 0 {
                    report.partitions.push(r);
                }
            }
        }
        orphans::collect(self, path, partitions, now, report).await
    }

    /// Delete `keys` (`concurrency` at a time); a key already gone is
    /// fine. The number actually deleted, as far as the store tells.
    async fn delete(
        &self,
        keys: Vec<Path>,
        op: &'static str,
        kind: &'static str,
    ) -> Result<u64, GcError> {
        let store = self.log.store().inner.clone();
        let policy = self.log.policy();
        let results: Vec<Result<bool, GcError>> = futures::stream::iter(keys)
            .map(|key| {
                let store = store.clone();
                async move {
                    match retry(policy, op, || store.delete(&key)).await {
                        Ok(()) => Ok(true),
                        Err(object_store::Error::NotFound { .. }) => Ok(false),
                        Err(source) => Err(GcError::Store {
                            op,
                            key: key.to_string(),
                            source,
                        }),
                    }
                }
            })
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await;
        let mut deleted = 0;
        for r in results {
            deleted += u64::from(r?);
        }
        metrics::counter!(GC_DELETED_TOTAL, "kind" => kind).increment(deleted);
        Ok(deleted)
    }
}

/// `now` as watermark objects record it.
fn stamp(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Every object under `prefix` (recursive), for orphan checks.
async fn list_all(log: &Log, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>, GcError> {
    log.store()
        .inner
        .list(Some(prefix))
        .try_collect()
        .await
        .map_err(|source| GcError::Store {
            op: "list_segments",
            key: prefix.to_string(),
            source,
        })
}
