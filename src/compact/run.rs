//! Which streams and hours a compaction run covers: `sluice compact` and the
//! schedule inside `serve`.

use std::sync::Arc;

use object_store::path::Path;

use super::{list_dirs, CompactError, Compactor, Hour, Report, Target};
use crate::config::Config;
use crate::log::retry::RetryPolicy;
use crate::log::Log;
use crate::tenants::Tenants;

/// What one run covers; `None` means "every one in the bucket".
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub tenant: Option<String>,
    pub stream: Option<String>,
    /// One hour (refused if still open) instead of every closed hour.
    pub hour: Option<Hour>,
    /// Only hours starting at or after this one (the schedule's look-back).
    pub since: Option<Hour>,
}

/// Compact `scope` at `now_ms`: every (tenant, stream) it names or the
/// bucket holds, every closed hour with data (or the one named).
pub async fn run(
    log: Arc<Log>,
    config: &Config,
    scope: &Scope,
    now_ms: i64,
) -> Result<Report, CompactError> {
    let policy = RetryPolicy {
        deadline: config.batch.store_retry(),
        ..RetryPolicy::default()
    };
    let compactor = Compactor::new(log.clone(), config.compaction.clone(), policy);
    let tenants = Tenants::from_config(config);
    let mut report = Report::default();
    for tenant in names(&compactor, &log.store().root, scope.tenant.as_deref()).await? {
        let base = log.store().root.clone().join(tenant.as_str());
        for stream in names(&compactor, &base, scope.stream.as_deref()).await? {
            let settings = tenants
                .get(&tenant)
                .and_then(|t| t.stream(&stream).ok())
                .cloned();
            let path = log.stream(&tenant, &stream);
            let configured = settings
                .as_ref()
                .map_or(config.streams.partitions, |s| s.partitions);
            let partitions = log
                .partitions(&path, configured)
                .await
                .map_err(|(key, source)| CompactError::Store {
                    op: "list",
                    key,
                    source,
                })?;
            let schema = settings.as_ref().and_then(|s| s.schema.as_ref());
            let target = Target {
                stream: path,
                partitions,
                schema: schema.map(|s| &s.document),
            };
            let hours = match scope.hour {
                Some(h) => vec![h],
                None => {
                    compactor
                        .closed_hours(&target.stream, now_ms, scope.since)
                        .await?
                }
            };
            for hour in hours {
                compactor.hour(&target, hour, now_ms, &mut report).await?;
            }
        }
    }
    Ok(report)
}

/// `only`, or the directory names under `dir` (tenants, streams).
async fn names(
    compactor: &Compactor,
    dir: &Path,
    only: Option<&str>,
) -> Result<Vec<String>, CompactError> {
    match only {
        Some(name) => Ok(vec![name.to_string()]),
        None => list_dirs(compactor.store(), compactor.policy, dir).await,
    }
}

/// The schedule inside `serve`: a run every `compaction.interval_ms` over
/// the look-back window, until `stop` turns true. Errors are logged and
/// counted; the next tick tries again.
pub async fn schedule(log: Arc<Log>, config: Config, mut stop: tokio::sync::watch::Receiver<bool>) {
    let every = config.compaction.interval();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => return,
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let look_back = i64::from(config.compaction.lookback_hours) * 3_600_000;
        let scope = Scope {
            since: Some(Hour::of(now_ms - look_back)),
            ..Scope::default()
        };
        let outcome = match run(log.clone(), &config, &scope, now_ms).await {
            Ok(report) => {
                tracing::info!(?report, "compaction run");
                "ok"
            }
            Err(e) => {
                tracing::error!(error = %e, "compaction run failed; retrying next interval");
                "error"
            }
        };
        metrics::counter!("sluice_compaction_runs_total", "outcome" => outcome).increment(1);
    }
}
