//! The write path's results: one row per scenario run, the figures derived
//! from it (rates, ratios to the ceilings, store requests and their S3
//! price per million events, variants against their twins), and the
//! markdown tables printed on stdout. `markdown` writes `REPORT.md` from
//! the same rows.

use std::collections::BTreeMap;

use super::client::Tally;
use super::open_loop::{Outcome, Schedule};
use super::plan::{Scenario, Target, NO_METRICS_SUFFIX};

/// S3 Standard request prices in USD per 1 000 requests (us-east-1): PUT,
/// COPY, POST and LIST; GET, HEAD and every other request. DELETE is free.
pub const PUT_PRICE_PER_1000: f64 = 0.005;
pub const GET_PRICE_PER_1000: f64 = 0.0004;

pub struct Row {
    pub scenario: Scenario,
    /// Which pass of the plan, which round of it, where in the pass.
    pub pass: usize,
    pub round: usize,
    pub position: usize,
    pub secs: f64,
    pub events_per_request: u64,
    pub body_len: usize,
    pub tally: Tally,
    /// Store requests by `op` in the measured window (gateways with metrics).
    pub store: Option<BTreeMap<String, u64>>,
    /// CPU seconds (user + system) the server process used in the window.
    pub server_cpu_secs: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    pub open: Vec<OpenStep>,
    pub peak_rss_after_open_kib: Option<u64>,
}

/// One open-loop step after a closed-loop run.
pub struct OpenStep {
    pub fraction: f64,
    pub schedule: Schedule,
    pub outcome: Outcome,
}

/// What kind of store request an `op` is, for its price.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RequestClass {
    /// PUT, COPY, POST, LIST.
    Put,
    /// GET, HEAD and the rest.
    Get,
    Delete,
}

pub fn request_class(op: &str) -> RequestClass {
    if op.starts_with("put_") || op.starts_with("list") {
        RequestClass::Put
    } else if op.starts_with("delete_") {
        RequestClass::Delete
    } else {
        RequestClass::Get
    }
}

impl Row {
    pub fn requests_per_sec(&self) -> f64 {
        self.tally.ok as f64 / self.secs
    }

    pub fn events_per_sec(&self) -> f64 {
        self.requests_per_sec() * self.events_per_request as f64
    }

    fn megabytes_per_sec(&self) -> f64 {
        self.requests_per_sec() * self.body_len as f64 / 1e6
    }

    pub fn latency_ms(&self, quantile: f64) -> String {
        quantile_ms(&self.tally, quantile)
    }

    pub fn peak_rss(&self) -> String {
        mib(self.peak_rss_kib)
    }

    /// Store requests of `class` per million events acked in the window.
    pub fn per_million_events(&self, class: RequestClass) -> Option<f64> {
        let store = self.store.as_ref()?;
        let events = self.tally.ok * self.events_per_request;
        if events == 0 {
            return None;
        }
        let requests: u64 = store
            .iter()
            .filter(|(op, _)| request_class(op) == class)
            .map(|(_, n)| n)
            .sum();
        Some(requests as f64 * 1e6 / events as f64)
    }

    /// Server CPU microseconds per event acked in the window.
    pub fn cpu_us_per_event(&self) -> Option<f64> {
        let events = self.tally.ok * self.events_per_request;
        let cpu = self.server_cpu_secs.filter(|_| events > 0)?;
        Some(cpu * 1e6 / events as f64)
    }

    /// S3 request cost in USD per million events at `PUT_PRICE_PER_1000`, `GET_PRICE_PER_1000`.
    pub fn dollars_per_million_events(&self) -> Option<f64> {
        let puts = self.per_million_events(RequestClass::Put)?;
        let gets = self.per_million_events(RequestClass::Get)?;
        Some((puts * PUT_PRICE_PER_1000 + gets * GET_PRICE_PER_1000) / 1000.0)
    }

    /// This row's events/s over those of the `ceiling` run on the same body
    /// in the same pass.
    pub fn ceiling_ratio(&self, rows: &[Row], ceiling: Target) -> Option<f64> {
        let c = rows.iter().find(|r| {
            r.scenario.target == ceiling
                && r.scenario.body == self.scenario.body
                && r.pass == self.pass
        })?;
        (c.events_per_sec() > 0.0).then(|| self.events_per_sec() / c.events_per_sec())
    }
}

pub fn quantile_ms(tally: &Tally, quantile: f64) -> String {
    if tally.latency_us.is_empty() {
        return "–".to_string();
    }
    let micros = tally.latency_us.value_at_quantile(quantile);
    format!("{:.1}", micros as f64 / 1000.0)
}

