//! Open-loop load at a fixed arrival rate, measured the way wrk2 does: each
//! connection sends on its own schedule (connection k of N at
//! `first + (k + j·N) / rate`), and a request's latency runs from the time
//! the schedule meant to send it, so a server that stalls is charged for
//! every request it kept waiting (coordinated omission corrected).
//!
//! A request that starts more than `LATE` after its time is counted late
//! (its wait is in its latency). Requests due in the window are still sent
//! after it ends, up to `DRAIN` later; one not started by then is counted
//! unsent, one started but not answered by then unanswered: neither has a
//! latency, so when they are not zero the quantiles are a lower bound.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Barrier};
use tokio::time::{sleep_until, timeout_at, Instant};

use super::client::{self, LoadSpec, Sender, Tally, CONNECT_TIMEOUT};

/// A start this far behind schedule counts as late.
pub const LATE: Duration = Duration::from_millis(5);
/// How long after the window the requests due in it may still be sent and answered.
pub const DRAIN: Duration = Duration::from_secs(5);
/// Connections per request in flight (rate × the closed-loop p99): a
/// connection's next time comes two p99s after its last.
const HEADROOM: f64 = 2.0;
const MIN_CONNS: usize = 4;
/// Below the gateway's default `server.max_connections` (10 000).
pub const MAX_CONNS: usize = 8000;

#[derive(Clone, Copy)]
pub struct Schedule {
    /// Requests per second, over all connections.
    pub rate: f64,
    pub conns: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

/// What one step (or one connection of it) saw.
pub struct Outcome {
    /// 2xx latencies from the intended send time; answers of measured requests.
    pub tally: Tally,
    /// Requests due in the measured window.
    pub due: u64,
    pub late: u64,
    pub unsent: u64,
    pub unanswered: u64,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            tally: Tally::new(),
            due: 0,
            late: 0,
            unsent: 0,
            unanswered: 0,
        }
    }

    fn merge(&mut self, other: Outcome) {
        self.tally.merge(other.tally);
        self.due += other.due;
        self.late += other.late;
        self.unsent += other.unsent;
        self.unanswered += other.unanswered;
    }
}

/// Connections for `rate` when requests take up to `p99`.
pub fn conns_for(rate: f64, p99: Duration) -> usize {
    let in_flight = rate * p99.as_secs_f64() * HEADROOM;
    (in_flight.ceil() as usize).clamp(MIN_CONNS, MAX_CONNS)
}

/// When the schedule starts, when measuring starts, when it ends.
#[derive(Clone, Copy)]
struct Times {
    first: Instant,
    measure_start: Instant,
    end: Instant,
}

/// Opens the connections, then runs the schedule through the warm-up and
/// the measured window.
pub async fn run(spec: Arc<LoadSpec>, schedule: Schedule) -> Outcome {
    let connected = Arc::new(Barrier::new(schedule.conns + 1));
    let (start, started) = watch::channel(None);
    let tasks: Vec<_> = (0..schedule.conns)
        .map(|k| {
            let task = connection_task(
                spec.clone(),
                k,
                schedule,
                connected.clone(),
                started.clone(),
            );
            tokio::spawn(task)
        })
        .collect();
    connected.wait().await;
    let first = Instant::now() + Duration::from_millis(20);
    let measure_start = first + schedule.warmup;
    start.send_replace(Some(Times {
        first,
        measure_start,
        end: measure_start + schedule.measure,
    }));
    let mut total = Outcome::new();
    for task in tasks {
        total.merge(task.await.expect("an open-loop task panicked"));
    }
    total
}

/// Connection `k`: connects, waits for the others, then keeps its schedule.
async fn connection_task(
    spec: Arc<LoadSpec>,
    k: usize,
    schedule: Schedule,
    connected: Arc<Barrier>,
    mut started: watch::Receiver<Option<Times>>,
) -> Outcome {
    let mut out = Outcome::new();
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut sender = client::connect(&spec, &mut out.tally, deadline).await;
    connected.wait().await;
    let times = {
        let signal = started.wait_for(Option::is_some).await;
        let signal = signal.expect("the harness keeps the start signal open");
        (*signal).expect("wait_for returns a started signal")
    };
    let period = Duration::from_secs_f64(schedule.conns as f64 / schedule.rate);
    let due = times.first + Duration::from_secs_f64(k as f64 / schedule.rate);
    keep_schedule(&spec, &mut sender, due, period, times, &mut out).await;
    out
}

/// Sends at `due`, `due + period`, … until the window ends.
async fn keep_schedule(
    spec: &LoadSpec,
    sender: &mut Option<Sender>,
    mut due: Instant,
    period: Duration,
    times: Times,
    out: &mut Outcome,
) {
    let deadline = times.end + DRAIN;
    while due < times.end {
        sleep_until(due).await;
        if Instant::now() >= deadline {
            break;
        }
        let measured = due >= times.measure_start;
        out.due += u64::from(measured);
        if sender.is_none() {
            *sender = client::connect(spec, &mut out.tally, deadline).await;
        }
        if let Some(open) = sender.as_mut() {
            if !send_due(spec, open, due, measured, deadline, out).await {
                *sender = None;
            }
        }
        due += period;
    }
    count_unsent(due, period, times, out);
}

/// Sends one request due at `due`; false when the connection is done.
async fn send_due(
    spec: &LoadSpec,
    sender: &mut Sender,
    due: Instant,
    measured: bool,
    deadline: Instant,
    out: &mut Outcome,
) -> bool {
    if measured && due.elapsed() > LATE {
        out.late += 1;
    }
    match timeout_at(deadline, client::send_one(sender, spec)).await {
        Ok(Ok(answer)) => {
            if measured {
                out.tally.record(&answer, due.elapsed());
            }
            !answer.close
        }
        Ok(Err(e)) => {
            out.tally.connection_error(format!("request: {e}"));
            false
        }
        Err(_) => {
            out.unanswered += u64::from(measured);
            false
        }
    }
}

/// The measured times from `due` on, never sent: the drain ended first.
fn count_unsent(mut due: Instant, period: Duration, times: Times, out: &mut Outcome) {
    while due < times.end {
        if due >= times.measure_start {
            out.due += 1;
            out.unsent += 1;
        }
        due += period;
    }
}
