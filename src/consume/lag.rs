//! Consumer lag as a metric: `sluice_consumer_lag_events{tenant, stream,
//! group, partition}` for the groups a stream declares in
//! `consumer_groups` (only those, so label values stay bounded).
//!
//! Owns measuring it: every `read.consumer_lag_interval_ms` the gateway
//! reads each declared group's checkpoints and the heads, and the HTTP
//! routes refresh it whenever they read a declared group anyway. It never
//! moves a checkpoint.

use std::sync::Arc;
use std::time::Duration;

use super::checkpoint::Checkpoints;
use crate::log::retry::RetryPolicy;
use crate::server::App;

/// One (tenant, stream, group) whose lag is exported.
struct Watched {
    tenant: String,
    stream: String,
    group: String,
    partitions: u32,
}

fn watched(app: &App) -> Vec<Watched> {
    let mut out = Vec::new();
    for tenant in app.access.tenants().iter() {
        for stream in tenant.declared() {
            let Ok(settings) = tenant.stream(stream) else {
                continue;
            };
            for group in &settings.consumer_groups {
                out.push(Watched {
                    tenant: tenant.name.clone(),
                    stream: stream.to_string(),
                    group: group.clone(),
                    partitions: settings.partitions,
                });
            }
        }
    }
    out
}

/// Is `group` of (`tenant`, `stream`) one whose lag is exported?
pub fn is_watched(app: &App, tenant: &str, stream: &str, group: &str) -> bool {
    let tenants = app.access.tenants();
    let settings = tenants.get(tenant).and_then(|t| t.stream(stream).ok());
    settings.is_some_and(|s| s.consumer_groups.iter().any(|g| g == group))
}

/// Set one partition's lag.
pub fn record(tenant: &str, stream: &str, group: &str, partition: u32, lag: u64) {
    metrics::gauge!(
        "sluice_consumer_lag_events",
        "tenant" => tenant.to_string(),
        "stream" => stream.to_string(),
        "group" => group.to_string(),
        "partition" => partition.to_string(),
    )
    .set(lag as f64);
}

/// Measure every watched group once. A store error skips that group until
/// the next round (the gauge keeps its last value) and is logged.
pub async fn refresh(app: &App) {
    let policy = RetryPolicy {
        deadline: app.config.batch.store_retry(),
        ..RetryPolicy::default()
    };
    for w in watched(app) {
        let path = app.log.stream(&w.tenant, &w.stream);
        let checkpoints = Checkpoints::new(app.log.store().clone(), policy, &path, &w.group);
        let partitions = app
            .log
            .partitions(&path, w.partitions)
            .await
            .unwrap_or(w.partitions);
        for partition in 0..partitions {
            let offset = match checkpoints.latest(partition).await {
                Ok(cp) => cp.map_or(0, |c| c.offset),
                Err(e) => {
                    tracing::warn!(group = %w.group, stream = %w.stream, error = %e, "consumer lag: cannot read the checkpoint");
                    break;
                }
            };
            match app.log.head(&path, partition).await {
                Ok(head) => record(
                    &w.tenant,
                    &w.stream,
                    &w.group,
                    partition,
                    head.next_offset.saturating_sub(offset),
                ),
                Err(e) => {
                    tracing::warn!(stream = %w.stream, error = %e, "consumer lag: cannot find the head");
                    break;
                }
            }
        }
    }
}

/// Refresh every `read.consumer_lag_interval_ms` until the gateway closes.
/// Not started when no stream declares `consumer_groups`.
pub async fn schedule(app: Arc<App>) {
    if watched(&app).is_empty() {
        return;
    }
    let every = Duration::from_millis(app.config.read.consumer_lag_interval_ms);
    let mut closing = app.closing();
    loop {
        refresh(&app).await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => return,
        }
    }
}