pub fn mib(kib: Option<u64>) -> String {
    kib.map_or("–".to_string(), |kib| {
        format!("{:.0}", kib as f64 / 1024.0)
    })
}

pub fn optional(value: Option<f64>, decimals: usize) -> String {
    value.map_or("–".to_string(), |v| format!("{v:.decimals$}"))
}

/// A variant (`-auth`, `-schema`, `-nometrics`) against its plain twin,
/// over every round of one pass: the variant's req/s as a share of the
/// twin's, except for `-nometrics`, where the share is the twin's (metrics
/// on) of the variant's (metrics off).
pub struct TwinShare {
    pub name: &'static str,
    pub twin: &'static str,
    pub shares: Vec<f64>,
    /// The same shares of events per server CPU-second (when both were sampled).
    pub cpu_shares: Vec<f64>,
    pub non_2xx: u64,
    pub target_percent: u32,
}

impl TwinShare {
    pub fn median(&self) -> f64 {
        median(&self.shares)
    }

    /// "; per server CPU-second: …" when every round sampled the CPU.
    fn cpu_note(&self) -> String {
        if self.cpu_shares.is_empty() || self.cpu_shares.len() != self.shares.len() {
            return String::new();
        }
        format!(
            "; events per server CPU-second: {:.1} % (rounds: {} %)",
            median(&self.cpu_shares) * 100.0,
            percents(&self.cpu_shares)
        )
    }

    pub fn is_metrics_cost(&self) -> bool {
        self.name.ends_with(NO_METRICS_SUFFIX)
    }

    /// The line printed under the tables.
    pub fn line(&self) -> String {
        let rounds = match self.shares.len() {
            1 => String::new(),
            n => format!(
                " (median of {n} alternating rounds: {} %)",
                percents(&self.shares)
            ),
        };
        let refused = match self.non_2xx {
            0 => String::new(),
            n => format!("; {n} non-2xx, so not a cost measure"),
        };
        let median = self.median() * 100.0;
        let target = self.target_percent;
        if self.is_metrics_cost() {
            return format!(
                "metrics cost: on = {median:.1} % of off (target ≥ {target} %){rounds}; events/s of {} ÷ {}{}{refused}",
                self.twin,
                self.name,
                self.cpu_note()
            );
        }
        let what = match self.target_percent {
            80 => "with a JSON Schema on every event",
            _ => "with auth and rate limits on",
        };
        format!(
            "{}: {median:.1} % of {}'s events/s {what} (target ≥ {target} %){rounds}{refused}",
            self.name, self.twin
        )
    }
}

/// Every variant of every pass against its twin on the same store and
/// profile, round by round.
pub fn twin_shares(rows: &[Row]) -> Vec<TwinShare> {
    let mut shares: Vec<(usize, TwinShare)> = Vec::new();
    for row in rows {
        let Some(twin) = super::plan::twin(row.scenario.name) else {
            continue;
        };
        let Some(plain) = rows.iter().find(|r| same_run_of(r, row, twin)) else {
            continue;
        };
        let (on, off) = match row.scenario.target {
            Target::NoMetricsGateway => (plain, row),
            _ => (row, plain),
        };
        if off.requests_per_sec() <= 0.0 {
            continue;
        }
        let share = on.requests_per_sec() / off.requests_per_sec();
        // Events per CPU-second: CPU per event, off over on.
        let cpu_share = match (on.cpu_us_per_event(), off.cpu_us_per_event()) {
            (Some(on), Some(off)) if on > 0.0 => Some(off / on),
            _ => None,
        };
        let found = shares
            .iter_mut()
            .find(|(pass, s)| *pass == row.pass && s.name == row.scenario.name);
        let entry = match found {
            Some((_, entry)) => entry,
            None => {
                shares.push((row.pass, new_share(row, plain)));
                &mut shares.last_mut().expect("just pushed").1
            }
        };
        entry.shares.push(share);
        entry.cpu_shares.extend(cpu_share);
        entry.non_2xx += row.tally.non_2xx + plain.tally.non_2xx;
    }
    shares.into_iter().map(|(_, share)| share).collect()
}

/// `r` is the run named `name` in `row`'s pass, round, store and profile.
fn same_run_of(r: &Row, row: &Row, name: &str) -> bool {
    r.scenario.name == name
        && (r.pass, r.round) == (row.pass, row.round)
        && (r.scenario.store, r.scenario.profile) == (row.scenario.store, row.scenario.profile)
}

