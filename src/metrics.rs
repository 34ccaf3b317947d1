//! Metric names and the Prometheus exposition.
//!
//! Owns the process-wide recorder. Metric names are `sluice_*` as DESIGN §5
//! lists them; call sites use the `metrics` macros with these names (the
//! newer ones through the constants below).

use std::sync::OnceLock;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Objects garbage collection deleted, by `kind`: `segment` and `record`
/// (retention), `orphan` (segments no record names).
pub const GC_DELETED_TOTAL: &str = "sluice_gc_deleted_total";
/// Garbage-collection runs, by `outcome`: `ok`, or `failed` when some stream
/// could not be collected (the others were).
pub const GC_RUNS_TOTAL: &str = "sluice_gc_runs_total";
/// Unix time (the run's `now`) of the last gc run in which every stream was
/// collected: alert when it falls behind.
pub const GC_LAST_SUCCESS: &str = "sluice_gc_last_success_timestamp_seconds";

/// Buckets (seconds) that resolve a 5 ms commit and a 200 ms flush.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets (bytes) for segment sizes.
const SIZE_BUCKETS: &[f64] = &[
    1024.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 8388608.0, 33554432.0,
];

/// DESIGN §5's metrics with their help text, in exposition order.
const DESCRIBED: &[(&str, Unit, &str)] = &[
    ("sluice_http_requests_total", Unit::Count, "HTTP answers by route and status"),
    ("sluice_events_total", Unit::Count, "Events by tenant, stream and outcome (accepted, invalid, rate_limited, too_large, dead_lettered)"),
    ("sluice_ingest_bytes_total", Unit::Bytes, "Accepted event bytes by tenant and stream"),
    ("sluice_segments_committed_total", Unit::Count, "Segments committed to the log by tenant and stream"),
    ("sluice_commit_conflicts_total", Unit::Count, "Commits that lost a put-if-absent race and retried at the next offset"),
    ("sluice_store_errors_total", Unit::Count, "Failed object store calls by operation (each retry counts)"),
    ("sluice_http_request_duration_seconds", Unit::Seconds, "Time from request to response by route"),
    ("sluice_ack_latency_seconds", Unit::Seconds, "Time from receipt to durable ack"),
    ("sluice_flush_duration_seconds", Unit::Seconds, "Time to seal, write and commit one segment"),
    ("sluice_segment_bytes", Unit::Bytes, "Stored (compressed) size of committed segments"),
    ("sluice_buffered_bytes", Unit::Bytes, "Bytes held in batch buffers, against batch.max_buffered_bytes"),
    ("sluice_buffered_events", Unit::Count, "Events held in batch buffers"),
    ("sluice_inflight_requests", Unit::Count, "HTTP requests being served (the autoscaling metric)"),
    ("sluice_websocket_connections", Unit::Count, "Open WebSocket connections by kind (ingest, subscribe)"),
    ("sluice_draining", Unit::Count, "1 while the gateway drains before exit, else 0"),
];

/// Describe every DESIGN §5 metric and register the series that have no
/// traffic yet (gauges at 0, both WebSocket kinds), so a scrape of an idle
/// gateway already shows them. Call after [`handle`].
pub fn register() {
    for (name, unit, help) in DESCRIBED {
        // The exporter keeps one description per name, whatever the kind.
        metrics::describe_counter!(*name, *unit, *help);
    }
    for name in [
        "sluice_buffered_bytes",
        "sluice_buffered_events",
        "sluice_inflight_requests",
        "sluice_draining",
    ] {
        metrics::gauge!(name).increment(0.0);
    }
    for kind in ["ingest", "subscribe"] {
        metrics::gauge!("sluice_websocket_connections", "kind" => kind).increment(0.0);
    }
}

/// How often histogram samples are folded into their buckets between
/// scrapes. The exporter keeps every sample until then: without this, a
/// gateway nobody scrapes would grow by ~50 bytes a request.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Fold histogram samples every [`UPKEEP_EVERY`] until `closing` turns true.
pub async fn upkeep(handle: PrometheusHandle, mut closing: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            _ = closing.wait_for(|c| *c) => return,
        }
    }
}

/// The recorder, installed once per process; later calls share it.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("sluice_segment_bytes".into()),
                        SIZE_BUCKETS,
                    )
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // Fails only if another recorder is installed (embedding); then we render ours empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
