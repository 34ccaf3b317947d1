//! Open-loop load at a fixed arrival rate: request j is due at
//! `first + j / rate`, whatever happened to the ones before it, and its
//! latency runs from that time, so a server that stalls is charged for every
//! request it kept waiting (coordinated omission corrected, as in wrk2).
//!
//! Requests take a keep-alive connection from a pool, as a fleet of clients
//! with connection pools does: an idle one if there is one, else a new one
//! (at most `Schedule::max_conns` at once). So the connections follow the requests in
//! flight instead of a guess made before the step; a fixed set of thousands
//! of connections, each on its own timer, measured the load client's own
//! timer and socket cost on the shared 2 cores as much as the gateway.
//!
//! A request that starts more than `LATE` after its time is counted late
//! (its wait is in its latency). Requests due in the window are still sent
//! after it ends, up to `DRAIN` later; one not started by then is counted
//! unsent, one started but not answered by then unanswered: neither has a
//! latency, so when they are not zero the quantiles are a lower bound.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout_at, Instant};

use super::client::{self, LoadSpec, Sender, Tally, CONNECT_TIMEOUT};

/// A start this far behind schedule counts as late.
pub const LATE: Duration = Duration::from_millis(5);
/// How long after the window the requests due in it may still be sent and answered.
pub const DRAIN: Duration = Duration::from_secs(5);
const MIN_CONNS: usize = 4;
/// An idle connection older than this is closed rather than reused: the
/// gateway's `server.header_read_timeout_ms` (10 s by default) closes idle
/// keep-alive connections, and a request sent on one that is closing
/// would fail for the client's reason, not the gateway's.
const IDLE_MAX: Duration = Duration::from_secs(5);
/// Below the gateway's default `server.max_connections` (10 000).
pub const MAX_CONNS: usize = 8000;

#[derive(Clone, Copy)]
pub struct Schedule {
    /// Requests per second.
    pub rate: f64,
    /// Connections opened before the schedule starts.
    pub conns: usize,
    /// Connections open at once at most ([`max_conns`], and fewer where
    /// `ulimit -n` is lower): a request finding all busy waits for one.
    pub max_conns: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

/// What one step saw.
pub struct Outcome {
    /// 2xx latencies from the intended send time; answers of measured requests.
    pub tally: Tally,
    /// Requests due in the measured window.
    pub due: u64,
    pub late: u64,
    pub unsent: u64,
    pub unanswered: u64,
    /// Connections opened over the whole step, reopens included.
    pub conns: usize,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            tally: Tally::new(),
            due: 0,
            late: 0,
            unsent: 0,
            unanswered: 0,
            conns: 0,
        }
    }
}

/// Connections to open before a step at `rate`: the requests in flight if
/// each took `typical` (the closed-loop median, which saturation only
/// lengthens), so the pool seldom grows while measuring. Idle ones cost
/// the client nothing: the pool hands out the most recently used first.
pub fn prewarm_conns(rate: f64, typical: Duration) -> usize {
    in_flight(rate, typical)
}

/// Connections a step at `rate` may grow to: two per request in flight
/// if each took `worst` (the closed-loop p99, under saturation). Past it a
/// request waits for a connection (its wait is in its latency): when the
/// client itself falls behind its schedule, more connections would only
/// add connection storms to its overload.
pub fn max_conns(rate: f64, worst: Duration) -> usize {
    in_flight(rate, worst * 2)
}

/// Requests in flight at `rate` if each took `each`, within the pool's bounds.
fn in_flight(rate: f64, each: Duration) -> usize {
    let n = rate * each.as_secs_f64();
    (n.ceil() as usize).clamp(MIN_CONNS, MAX_CONNS)
}

/// When the schedule starts, when measuring starts, when it ends.
#[derive(Clone, Copy)]
struct Times {
    first: Instant,
    measure_start: Instant,
    end: Instant,
}

impl Times {
    fn deadline(&self) -> Instant {
        self.end + DRAIN
    }
}

/// What every request of a step shares.
struct Shared {
    spec: Arc<LoadSpec>,
    times: Times,
    /// Idle keep-alive connections and when each went idle, most recently
    /// used last.
    idle: Mutex<Vec<(Sender, Instant)>>,
    /// One permit per request holding a connection: as many connections
    /// as permits are open at most, since a request takes an idle one first.
    slots: Semaphore,
    out: Mutex<Outcome>,
}

