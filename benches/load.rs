//! End-to-end load harness for the gateway.
//!
//! Drives `sluice serve` over loopback with N keep-alive HTTP/1.1 connections
//! (one tokio task per connection, one request in flight on each) and prints a
//! markdown table of throughput and latency per scenario, beside two ceilings
//! measured with the same client: a bare hyper server that only reads the body
//! (`ceiling-http-*`) and one that also parses every event and zstd-1
//! compresses the body (`ceiling-parse-zstd-*`). Every server is a child
//! process: the gateway is the `sluice` binary, a ceiling is this binary run
//! again with `--ceiling-server MODE`.
//!
//! `durable-1-auth` and `durable-100-auth` repeat `durable-1` and `durable-100`
//! (same bodies, same default connections) on a gateway started with
//! `--config`: one tenant, one API key (`Authorization: Bearer` on every
//! request) and rate limits on its key, stream and tenant, set so high they
//! never refuse. Each row is printed under its plain twin, followed by a line
//! with its req/s as a share of the twin's: the cost of the whole auth and
//! rate-limit path (the target is ≥ 95 %). `durable-100-schema` does the same
//! with a JSON Schema on the stream (≥ 80 %), and `durable-100-nometrics`
//! with `SLUICE_METRICS=false`, printed as "metrics cost: on = X % of off"
//! (≥ 97 %). One run of a pair is noisy (±15 % on the 2-core VM), so
//! `SLUICE_LOAD_ROUNDS=N` runs the selected list N times, in reverse order
//! every other round (A B, B A, …: a drift of the machine hits both alike),
//! and each share line gives the median of the per-round shares.
//!
//! Gateway scenarios run on a store (`file`, fsync on, the default; or
//! `moto`: a moto S3 server the harness starts on a free port, one bucket,
//! stopped at the end) and a batching profile (`default`, or `low-latency`:
//! `SLUICE_BATCH__MAX_AGE_MS=10`). After a gateway row's closed-loop run, the
//! same gateway can take open-loop steps (`open_loop`): requests at a fixed
//! arrival rate, a fraction of the req/s just measured, latency from each
//! request's intended send time (coordinated-omission corrected, like wrk2).
//! Each row also reports the gateway's store requests per million events
//! (`sluice_store_requests_total` on `/metrics` at both ends of the window).
//!
//! Two read-path scenarios follow, each on a fresh gateway (`read_path`):
//! - `delivery`: a paced producer POSTs single events (durable) carrying their
//!   send time (`t_ns`); a WebSocket subscriber (`from=latest`) measures POST →
//!   delivery latency (target: p99 ≤ `max_age` + poll interval + 50 ms).
//! - `fanout`: 1, 10 and 100 subscribers on one stream under a light
//!   producer; the gateway's store requests/s (`sluice_store_requests_total`
//!   on `/metrics`, all `op`s) must stay flat, and every subscriber must get
//!   every event.
//!
//! - `cargo bench --bench load`: every scenario, a fresh server process each.
//! - `SLUICE_LOAD_REPORT=benches/REPORT.md cargo bench --bench load` (what
//!   `benches/report.sh` runs): the report's matrix (`plan::report`) and
//!   the markdown file (`markdown`).
//! - `cargo test --all-targets` runs this binary without `--bench`: a smoke run
//!   (4 connections, about a second per scenario, `durable-1` also on moto
//!   and then one open-loop step at half its rate) that fails if nothing got
//!   a 2xx (a variant: if anything got another status), plus `delivery` and
//!   `fanout` with a few events and 2 subscribers, which fail unless the
//!   events reach the subscribers.
//! - `cargo bench --bench load -- --smoke`: the same smoke run, release-built.
//!
//! Environment:
//! - `SLUICE_LOAD_ONLY=durable-1,ceiling-http-1`: run only these scenarios
//!   (the smoke run too, then each named one at its smoke size, file store).
//!
//! Environment (full and report runs; the report's defaults in brackets):
//! - `SLUICE_LOAD_SECS` (default 10 [5]): measured seconds per scenario.
//! - `SLUICE_LOAD_WARMUP_SECS` (default 2): warm-up, after every connection is open.
//! - `SLUICE_LOAD_STORES` (default `file` [`file,moto`]),
//!   `SLUICE_LOAD_PROFILES` (default `default` [`default,low-latency`]):
//!   each gateway scenario runs on each (ceilings once).
//! - `SLUICE_LOAD_OPEN` (default none [`0.5,0.8,0.95`]): open-loop steps after
//!   each plain gateway POST scenario, as fractions of its closed-loop req/s;
//!   `SLUICE_LOAD_OPEN_SECS` (default 5) measured and
//!   `SLUICE_LOAD_OPEN_WARMUP_SECS` (default 1) warm-up seconds per step.
//! - `SLUICE_LOAD_ROUNDS` (default 1 [5, for the metrics-cost pair only]):
//!   rounds, alternating order.
//! - `SLUICE_LOAD_CONNS_<SCENARIO>`, e.g. `SLUICE_LOAD_CONNS_DURABLE_1=2000`; a
//!   variant without its own takes its twin's (`…_DURABLE_1`).
//! - `SLUICE_LOAD_CEILING_THREADS`: worker threads of the ceiling servers
//!   (default: tokio's, one per core).
//! - `SLUICE_LOAD_DELIVERY_RATE` (default 200): POSTs/s in `delivery`.
//! - `SLUICE_LOAD_FANOUT_RATE` (default 50): POSTs/s in `fanout`.
//! - `SLUICE_LOAD_FANOUT_SUBSCRIBERS` (default `1,10,100`): the steps of `fanout`.

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;

