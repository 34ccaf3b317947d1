//! Real gateway processes on one moto bucket: several writers sharing a log,
//! SIGKILL and restart, SIGTERM under load. Every acked event must be in the
//! log exactly once, at the offset its ack named; the log must stay dense.
//! The processes and the verifier live in `common::process` (the kill -9
//! campaign, `benches/chaos.rs`, uses them too).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{
    audit, bucket_store, client, event, heads, read_log, Gateway, LogView, Outcome, Sent,
};

/// Partitions of a stream (the gateway's default).
const DEFAULT_PARTITIONS: u32 = 4;

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// 1–5 distinct events with ids unique to (tag, task, request).
fn events_for(tag: &str, task: usize, req: usize) -> Vec<(String, String)> {
    let n = (task * 7 + req * 3) % 5 + 1;
    (0..n)
        .map(|k| event(format!("{tag}-t{task}-r{req}-e{k}"), k))
        .collect()
}

/// Counts successful answers so the test can act on progress, not on time.
type Progress = tokio::sync::watch::Sender<usize>;

/// Which kind of requests a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Durable,
    /// Durable and `Prefer: respond-async` alternately.
    Mixed,
    Async,
}

/// How a group of client tasks talks to one gateway.
#[derive(Clone)]
struct Load {
    client: reqwest::Client,
    gateway: String,
    url: String,
    /// Prefix of every event id this group sends.
    tag: String,
    /// Most requests per task.
    requests: usize,
    mode: Mode,
    /// Stop a task at its first failure (the gateway is going away).
    stop_on_failure: bool,
    progress: Option<Arc<Progress>>,
}

impl Load {
    fn new(client: &reqwest::Client, gw: &Gateway, tag: &str, requests: usize, mode: Mode) -> Load {
        Load {
            client: client.clone(),
            gateway: gw.name.clone(),
            url: gw.url(),
            tag: tag.to_string(),
            requests,
            mode,
            stop_on_failure: false,
            progress: None,
        }
    }

    /// Stop at the first failure, and count successes into a new watch.
    fn until_gone(mut self) -> (Load, tokio::sync::watch::Receiver<usize>) {
        let (tx, rx) = tokio::sync::watch::channel(0usize);
        self.stop_on_failure = true;
        self.progress = Some(Arc::new(tx));
        (self, rx)
    }

    fn spawn(&self, tasks: usize) -> Vec<tokio::task::JoinHandle<Vec<Sent>>> {
        (0..tasks).map(|t| self.clone().spawn_one(t)).collect()
    }

    /// One client task: up to `requests` posts, one at a time.
    fn spawn_one(self, task: usize) -> tokio::task::JoinHandle<Vec<Sent>> {
        tokio::spawn(async move {
            let mut sent = Vec::with_capacity(self.requests);
            for req in 0..self.requests {
                let events = events_for(&self.tag, task, req);
                let respond_async = match self.mode {
                    Mode::Durable => false,
                    Mode::Mixed => (task + req) % 2 == 1,
                    Mode::Async => true,
                };
                let one = Sent::post(
                    &self.client,
                    &self.gateway,
                    &self.url,
                    events,
                    respond_async,
                )
                .await;
                let failed = matches!(one.outcome, Outcome::Failed(_));
                sent.push(one);
                if !failed {
                    if let Some(p) = &self.progress {
                        p.send_modify(|n| *n += 1);
                    }
                } else if self.stop_on_failure {
                    break;
                }
            }
            sent
        })
    }
}

async fn join_all(handles: Vec<tokio::task::JoinHandle<Vec<Sent>>>) -> Vec<Sent> {
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("client task panicked"));
    }
    all
}

/// Wait (bounded) until `n` requests have succeeded.
async fn wait_progress(rx: &mut tokio::sync::watch::Receiver<usize>, n: usize, what: &str) {
    let waited = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|c| *c >= n)).await;
    match waited {
        Ok(Ok(_)) => {}
        _ => panic!("{what}: fewer than {n} successful requests within 30 s"),
    }
}

fn summary(sent: &[Sent]) -> String {
    let mut by: HashMap<(String, &str), usize> = HashMap::new();
    for s in sent {
        let kind = match s.outcome {
            Outcome::Durable { .. } => "200",
            Outcome::Async => "202",
            Outcome::Failed(_) => "failed",
        };
        *by.entry((s.gateway.clone(), kind)).or_default() += 1;
    }
    let mut parts: Vec<String> = by
        .into_iter()
        .map(|((g, k), n)| format!("{g}:{k}={n}"))
        .collect();
    parts.sort();
    let mut reasons: Vec<&str> = sent
        .iter()
        .filter_map(|s| match &s.outcome {
            Outcome::Failed(why) => Some(why.as_str()),
            _ => None,
        })
        .collect();
    reasons.sort();
    reasons.dedup();
    if !reasons.is_empty() {
        parts.push(format!("failures: {reasons:?}"));
    }
    parts.join(" ")
}

// ---------------------------------------------------------------------------
// Checking the log
// ---------------------------------------------------------------------------