impl Shared {
    fn record(&self, f: impl FnOnce(&mut Outcome)) {
        f(&mut self.out.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// An idle connection that is open and fresh, else a new one (`Err`:
    /// why none could be opened by `deadline`).
    async fn take(&self, deadline: Instant) -> Result<Sender, String> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                Some((sender, since)) if !sender.is_closed() && since.elapsed() < IDLE_MAX => {
                    return Ok(sender)
                }
                Some(_) => continue,
                None => break,
            }
        }
        self.open(deadline).await
    }

    async fn open(&self, deadline: Instant) -> Result<Sender, String> {
        let sender = client::try_connect(&self.spec, deadline).await?;
        self.record(|out| out.conns += 1);
        Ok(sender)
    }

    fn give_back(&self, sender: Sender) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((sender, Instant::now()));
    }
}

/// Opens the first connections, then sends on schedule through the warm-up
/// and the measured window, and waits for the answers (up to `DRAIN`).
pub async fn run(spec: Arc<LoadSpec>, schedule: Schedule) -> Outcome {
    let first_conns = prewarm(&spec, schedule.conns.min(schedule.max_conns)).await;
    let first = Instant::now() + Duration::from_millis(20);
    let measure_start = first + schedule.warmup;
    let mut out = Outcome::new();
    out.conns = first_conns.len();
    let shared = Arc::new(Shared {
        spec,
        times: Times {
            first,
            measure_start,
            end: measure_start + schedule.measure,
        },
        idle: Mutex::new(first_conns),
        slots: Semaphore::new(schedule.max_conns),
        out: Mutex::new(out),
    });
    dispatch(&shared, schedule.rate).await;
    let out = into_inner(shared).out;
    out.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// `n` connections opened at once, idle from now. One that cannot be
/// opened is opened later by the request that needs it (and charged to
/// it), so failures here are not counted.
async fn prewarm(spec: &Arc<LoadSpec>, n: usize) -> Vec<(Sender, Instant)> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut opening = JoinSet::new();
    for _ in 0..n {
        let spec = spec.clone();
        opening.spawn(async move { client::try_connect(&spec, deadline).await.ok() });
    }
    let opened = opening.join_all().await.into_iter().flatten();
    opened.map(|sender| (sender, Instant::now())).collect()
}

/// The only owner of `shared` once every task holding it has ended.
fn into_inner(shared: Arc<Shared>) -> Shared {
    Arc::into_inner(shared).expect("every request task has ended")
}

/// Starts request j at `first + j / rate` until the window ends, then
/// waits for every request started. Requests the dispatcher reaches only
/// after the drain deadline are not started: they count as unsent.
async fn dispatch(shared: &Arc<Shared>, rate: f64) {
    let times = shared.times;
    let mut tasks = JoinSet::new();
    let mut j: u64 = 0;
    loop {
        let due = times.first + Duration::from_secs_f64(j as f64 / rate);
        if due >= times.end {
            break;
        }
        let now = Instant::now();
        if now >= times.deadline() {
            let measured = u64::from(due >= times.measure_start);
            shared
                .record(|out| (out.due, out.unsent) = (out.due + measured, out.unsent + measured));
        } else {
            if due > now {
                sleep_until(due).await;
            }
            tasks.spawn(request(shared.clone(), due));
        }
        j += 1;
        while tasks.try_join_next().is_some() {}
    }
    tasks.join_all().await;
}

/// One request due at `due`: a connection, the request, its answer.
async fn request(shared: Arc<Shared>, due: Instant) {
    let times = shared.times;
    let measured = due >= times.measure_start;
    let deadline = times.deadline();
    shared.record(|out| out.due += u64::from(measured));
    let Ok(Ok(_permit)) = timeout_at(deadline, shared.slots.acquire()).await else {
        shared.record(|out| out.unsent += u64::from(measured));
        return;
    };
    let mut sender = match shared.take(deadline).await {
        Ok(sender) => sender,
        Err(why) => {
            return shared.record(|out| {
                out.unsent += u64::from(measured);
                out.tally.first_failure.get_or_insert(why);
            })
        }
    };
    if measured && due.elapsed() > LATE {
        shared.record(|out| out.late += 1);
    }
    match timeout_at(deadline, client::send_one(&mut sender, &shared.spec)).await {
        Ok(Ok(answer)) => {
            let latency = due.elapsed();
            if measured {
                shared.record(|out| out.tally.record(&answer, latency));
            }
            if !answer.close {
                shared.give_back(sender);
            }
        }
        Ok(Err(e)) => shared.record(|out| out.tally.connection_error(format!("request: {e}"))),
        Err(_) => shared.record(|out| out.unanswered += u64::from(measured)),
    }
}
