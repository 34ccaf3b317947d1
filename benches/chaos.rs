//! The kill -9 reliability campaign: three `sluice serve` processes share one
//! store while clients drive durable and async traffic and a chaos loop
//! SIGKILLs a random gateway and restarts it, round after round. At the end
//! the log is read straight from the store and every answer is held to it:
//! each durable ack's events exactly once at the acked offsets, offsets and
//! seqs dense, every listed commit record's segment present, no id twice,
//! and async (202) events missing only if their gateway was killed within
//! the loss window after accepting them. Prints one table row per store and
//! exits non-zero if any of that fails.
//!
//! - `cargo bench --bench chaos`: the full campaign, 100 rounds per store
//!   (moto S3 and the file store, which fsyncs).
//! - `cargo test --all-targets` runs this binary without `--bench`: 5 rounds
//!   per store, same checks.
//!
//! Environment:
//! - `SLUICE_CHAOS_ROUNDS` (full 100, smoke 5): kill + restart rounds per store.
//! - `SLUICE_CHAOS_STORES` (default `moto,file`).
//! - `SLUICE_CHAOS_SEED`: replay a run's kill choices and timing (printed at start).
//! - `SLUICE_CHAOS_CLIENTS` (default 16): durable client tasks; 2 more send async.
//! - `SLUICE_CHAOS_KILL_MS` (full `300..1500`, smoke `200..800`): the random
//!   wait before each kill.
//! - `SLUICE_CHAOS_MAX_SECS` (full 300, smoke 60): rounds stop early past this.
//! - `SLUICE_CHAOS_COMMIT_MS` (default 2000): the commit time allowed in the
//!   async loss window (`batch.max_age_ms` + this).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

