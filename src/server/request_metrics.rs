//! The per-request metrics (`sluice_http_requests_total`,
//! `sluice_http_request_duration_seconds`).
//!
//! Owns their series handles, registered once per (route label, status) on
//! first use, so answering a request neither formats a status nor builds a
//! label set nor looks a series up. A status outside the usual set is
//! looked up each time (it is rare by definition). The handles belong to
//! the recorder installed when they were first used (`metrics::handle`).

use std::sync::OnceLock;

use metrics::{Counter, Histogram};

use super::table::Route;

/// Statuses the gateway answers; each gets a cached counter per route.
const STATUSES: [u16; 25] = [
    101, 200, 202, 204, 207, 400, 401, 403, 404, 405, 408, 409, 410, 413, 415, 416, 422, 429, 431,
    499, 500, 502, 503, 504, 505,
];

/// The status recorded for a request whose client hung up before the
/// answer (hyper then drops the handler): nginx's "client closed request".
const CLIENT_CLOSED: u16 = 499;

/// One request being served: in `sluice_inflight_requests` from
/// [`InFlight::start`] until dropped, and then counted and timed. Dropped
/// without [`InFlight::answered`] (the client went away mid-request), it
/// counts as 499, so the gauge that drives autoscaling never drifts up.
pub struct InFlight {
    label: &'static str,
    started: std::time::Instant,
    status: u16,
}

impl InFlight {
    pub fn start(label: &'static str) -> InFlight {
        inflight().increment(1.0);
        InFlight {
            label,
            started: std::time::Instant::now(),
            status: CLIENT_CLOSED,
        }
    }

    /// The answer's status, recorded when this is dropped.
    pub fn answered(&mut self, status: u16) {
        self.status = status;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        inflight().decrement(1.0);
        record(
            self.label,
            self.status,
            self.started.elapsed().as_secs_f64(),
        );
    }
}

/// The in-flight gauge, registered once (it is touched twice per request).
fn inflight() -> &'static metrics::Gauge {
    static GAUGE: OnceLock<metrics::Gauge> = OnceLock::new();
    GAUGE.get_or_init(|| metrics::gauge!("sluice_inflight_requests"))
}

/// Labels that are not a table route's.
const EXTRA_LABELS: [&str; 2] = ["preflight", "other"];

/// The handles of one route label.
struct RouteSeries {
    label: &'static str,
    duration: OnceLock<Histogram>,
    requests: [OnceLock<Counter>; STATUSES.len()],
}

/// Every route label's handles, built on first use.
fn all() -> &'static [RouteSeries] {
    static ALL: OnceLock<Vec<RouteSeries>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut labels: Vec<&'static str> = Vec::new();
        for label in Route::ALL.iter().map(|r| r.label()).chain(EXTRA_LABELS) {
            if !labels.contains(&label) {
                labels.push(label);
            }
        }
        labels
            .into_iter()
            .map(|label| RouteSeries {
                label,
                duration: OnceLock::new(),
                requests: std::array::from_fn(|_| OnceLock::new()),
            })
            .collect()
    })
}

/// Count one answer of `status` on the route `label`, which took `seconds`.
fn record(label: &'static str, status: u16, seconds: f64) {
    let Some(series) = all().iter().find(|s| s.label == label) else {
        return uncached(label, status, seconds);
    };
    series
        .duration
        .get_or_init(|| histogram(label))
        .record(seconds);
    match STATUSES.iter().position(|s| *s == status) {
        Some(i) => series.requests[i]
            .get_or_init(|| counter(label, status))
            .increment(1),
        None => counter(label, status).increment(1),
    }
}

fn counter(label: &'static str, status: u16) -> Counter {
    metrics::counter!("sluice_http_requests_total", "route" => label, "status" => status.to_string())
}

fn histogram(label: &'static str) -> Histogram {
    metrics::histogram!("sluice_http_request_duration_seconds", "route" => label)
}

fn uncached(label: &'static str, status: u16, seconds: f64) {
    counter(label, status).increment(1);
    histogram(label).record(seconds);
}