fn new_share(row: &Row, plain: &Row) -> TwinShare {
    let target_percent = match row.scenario.target {
        Target::SchemaGateway => 80,
        Target::NoMetricsGateway => 97,
        _ => 95,
    };
    TwinShare {
        name: row.scenario.name,
        twin: plain.scenario.name,
        shares: Vec::new(),
        cpu_shares: Vec::new(),
        non_2xx: 0,
        target_percent,
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() % 2 {
        1 => sorted[mid],
        _ => (sorted[mid - 1] + sorted[mid]) / 2.0,
    }
}

/// `0.97, 1.02` as `97.0, 102.0`.
pub fn percents(shares: &[f64]) -> String {
    let each: Vec<String> = shares.iter().map(|s| format!("{:.1}", s * 100.0)).collect();
    each.join(", ")
}

pub fn print(plan: &super::plan::Plan, rows: &[Row]) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "sluice load: {:?} measured after {:?} warm-up per scenario, {cores} cores shared by client and server",
        plan.measure, plan.warmup
    );
    println!();
    println!(
        "| scenario | store | profile | round | conns | req/s | events/s | MB/s | p50 ms | p99 ms | p99.9 ms \
         | non-2xx (503) | conn errors | ÷ ceiling-http | ÷ ceiling-parse-zstd | PUTs per M events \
         | server CPU µs/event | server peak RSS MiB |"
    );
    println!("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for row in rows {
        print_row(row, rows);
    }
    println!();
    println!(
        "MB/s counts request body bytes; latencies are of 2xx answers; \
         ÷ columns compare events/s with the ceiling run on the same body."
    );
    for share in twin_shares(rows) {
        println!("- {}", share.line());
    }
    print_open_loop(rows);
    print_failures(rows);
}

fn print_row(row: &Row, rows: &[Row]) {
    let tally = &row.tally;
    let s = &row.scenario;
    let (store, profile) = match s.target.is_ceiling() {
        true => ("–", "–"),
        false => (s.store.name(), s.profile.name()),
    };
    println!(
        "| {} | {store} | {profile} | {} | {} | {:.0} | {:.0} | {:.1} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} |",
        s.name,
        row.round + 1,
        s.conns,
        row.requests_per_sec(),
        row.events_per_sec(),
        row.megabytes_per_sec(),
        row.latency_ms(0.5),
        row.latency_ms(0.99),
        row.latency_ms(0.999),
        tally.non_2xx,
        tally.overloaded,
        tally.conn_errors,
        optional(row.ceiling_ratio(rows, Target::CeilingHttp), 2),
        optional(row.ceiling_ratio(rows, Target::CeilingParseZstd), 2),
        optional(row.per_million_events(RequestClass::Put), 1),
        optional(row.cpu_us_per_event(), 2),
        row.peak_rss(),
    );
}

fn print_open_loop(rows: &[Row]) {
    if rows.iter().all(|r| r.open.is_empty()) {
        return;
    }
    println!();
    println!(
        "Open loop (latency from each request's intended send time; late: started > {:?} behind it):",
        super::open_loop::LATE
    );
    println!();
    println!("{}", OPEN_HEADER);
    println!("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for row in rows {
        for step in &row.open {
            println!("{}", open_row(row, step));
        }
    }
}

pub const OPEN_HEADER: &str =
    "| scenario | store | profile | % of peak | target req/s | conns | answered req/s \
     | p50 ms | p99 ms | p99.9 ms | late | unsent | unanswered | non-2xx |";

pub fn open_row(row: &Row, step: &OpenStep) -> String {
    let out = &step.outcome;
    let s = &row.scenario;
    format!(
        "| {} | {} | {} | {:.0} | {:.0} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
        s.name,
        s.store.name(),
        s.profile.name(),
        step.fraction * 100.0,
        step.schedule.rate,
        out.conns,
        out.tally.ok as f64 / step.schedule.measure.as_secs_f64(),
        quantile_ms(&out.tally, 0.5),
        quantile_ms(&out.tally, 0.99),
        quantile_ms(&out.tally, 0.999),
        out.late,
        out.unsent,
        out.unanswered,
        out.tally.non_2xx + out.tally.conn_errors,
    )
}

fn print_failures(rows: &[Row]) {
    for row in rows {
        let open = row
            .open
            .iter()
            .filter_map(|s| s.outcome.tally.first_failure.as_ref());
        for failure in row.tally.first_failure.iter().chain(open) {
            println!("- {}: first failure: {failure}", row.scenario.name);
        }
    }
}