fn main() {
    let full = std::env::args().skip(1).any(|arg| arg == "--bench");
    let plan = plan::Plan::from_env(full);
    println!(
        "chaos: seed {} (replay with SLUICE_CHAOS_SEED={}), {} rounds per store, stores {:?}",
        plan.seed, plan.seed, plan.rounds, plan.stores
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the campaign's tokio runtime");
    let mut rows = Vec::new();
    for (i, store) in plan.stores.iter().enumerate() {
        let seed = plan.seed.wrapping_add(i as u64);
        rows.push(runtime.block_on(campaign::run(&plan, *store, seed)));
    }
    report::print(&rows);
    let failures: Vec<String> = rows.iter().flat_map(report::Row::failures).collect();
    if !failures.is_empty() {
        eprintln!("chaos: FAILED");
        for f in &failures {
            eprintln!("  {f}");
        }
        std::process::exit(1);
    }
    println!("chaos: every invariant held");
}

/// Reads a number (or `a..b` range) from the environment; a bad value stops the run.
fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T>
where
    T::Err: std::fmt::Display,
{
    let raw = std::env::var(name).ok()?;
    let value = raw
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name}={raw:?} is not valid: {e}"));
    Some(value)
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// The knobs of one campaign.
mod plan {
    use std::time::Duration;

    use super::{env_parse, millis};

    /// Where the three gateways keep their shared log.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum StoreChoice {
        /// A moto S3 server started by this binary.
        Moto,
        /// A temporary directory (`file://`, fsync on every write).
        File,
    }

    pub struct Plan {
        pub rounds: usize,
        pub stores: Vec<StoreChoice>,
        pub seed: u64,
        pub gateways: usize,
        pub durable_clients: usize,
        pub async_clients: usize,
        /// Random wait before each kill, in ms (inclusive).
        pub kill_ms: (u64, u64),
        /// Rounds stop being started after this.
        pub max_time: Duration,
        /// The gateways' `batch.max_age_ms`.
        pub max_age: Duration,
        /// Commit time allowed on top of `max_age` in the async loss window.
        pub commit: Duration,
        /// Partitions of the stream: fewer than gateways, so writers race.
        pub partitions: u32,
    }

    impl Plan {
        pub fn from_env(full: bool) -> Plan {
            Plan {
                rounds: env_parse("SLUICE_CHAOS_ROUNDS").unwrap_or(if full { 100 } else { 5 }),
                stores: stores(),
                seed: env_parse("SLUICE_CHAOS_SEED").unwrap_or_else(clock_seed),
                gateways: 3,
                durable_clients: env_parse("SLUICE_CHAOS_CLIENTS").unwrap_or(16),
                async_clients: 2,
                kill_ms: kill_ms(full),
                max_time: Duration::from_secs(
                    env_parse("SLUICE_CHAOS_MAX_SECS").unwrap_or(if full { 300 } else { 60 }),
                ),
                max_age: millis(200),
                commit: millis(env_parse("SLUICE_CHAOS_COMMIT_MS").unwrap_or(2000)),
                partitions: 2,
            }
        }

        /// The async loss window: an event accepted this long before its
        /// gateway was killed may be lost (it was not flushed yet).
        pub fn window(&self) -> Duration {
            self.max_age + self.commit
        }

        /// The gateways' configuration file.
        pub fn config(&self) -> String {
            format!(
                "[streams]\npartitions = {}\n[batch]\nmax_age_ms = {}\n",
                self.partitions,
                self.max_age.as_millis()
            )
        }
    }

    fn stores() -> Vec<StoreChoice> {
        let raw = std::env::var("SLUICE_CHAOS_STORES").unwrap_or_else(|_| "moto,file".into());
        raw.split(',')
            .map(|s| match s.trim() {
                "moto" => StoreChoice::Moto,
                "file" => StoreChoice::File,
                other => panic!("SLUICE_CHAOS_STORES: unknown store {other:?} (moto, file)"),
            })
            .collect()
    }

    fn kill_ms(full: bool) -> (u64, u64) {
        let Ok(raw) = std::env::var("SLUICE_CHAOS_KILL_MS") else {
            return if full { (300, 1500) } else { (200, 800) };
        };
        let parse = |s: &str| -> u64 {
            s.trim()
                .parse()
                .unwrap_or_else(|e| panic!("SLUICE_CHAOS_KILL_MS={raw:?}: {e} (want MIN..MAX)"))
        };
        let (lo, hi) = raw
            .split_once("..")
            .unwrap_or_else(|| panic!("SLUICE_CHAOS_KILL_MS={raw:?}: want MIN..MAX"));
        let (lo, hi) = (parse(lo), parse(hi));
        assert!(lo <= hi, "SLUICE_CHAOS_KILL_MS={raw:?}: MIN > MAX");
        (lo, hi)
    }

    fn clock_seed() -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        now.as_nanos() as u64 ^ u64::from(std::process::id())
    }
}

/// The gateways of one campaign, as the chaos loop owns them and as the
/// clients see them (a name and URL per slot; none while a slot restarts).
mod fleet {
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use super::common::process::Gateway;

    /// Where a client sends its next request.
    #[derive(Clone)]
    pub struct Target {
        pub name: String,
        pub url: String,
    }

    /// The live address set, shared with the clients.
    pub type Targets = Arc<Mutex<Vec<Option<Target>>>>;

    pub struct Fleet {
        env: Vec<(String, String)>,
        config: String,
        gateways: Vec<Gateway>,
        pub targets: Targets,
        /// When each killed gateway process was SIGKILLed.
        pub kills: HashMap<String, Instant>,
        /// Processes found dead before their kill (a crash).
        pub crashed: Vec<String>,
        started: usize,
        /// Every address a gateway of this fleet listened on.
        addrs: HashSet<String>,
    }

    impl Fleet {
        pub fn start(count: usize, env: Vec<(String, String)>, config: String) -> Fleet {
            let mut fleet = Fleet {
                env,
                config,
                gateways: Vec::new(),
                targets: Arc::new(Mutex::new(Vec::new())),
                kills: HashMap::new(),
                crashed: Vec::new(),
                started: 0,
                addrs: HashSet::new(),
            };
            for _ in 0..count {
                let gw = fleet.spawn();
                fleet.targets.lock().unwrap().push(Some(target(&gw)));
                fleet.gateways.push(gw);
            }
            fleet
        }