/// The checks every test shares. Returns the acked (partition, offset) pairs.
fn verify(sent: &[Sent], view: &LogView) -> HashSet<(u32, u64)> {
    let audit = audit(sent, view);
    audit.assert_clean(sent);
    audit.acked
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_share_one_bucket() {
    let started = Instant::now();
    let bucket = common::new_bucket();
    // Two partitions for three writers: at least two gateways share a home
    // partition (pigeonhole), so the commit race is exercised on every run,
    // and writers that keep losing it move to the other partition.
    let partitions = 2;
    let toml = format!("[streams]\npartitions = {partitions}\n");
    let gateways: Vec<Gateway> = (0..3)
        .map(|g| Gateway::start_with(&format!("g{g}"), &bucket, Some(&toml)))
        .collect();
    let client = client();
    let mut handles = Vec::new();
    for (g, gw) in gateways.iter().enumerate() {
        handles.extend(Load::new(&client, gw, &format!("three-g{g}"), 15, Mode::Durable).spawn(8));
    }
    let sent = join_all(handles).await;
    eprintln!("three_gateways: {}", summary(&sent));
    // Healthy gateways on a healthy store: nothing may fail (a connection
    // error or 503 here is a bug, not bad luck).
    let failed = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Failed(_)))
        .count();
    assert_eq!(failed, 0, "requests failed: {}", summary(&sent));

    let view = read_log(&bucket_store(&bucket), partitions).await;
    let acked = verify(&sent, &view);
    let events: usize = sent.iter().map(|s| s.events.len()).sum();
    assert_eq!(acked.len(), events);
    assert_eq!(
        view.total, events as u64,
        "the log holds exactly what was acked"
    );
    eprintln!(
        "three_gateways: {events} events, heads {:?}, {:?}",
        view.heads,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_carries_on() {
    let started = Instant::now();
    let bucket = common::new_bucket();
    let client = client();

    let mut a = Gateway::start("A", &bucket);
    let (load, mut progress) = Load::new(&client, &a, "kill-a", 60, Mode::Durable).until_gone();
    let handles = load.spawn(8);
    wait_progress(&mut progress, 40, "gateway A").await;
    // SIGKILL while the clients keep posting (their requests are in flight).
    a.kill();
    let mut sent = join_all(handles).await;
    eprintln!("sigkill: before restart {}", summary(&sent));
    let before = heads(&bucket_store(&bucket), DEFAULT_PARTITIONS).await;

    let b = Gateway::start("A'", &bucket);
    let after = join_all(Load::new(&client, &b, "kill-b", 10, Mode::Durable).spawn(8)).await;
    eprintln!("sigkill: after restart {}", summary(&after));
    let restarted_acks: Vec<(u32, u64)> = after
        .iter()
        .filter_map(|s| match s.outcome {
            Outcome::Durable {
                partition,
                first_offset,
            } => Some((partition, first_offset)),
            _ => None,
        })
        .collect();
    assert!(
        !restarted_acks.is_empty(),
        "the restarted gateway acked nothing: {}",
        summary(&after)
    );
    // Acks after the restart continue after the log A left behind.
    for (p, first) in &restarted_acks {
        assert!(
            *first >= before[*p as usize],
            "restarted gateway acked partition {p} offset {first}, below the head {} left by A",
            before[*p as usize]
        );
    }
    sent.extend(after);

    let view = read_log(&bucket_store(&bucket), DEFAULT_PARTITIONS).await;
    let acked = verify(&sent, &view);
    let acked_events: usize = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Durable { .. }))
        .map(|s| s.events.len())
        .sum();
    assert_eq!(
        acked.len(),
        acked_events,
        "acked (partition, offset) pairs are distinct"
    );
    eprintln!(
        "sigkill: heads before restart {before:?}, at end {:?}, {:?}",
        view.heads,
        started.elapsed()
    );
}

/// Load a new gateway on `bucket`, SIGTERM it once `after` requests
/// succeeded, and require a clean exit. Returns every request sent.
async fn sigterm_round(
    bucket: &str,
    client: &reqwest::Client,
    name: &str,
    mode: Mode,
    after: usize,
) -> Vec<Sent> {
    let mut gw = Gateway::start(name, bucket);
    let tag = format!("term-{name}");
    let (load, mut progress) = Load::new(client, &gw, &tag, 60, mode).until_gone();
    let handles = load.spawn(8);
    wait_progress(&mut progress, after, name).await;
    let signalled = Instant::now();
    gw.sigterm();
    let sent = join_all(handles).await;
    let status = gw.wait_exit(Duration::from_secs(45)).await;
    let status = status.unwrap_or_else(|| {
        panic!(
            "gateway {name} did not exit within 45 s of SIGTERM; stderr:\n{}",
            gw.stderr()
        )
    });
    assert!(
        status.success(),
        "gateway {name} exited with {status} after SIGTERM; stderr:\n{}",
        gw.stderr()
    );
    eprintln!(
        "sigterm: {name} exited {:?} after the signal; {}",
        signalled.elapsed(),
        summary(&sent)
    );
    assert!(
        sent.iter().any(|s| s.outcome == Outcome::Async),
        "{name}: no async request was accepted: {}",
        summary(&sent)
    );
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_acked_event() {
    let started = Instant::now();
    let bucket = common::new_bucket();
    let client = client();
    // Durable and async requests in flight when the signal comes.
    let mut sent = sigterm_round(&bucket, &client, "T1", Mode::Mixed, 30).await;
    // Only async requests: their buffered events are committed by the
    // shutdown flush alone, never by a durable request's segment.
    sent.extend(sigterm_round(&bucket, &client, "T2", Mode::Async, 60).await);

    let view = read_log(&bucket_store(&bucket), DEFAULT_PARTITIONS).await;
    verify(&sent, &view);
    eprintln!("sigterm: heads {:?}, {:?}", view.heads, started.elapsed());
}