use plan::BodyKind;

const BODY_1_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/data/pageview-1.json");
const BODY_100_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/benches/data/pageview-100.json"
);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(mode) = value_after(&args, "--ceiling-server") {
        ceiling::serve(mode);
        return;
    }
    let flag = |name: &str| args.iter().any(|arg| arg == name);
    let full = flag("--bench") && !flag("--smoke");
    let report_path = std::env::var_os("SLUICE_LOAD_REPORT").filter(|_| full);
    let bodies = Bodies::load();
    let plan = match (&report_path, full) {
        (Some(_), _) => plan::report(),
        (None, true) => plan::full(),
        (None, false) => plan::smoke(),
    };
    let machine = markdown::Machine::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the client's tokio runtime");
    let rows = run::run_plan(&runtime, &plan, &bodies);
    let reads = read_path::run(&runtime, &plan);
    if !rows.is_empty() {
        report::print(&plan, &rows);
    }
    read_path::print(&plan, &reads);
    if let Some(path) = report_path {
        markdown::write(std::path::Path::new(&path), &plan, &rows, machine);
    }
    if !full {
        // `SLUICE_LOAD_ONLY` may leave either half of the plan empty.
        if plan.scenarios().next().is_some() {
            smoke::check(&rows);
        }
        if !plan.reads.is_empty() {
            read_path::check(&reads);
        }
    }
}

fn value_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|arg| arg == flag)?;
    let value = args.get(at + 1);
    Some(value.unwrap_or_else(|| panic!("{flag} needs a value")))
}

/// One request body and how many events it carries.
struct Body {
    bytes: Bytes,
    events: u64,
}

impl Body {
    fn load(path: &str) -> Body {
        let bytes = std::fs::read(path).unwrap_or_else(|e| {
            panic!("cannot read the benchmark body {path}: {e} (benches/data/ holds the shared page-view bodies)")
        });
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("the benchmark body {path} is not JSON: {e}"));
        let events = value.as_array().map_or(1, |events| events.len() as u64);
        Body {
            bytes: Bytes::from(bytes),
            events,
        }
    }
}

struct Bodies {
    one: Body,
    hundred: Body,
}

impl Bodies {
    fn load() -> Bodies {
        Bodies {
            one: Body::load(BODY_1_PATH),
            hundred: Body::load(BODY_100_PATH),
        }
    }

    fn get(&self, kind: BodyKind) -> &Body {
        match kind {
            BodyKind::One => &self.one,
            BodyKind::Hundred => &self.hundred,
        }
    }
}

/// Reads an environment variable; a value that does not parse stops the run.
fn env_parse<T>(name: &str) -> Option<T>
where
    T: FromStr,
    T::Err: Display,
{
    let raw = std::env::var(name).ok()?;
    let value = raw
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name}={raw:?} is not valid: {e}"));
    Some(value)
}

fn env_secs(name: &str, default: f64) -> Duration {
    let secs = env_parse(name).unwrap_or(default);
    Duration::try_from_secs_f64(secs)
        .unwrap_or_else(|e| panic!("{name}={secs} is not a number of seconds: {e}"))
}

#[path = "load/ceiling.rs"]
mod ceiling;
#[path = "load/client.rs"]
mod client;
#[path = "load/limits.rs"]
mod limits;
#[path = "load/markdown.rs"]
mod markdown;
#[path = "load/moto.rs"]
mod moto;
#[path = "load/open_loop.rs"]
mod open_loop;
#[path = "load/plan.rs"]
mod plan;
#[path = "load/read_path.rs"]
mod read_path;
#[path = "load/report.rs"]
mod report;
#[path = "load/run.rs"]
mod run;
#[path = "load/scrape.rs"]
mod scrape;
#[path = "load/server.rs"]
mod server;
#[path = "load/smoke.rs"]
mod smoke;
#[path = "load/ws_load.rs"]
mod ws_load;