        /// A new gateway on an address no earlier one had: a request a
        /// client aimed at a killed gateway must not reach its successor
        /// (its answer would be credited to the wrong process).
        fn spawn(&mut self) -> Gateway {
            for _ in 0..10 {
                let name = format!("gw{}", self.started);
                self.started += 1;
                let gw = Gateway::spawn(&name, &self.env, Some(&self.config));
                if self.addrs.insert(gw.addr.clone()) {
                    return gw;
                }
            }
            panic!("10 gateways in a row got a port an earlier one had");
        }

        /// SIGKILL the gateway in `slot` and start a new one in its place.
        pub fn kill_and_restart(&mut self, slot: usize) {
            self.targets.lock().unwrap()[slot] = None;
            let old = &mut self.gateways[slot];
            if let Some(status) = old.exited() {
                self.crashed
                    .push(format!("{} exited by itself: {status}", old.name));
            }
            old.kill();
            self.kills.insert(old.name.clone(), Instant::now());
            let new = self.spawn();
            self.targets.lock().unwrap()[slot] = Some(target(&new));
            self.gateways[slot] = new;
        }

        /// SIGTERM every gateway and wait (bounded) for each to exit cleanly.
        /// Returns what went wrong.
        pub async fn stop(&mut self) -> Vec<String> {
            self.targets
                .lock()
                .unwrap()
                .iter_mut()
                .for_each(|t| *t = None);
            let mut problems = Vec::new();
            for gw in &self.gateways {
                gw.sigterm();
            }
            for gw in &mut self.gateways {
                match gw.wait_exit(Duration::from_secs(45)).await {
                    Some(status) if status.success() => {}
                    Some(status) => {
                        problems.push(format!("{} exited {status} on SIGTERM", gw.name))
                    }
                    None => problems.push(format!("{} still running 45 s after SIGTERM", gw.name)),
                }
            }
            problems
        }
    }

    fn target(gw: &Gateway) -> Target {
        Target {
            name: gw.name.clone(),
            url: gw.url(),
        }
    }
}

/// The clients: tasks posting events with unique ids round-robin over the
/// live gateways until told to stop, each recording every answer.
mod traffic {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::task::JoinHandle;

    use super::common::process::{event, Outcome, Sent};
    use super::fleet::{Target, Targets};

    /// Pause after a failed request, or while no gateway is up.
    const BACKOFF: Duration = Duration::from_millis(20);
    /// Pause between an async client's requests: a smaller stream than the durable one.
    const ASYNC_PACE: Duration = Duration::from_millis(25);

    pub struct Traffic {
        stop: Arc<AtomicBool>,
        tasks: Vec<JoinHandle<Vec<Sent>>>,
    }

    impl Traffic {
        pub fn start(
            targets: &Targets,
            durable: usize,
            async_clients: usize,
            tag: &str,
        ) -> Traffic {
            let stop = Arc::new(AtomicBool::new(false));
            let client = super::common::process::client();
            let tasks = (0..durable + async_clients)
                .map(|task| {
                    let client = Client {
                        http: client.clone(),
                        targets: targets.clone(),
                        stop: stop.clone(),
                        tag: format!("{tag}-c{task}"),
                        respond_async: task >= durable,
                    };
                    tokio::spawn(client.run(task))
                })
                .collect();
            Traffic { stop, tasks }
        }

        /// Stop every client and collect what they sent (bounded by the
        /// clients' request timeout).
        pub async fn finish(self) -> Vec<Sent> {
            self.stop.store(true, Ordering::Relaxed);
            let mut all = Vec::new();
            for task in self.tasks {
                let joined = tokio::time::timeout(Duration::from_secs(60), task).await;
                all.extend(
                    joined
                        .expect("a client did not stop within 60 s")
                        .expect("client panicked"),
                );
            }
            all
        }
    }

