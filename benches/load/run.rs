//! Runs the plan's write-path passes: a fresh server per group, each
//! scenario's closed-loop window (the gateway's store requests scraped at
//! both ends of it), then its open-loop steps against the same server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::sync::watch;

use super::client::{self, LoadSpec, Phases, Tally};
use super::moto::Moto;
use super::open_loop::{self, Schedule};
use super::plan::{Group, Plan, Scenario, Target};
use super::report::{OpenStep, Row};
use super::server::{self, ServerProcess};
use super::{limits, scrape, Bodies};

const SCRAPE_TIMEOUT: Duration = Duration::from_secs(30);

/// Every pass, round by round; rows come back in plan order within a round.
pub fn run_plan(runtime: &Runtime, plan: &Plan, bodies: &Bodies) -> Vec<Row> {
    let moto = plan.needs_moto().then(Moto::start);
    let mut rows = Vec::new();
    for (pass, p) in plan.passes.iter().enumerate() {
        for round in 0..p.rounds {
            let mut order: Vec<(usize, &Group)> = p.groups.iter().enumerate().collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for (position, group) in order {
                let server = ServerProcess::start(group.first(), moto.as_ref());
                for scenario in &group.scenarios {
                    let mut row = run_scenario(runtime, plan, scenario, &server, bodies);
                    (row.pass, row.round, row.position) = (pass, round, position);
                    rows.push(row);
                }
            }
        }
    }
    rows.sort_by_key(|row| (row.pass, row.round, row.position));
    rows
}

fn run_scenario(
    runtime: &Runtime,
    plan: &Plan,
    scenario: &Scenario,
    server: &ServerProcess,
    bodies: &Bodies,
) -> Row {
    limits::check_open_files(scenario);
    let body = bodies.get(scenario.body);
    eprintln!(
        "load: {} ({} store, {} profile) against {} at {}: {} connections, {:?} warm-up, {:?} measured",
        scenario.name,
        scenario.store.name(),
        scenario.profile.name(),
        server.label,
        server.addr,
        scenario.conns,
        plan.warmup,
        plan.measure
    );
    let spec = Arc::new(LoadSpec {
        addr: server.addr,
        host: server.addr.to_string(),
        authorization: server.authorization.clone(),
        body: body.bytes.clone(),
        respond_async: scenario.respond_async,
        websocket: scenario.websocket,
    });
    let (tally, store, server_cpu_secs) =
        runtime.block_on(closed_loop(spec.clone(), plan, scenario, server));
    let peak_rss_kib = server.peak_rss_kib();
    let open = match scenario.open_loop {
        true => open_steps(runtime, plan, &spec, &tally),
        false => Vec::new(),
    };
    Row {
        scenario: *scenario,
        pass: 0,
        round: 0,
        position: 0,
        secs: plan.measure.as_secs_f64(),
        events_per_request: body.events,
        body_len: body.bytes.len(),
        tally,
        store,
        server_cpu_secs,
        peak_rss_kib,
        open,
        peak_rss_after_open_kib: server.peak_rss_kib(),
    }
}

/// The closed-loop window, the store requests the gateway made in it
/// (`None` for a ceiling and the auth and metrics-off gateways), and the
/// CPU seconds the server used in it.
async fn closed_loop(
    spec: Arc<LoadSpec>,
    plan: &Plan,
    scenario: &Scenario,
    server: &ServerProcess,
) -> (Tally, Option<BTreeMap<String, u64>>, Option<f64>) {
    let (start, started) = watch::channel(None);
    let cpu = tokio::spawn(cpu_over_window(server.pid(), started.clone()));
    // The auth gateway's `/metrics` needs a key; the others without have none.
    let scrape = matches!(scenario.target, Target::Gateway | Target::SchemaGateway);
    let scrape = scrape.then(|| tokio::spawn(store_requests(server.addr, started)));
    let phases = client::PhaseLengths {
        warmup: plan.warmup,
        measure: plan.measure,
    };
    let tally = client::run(spec, scenario.conns, phases, start).await;
    let store = match scrape {
        Some(task) => task.await.expect("the /metrics scrape panicked"),
        None => None,
    };
    let cpu = cpu.await.expect("the CPU sampler panicked");
    (tally, store, cpu)
}

/// CPU seconds process `pid` used over the measured window.
async fn cpu_over_window(pid: u32, mut started: watch::Receiver<Option<Phases>>) -> Option<f64> {
    let phases = {
        let signal = started.wait_for(Option::is_some).await.ok()?;
        (*signal)?
    };
    tokio::time::sleep_until(phases.measure_start).await;
    let before = server::cpu_secs(pid)?;
    tokio::time::sleep_until(phases.end).await;
    Some(server::cpu_secs(pid)? - before)
}

/// `sluice_store_requests_total` by `op` over the measured window, once
/// the load announces it.
async fn store_requests(
    addr: std::net::SocketAddr,
    mut started: watch::Receiver<Option<Phases>>,
) -> Option<BTreeMap<String, u64>> {
    let phases = {
        let signal = started.wait_for(Option::is_some).await.ok()?;
        (*signal)?
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(SCRAPE_TIMEOUT)
        .build()
        .expect("build the /metrics client");
    let (start, end) = (phases.measure_start.into_std(), phases.end.into_std());
    Some(scrape::store_requests_over(&http, addr, start, end).await)
}

/// One open-loop step per fraction of the closed-loop req/s.
fn open_steps(
    runtime: &Runtime,
    plan: &Plan,
    spec: &Arc<LoadSpec>,
    closed: &Tally,
) -> Vec<OpenStep> {
    let peak = closed.ok as f64 / plan.measure.as_secs_f64();
    let p50 = Duration::from_micros(closed.latency_us.value_at_quantile(0.5));
    let p99 = Duration::from_micros(closed.latency_us.value_at_quantile(0.99));
    let mut steps = Vec::new();
    for &fraction in &plan.open.fractions {
        let rate = peak * fraction;
        if rate < 1.0 {
            continue;
        }
        let schedule = Schedule {
            rate,
            conns: open_loop::prewarm_conns(rate, p50),
            max_conns: limits::sockets_allowed(open_loop::max_conns(rate, p99)),
            warmup: plan.open.warmup,
            measure: plan.open.measure,
        };
        limits::check_sockets("open loop", schedule.conns, "SLUICE_LOAD_OPEN");
        eprintln!(
            "load:   open loop at {:.0} % of {peak:.0} req/s = {rate:.0} req/s, {} connections to start (at most {}), {:?} measured",
            fraction * 100.0,
            schedule.conns,
            schedule.max_conns,
            schedule.measure
        );
        let outcome = runtime.block_on(open_loop::run(spec.clone(), schedule));
        steps.push(OpenStep {
            fraction,
            schedule,
            outcome,
        });
    }
    steps
}