    struct Client {
        http: reqwest::Client,
        targets: Targets,
        stop: Arc<AtomicBool>,
        tag: String,
        respond_async: bool,
    }

    impl Client {
        async fn run(self, task: usize) -> Vec<Sent> {
            let mut sent = Vec::new();
            let mut turn = task;
            while !self.stop.load(Ordering::Relaxed) {
                turn += 1;
                let Some(target) = pick(&self.targets, turn) else {
                    tokio::time::sleep(BACKOFF).await;
                    continue;
                };
                let events = self.events(sent.len());
                let one = Sent::post(
                    &self.http,
                    &target.name,
                    &target.url,
                    events,
                    self.respond_async,
                )
                .await;
                if matches!(one.outcome, Outcome::Failed(_)) {
                    tokio::time::sleep(BACKOFF).await;
                } else if self.respond_async {
                    tokio::time::sleep(ASYNC_PACE).await;
                }
                sent.push(one);
            }
            sent
        }

        /// Request `n`: one event, or every fourth a batch of 2–5.
        fn events(&self, n: usize) -> Vec<(String, String)> {
            let count = if n % 4 == 3 { 2 + (n / 4) % 4 } else { 1 };
            (0..count)
                .map(|k| event(format!("{}-r{n}-e{k}", self.tag), k))
                .collect()
        }
    }

    /// The `turn`-th live gateway, round-robin over the slots.
    fn pick(targets: &Targets, turn: usize) -> Option<Target> {
        let targets = targets.lock().unwrap();
        let n = targets.len();
        (0..n).find_map(|i| targets[(turn + i) % n].clone())
    }
}

/// One campaign on one store: start the fleet and the clients, run the
/// rounds, stop everything, read the log back and judge it.
mod campaign {
    use std::time::Instant;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use sluice::store::Store;
    use tokio::task::block_in_place;

    use super::common::process::{bucket_store, read_log};
    use super::fleet::Fleet;
    use super::plan::{Plan, StoreChoice};
    use super::report::Row;
    use super::traffic::Traffic;
    use super::{common, millis};

    /// The shared store of one campaign; a file store's directory goes with it.
    struct Site {
        label: &'static str,
        env: Vec<(String, String)>,
        store: Store,
        _dir: Option<tempfile::TempDir>,
    }

    fn site(choice: StoreChoice) -> Site {
        match choice {
            StoreChoice::Moto => {
                let bucket = common::new_bucket();
                Site {
                    label: "moto",
                    env: common::s3_env(&bucket),
                    store: bucket_store(&bucket),
                    _dir: None,
                }
            }
            StoreChoice::File => {
                let dir = tempfile::Builder::new()
                    .prefix("sluice-chaos-")
                    .tempdir()
                    .expect("create a temporary directory for the file store");
                let url = format!("file://{}", dir.path().display());
                Site {
                    label: "file (fsync)",
                    store: Store::open(&url).expect("open the file store"),
                    env: vec![("SLUICE_STORE".into(), url)],
                    _dir: Some(dir),
                }
            }
        }
    }

    pub async fn run(plan: &Plan, choice: StoreChoice, seed: u64) -> Row {
        let started = Instant::now();
        let site = block_in_place(|| site(choice));
        // Declared after `site`: the processes die before the directory goes.
        let mut fleet =
            block_in_place(|| Fleet::start(plan.gateways, site.env.clone(), plan.config()));
        let tag = format!("{choice:?}").to_lowercase();
        let traffic = Traffic::start(
            &fleet.targets,
            plan.durable_clients,
            plan.async_clients,
            &tag,
        );
        let rounds = chaos(plan, &mut fleet, seed, site.label, started).await;
        let sent = traffic.finish().await;
        let mut problems = fleet.stop().await;
        problems.append(&mut fleet.crashed);
        let view = read_log(&site.store, plan.partitions).await;
        let judged = super::check::Judged::new(plan, &sent, &view, &fleet.kills);
        Row::new(
            site.label,
            rounds,
            fleet.kills.len(),
            judged,
            problems,
            started.elapsed(),
        )
    }

    /// Kill a random gateway at a random moment, restart it; `plan.rounds`
    /// times (fewer if `plan.max_time` runs out). Returns the rounds run.
    async fn chaos(
        plan: &Plan,
        fleet: &mut Fleet,
        seed: u64,
        label: &str,
        started: Instant,
    ) -> usize {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut rounds = 0;
        while rounds < plan.rounds && started.elapsed() < plan.max_time {
            // Both drawn before acting, so a seed replays the same choices.
            let wait = rng.random_range(plan.kill_ms.0..=plan.kill_ms.1);
            let slot = rng.random_range(0..plan.gateways);
            tokio::time::sleep(millis(wait)).await;
            block_in_place(|| fleet.kill_and_restart(slot));
            rounds += 1;
            if rounds % 10 == 0 || rounds == plan.rounds {
                eprintln!(
                    "chaos {label}: round {rounds}/{}, {:.0?}",
                    plan.rounds,
                    started.elapsed()
                );
            }
        }
        if rounds < plan.rounds {
            eprintln!(
                "chaos {label}: only {rounds} of {} rounds within {:?}",
                plan.rounds, plan.max_time
            );
        }
        rounds
    }
}

/// Judging a campaign: every answer held to the log as read from the store.
mod check {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use super::common::process::{audit, LogView, Outcome, Sent};
    use super::plan::Plan;

    /// The verdicts, counted.
    pub struct Judged {
        pub acks: usize,
        pub verified: usize,
        pub lost: Vec<String>,
        pub duplicated: Vec<String>,
        pub async_accepted: usize,
        pub async_in_window: usize,
        pub async_outside: Vec<String>,
        /// Longest time from a lost async event's 202 to its gateway's kill.
        pub async_oldest_loss: Option<Duration>,
        pub other: Vec<String>,
        pub failed_requests: usize,
        /// Failed (unanswered) requests whose events are in the log anyway.
        pub failed_committed: usize,
        pub log_events: u64,
        pub records: u64,
    }

    impl Judged {
        pub fn new(
            plan: &Plan,
            sent: &[Sent],
            view: &LogView,
            kills: &HashMap<String, Instant>,
        ) -> Judged {
            let audit = audit(sent, view);
            let mut judged = Judged {
                acks: sent.iter().filter(|s| s.is_durable()).count(),
                verified: audit.acked.len(),
                lost: audit.lost,
                duplicated: audit.duplicated,
                async_accepted: sent.iter().filter(|s| s.outcome == Outcome::Async).count(),
                async_in_window: 0,
                async_outside: Vec::new(),
                async_oldest_loss: None,
                other: audit.other,
                failed_requests: 0,
                failed_committed: 0,
                log_events: view.total,
                records: view.records,
            };
            judged.count_failed(sent, view);
            let witnesses = last_durable_send(sent);
            for &i in &audit.async_missing {
                judged.judge_async_loss(plan, &sent[i], kills, &witnesses);
            }
            judged
        }

        fn count_failed(&mut self, sent: &[Sent], view: &LogView) {
            for s in sent
                .iter()
                .filter(|s| matches!(s.outcome, Outcome::Failed(_)))
            {
                self.failed_requests += 1;
                if view.by_id.contains_key(&s.events[0].0) {
                    self.failed_committed += 1;
                }
            }
        }

        /// A 202'd request with events missing. Allowed only if its gateway
        /// was SIGKILLed within the window after the 202, and no durable
        /// request sent to that gateway after the 202 was acked (one stream's
        /// segments commit in order, so such an ack proves the async events'
        /// flush had completed).
        fn judge_async_loss(
            &mut self,
            plan: &Plan,
            s: &Sent,
            kills: &HashMap<String, Instant>,
            witnesses: &HashMap<&str, Instant>,
        ) {
            let id = &s.events[0].0;
            let Some(killed) = kills.get(&s.gateway) else {
                let why = format!("{id}: 202 via {}, which was only SIGTERMed", s.gateway);
                return self.async_outside.push(why);
            };
            let age = killed.saturating_duration_since(s.answered);
            if age > plan.window() {
                let why = format!(
                    "{id}: 202 via {} {age:?} before its kill (window {:?})",
                    s.gateway,
                    plan.window()
                );
                return self.async_outside.push(why);
            }
            if witnesses
                .get(s.gateway.as_str())
                .is_some_and(|w| *w > s.answered)
            {
                let why = format!(
                    "{id}: 202 via {}, and a durable request sent there later was acked",
                    s.gateway
                );
                return self.async_outside.push(why);
            }
            self.async_in_window += 1;
            self.async_oldest_loss = self.async_oldest_loss.max(Some(age));
        }
    }

    /// Per gateway, when the last durable request it acked was sent.
    fn last_durable_send(sent: &[Sent]) -> HashMap<&str, Instant> {
        let mut last: HashMap<&str, Instant> = HashMap::new();
        for s in sent.iter().filter(|s| s.is_durable()) {
            let at = last.entry(s.gateway.as_str()).or_insert(s.started);
            *at = (*at).max(s.started);
        }
        last
    }
}

/// The table.
mod report {
    use std::time::Duration;

    use super::check::Judged;

    pub struct Row {
        store: &'static str,
        rounds: usize,
        kills: usize,
        judged: Judged,
        problems: Vec<String>,
        elapsed: Duration,
    }

    impl Row {
        pub fn new(
            store: &'static str,
            rounds: usize,
            kills: usize,
            judged: Judged,
            problems: Vec<String>,
            elapsed: Duration,
        ) -> Row {
            Row {
                store,
                rounds,
                kills,
                judged,
                problems,
                elapsed,
            }
        }

        /// Every broken invariant, with up to five examples of each kind.
        pub fn failures(&self) -> Vec<String> {
            let j = &self.judged;
            let mut out = Vec::new();
            let kinds = [
                ("lost acked events", &j.lost),
                ("duplicates", &j.duplicated),
                ("async losses outside the window", &j.async_outside),
                ("other log problems", &j.other),
                ("process problems", &self.problems),
            ];
            for (kind, list) in kinds {
                if !list.is_empty() {
                    let shown = &list[..list.len().min(5)];
                    out.push(format!("{}: {} {kind}: {shown:?}", self.store, list.len()));
                }
            }
            if j.acks == 0 || j.async_accepted == 0 {
                out.push(format!(
                    "{}: no durable or no async request was accepted; nothing was tested",
                    self.store
                ));
            }
            out
        }
    }

    pub fn print(rows: &[Row]) {
        println!();
        println!("| store | rounds | kills | acks | events verified | lost | duplicated offsets | async accepted | async lost (in window) | async lost (outside window) | elapsed s |");
        println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for r in rows {
            let j = &r.judged;
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
                r.store,
                r.rounds,
                r.kills,
                j.acks,
                j.verified,
                j.lost.len(),
                j.duplicated.len(),
                j.async_accepted,
                j.async_in_window,
                j.async_outside.len(),
                r.elapsed.as_secs_f64()
            );
        }
        println!();
        for r in rows {
            let j = &r.judged;
            let oldest = j
                .async_oldest_loss
                .map_or("-".into(), |d| format!("{} ms", d.as_millis()));
            println!(
                "{}: log holds {} events in {} records (every segment present); {} requests unanswered, {} of them committed whole; oldest async loss {oldest} before its kill",
                r.store, j.log_events, j.records, j.failed_requests, j.failed_committed
            );
        }
        println!();
    }
}
