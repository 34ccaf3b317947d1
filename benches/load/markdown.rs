//! `benches/REPORT.md` (`SLUICE_LOAD_REPORT=path`): the machine, the
//! method, one table per store × profile beside the ceilings, the open-loop
//! latencies, store requests and their S3 price per million events, the
//! metrics cost, and the targets with pass or fail. Only formats the rows
//! `run` measured; decides nothing about what runs.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use super::plan::{Plan, Profile, Store, Target};
use super::report::{self, optional, OpenStep, RequestClass, Row};

/// What the report says about where it ran.
pub struct Machine {
    cores: usize,
    kernel: String,
    started: String,
    git_rev: String,
    load_before: String,
}

impl Machine {
    pub fn now() -> Machine {
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            started: utc_now(),
            git_rev: git_rev(),
            load_before: read_trimmed("/proc/loadavg"),
        }
    }
}

fn utc_now() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string()
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map_or("unknown".into(), |s| s.trim().to_string())
}

/// `HEAD`'s short hash, marked when the work tree has changes.
fn git_rev() -> String {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output();
        out.ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(rev) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if !changes.is_empty() => format!("{rev} (with uncommitted changes)"),
        _ => rev,
    }
}

const LOW_LATENCY_P99_MS: f64 = 25.0;
const CEILING_SHARE: f64 = 1.0 / 3.0;
const PUTS_PER_MILLION: f64 = 100.0;
/// The default batching rules (`batch.max_age_ms`, `max_bytes`, `max_events`).
const DEFAULT_MAX_AGE_SECS: f64 = 0.2;
const DEFAULT_MAX_BYTES: f64 = 8.0 * 1024.0 * 1024.0;
const DEFAULT_MAX_EVENTS: f64 = 100_000.0;
/// Envelope bytes around each stored event: `{"received_at":"…","event":` … `}` and a newline.
const ENVELOPE_BYTES: f64 = 52.0;
const GATEWAY_ROWS: [&str; 4] = ["durable-1", "durable-100", "async-1", "async-100"];

pub fn write(path: &Path, plan: &Plan, rows: &[Row], machine: Machine) {
    let mut md = String::new();
    machine_section(&mut md, plan, machine);
    method_section(&mut md, plan);
    ceilings_section(&mut md, rows);
    for store in [Store::File, Store::Moto] {
        for profile in [Profile::Default, Profile::LowLatency] {
            throughput_section(&mut md, rows, store, profile);
        }
    }
    open_loop_section(&mut md, rows);
    metrics_cost_section(&mut md, rows);
    targets_section(&mut md, rows);
    std::fs::write(path, md).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    eprintln!("load: wrote {}", path.display());
}

fn machine_section(md: &mut String, plan: &Plan, m: Machine) {
    let _ = writeln!(md, "# sluice benchmark report\n");
    let _ = writeln!(
        md,
        "Written by `bash benches/report.sh` (the load harness, `benches/load.rs`, with \
         `SLUICE_LOAD_REPORT`); regenerate it rather than editing it.\n"
    );
    let _ = writeln!(md, "| machine | |\n|---|---|");
    let _ = writeln!(
        md,
        "| cores | {} (load generator and servers share them) |",
        m.cores
    );
    let _ = writeln!(md, "| kernel (`uname -r`) | {} |", m.kernel);
    let _ = writeln!(md, "| run | {} – {} |", m.started, utc_now());
    let _ = writeln!(md, "| git rev | {} |", m.git_rev);
    let _ = writeln!(
        md,
        "| load average (1, 5, 15 min; runnable/total; last pid) | before: {}; after: {} |",
        m.load_before,
        read_trimmed("/proc/loadavg")
    );
    let _ = writeln!(
        md,
        "| per scenario | {:?} warm-up, {:?} measured; open-loop steps {:?} + {:?} |\n",
        plan.warmup, plan.measure, plan.open.warmup, plan.open.measure
    );
}

fn method_section(md: &mut String, plan: &Plan) {
    let fractions: Vec<String> = plan
        .open
        .fractions
        .iter()
        .map(|f| format!("{:.0} %", f * 100.0))
        .collect();
    let _ = write!(
        md,
        "## Method

- Every scenario runs against a fresh server process on 127.0.0.1. **Closed loop**: N keep-alive
  HTTP/1.1 connections, one request in flight on each, sent back to back; events/s = 2xx answers in
  the measured window × events per request. Bodies: `benches/data` page views (~300 bytes; 100-event
  arrays of ~30 KB).
- **Ceilings**, same client, same run: `ceiling-http` (hyper reads the body, answers a small JSON
  object) and `ceiling-parse-zstd` (also parses every event and zstd-1 compresses the body). A gateway
  row's ratio is its events/s over the ceiling's on the same body.
- **Stores**: `file` is a fresh directory with fsync (segment, record and their directories before an
  ack); `moto` is a moto S3 server the harness starts on loopback (Python: its latency and throughput
  are moto's, not S3's), one fresh prefix per gateway.
- **Profiles**: `default` (`batch.max_age_ms` = 200) and `low-latency`
  (`SLUICE_BATCH__MAX_AGE_MS=10`).
- **Open loop** (wrk2's method), after each gateway row's closed-loop run on the same process: requests
  on a fixed schedule at {} of the req/s that run just measured; request j is due at
  `start + j/rate` whatever happened to the ones before it. Each takes an idle keep-alive connection
  from a pool, or opens one; the pool starts with rate × the closed-loop p50 connections, may grow
  to 2 × rate × the closed-loop p99 (at most {}; past that a request waits for a connection, and
  the wait is in its latency), and hands out the most recently used first. *conns* is how many were
  opened. Latency runs from the intended send time
  (coordinated omission corrected). *Late*: started more than {:?} after its time (its wait is in its
  latency). Requests due in the window are still sent after it, for up to {:?}: *unsent* were not
  started by then, *unanswered* not answered by then; neither has a latency, so where they are not 0
  the quantiles are a lower bound.
- **Store requests**: `sluice_store_requests_total{{op}}` from the gateway's `/metrics` at both ends of
  the closed-loop window, divided by the events acked in it. PUT-class ops: `put_*` (and `list*`);
  GET-class: `get_*`, `head_*`; `delete_*` is free.
- **S3 request cost** per million events at S3 Standard prices (us-east-1, as published on
  <https://aws.amazon.com/s3/pricing/> and quoted in issue 10; applied on the run date above): PUT, COPY,
  POST, LIST ${} per 1 000 requests; GET, HEAD and others ${} per 1 000. Storage and transfer are not
  included.
- **Gateway CPU per event**: user + system CPU seconds of the gateway process over the closed-loop
  window (`/proc/PID/stat`), divided by the events acked in it. Other load on the machine changes it
  far less than it changes throughput, so the metrics-cost rounds report it too.
- **Peak RSS**: `VmHWM` of the gateway process after the closed-loop window (and, in brackets,
  after its open-loop steps, which may hold more connections).

",
        fractions.join(", "),
        super::open_loop::MAX_CONNS,
        super::open_loop::LATE,
        super::open_loop::DRAIN,
        report::PUT_PRICE_PER_1000,
        report::GET_PRICE_PER_1000,
    );
}

fn ceilings_section(md: &mut String, rows: &[Row]) {
    let ceilings: Vec<&Row> = rows
        .iter()
        .filter(|r| r.pass == 0 && r.scenario.target.is_ceiling())
        .collect();
    if ceilings.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Ceilings\n");
    let _ = writeln!(
        md,
        "| ceiling | conns | req/s | events/s | p50 ms | p99 ms | p99.9 ms | peak RSS MiB |"
    );
    let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|--:|");
    for r in ceilings {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} |",
            r.scenario.name,
            r.scenario.conns,
            r.requests_per_sec(),
            r.events_per_sec(),
            r.latency_ms(0.5),
            r.latency_ms(0.99),
            r.latency_ms(0.999),
            r.peak_rss()
        );
    }
    let _ = writeln!(md);
}

/// The pass-0 gateway row `name` on `store` and `profile`.
fn find<'a>(rows: &'a [Row], name: &str, store: Store, profile: Profile) -> Option<&'a Row> {
    rows.iter().find(|r| {
        r.pass == 0
            && r.scenario.name == name
            && r.scenario.store == store
            && r.scenario.profile == profile
    })
}

fn throughput_section(md: &mut String, rows: &[Row], store: Store, profile: Profile) {
    let found: Vec<&Row> = GATEWAY_ROWS
        .iter()
        .filter_map(|name| find(rows, name, store, profile))
        .collect();
    if found.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## {} store, {} profile (closed loop)\n",
        store.name(),
        profile.name()
    );
    let _ = writeln!(
        md,
        "| scenario | conns | req/s | events/s | p50 ms | p99 ms | p99.9 ms | ÷ HTTP ceiling \
         | ÷ parse+zstd ceiling | PUTs / M events | GET+HEAD / M events | S3 $ / M events \
         | gateway CPU µs / event | peak RSS MiB (after open loop) | non-2xx |"
    );
    let _ = writeln!(
        md,
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for r in found {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario.name,
            r.scenario.conns,
            r.requests_per_sec(),
            r.events_per_sec(),
            r.latency_ms(0.5),
            r.latency_ms(0.99),
            r.latency_ms(0.999),
            optional(r.ceiling_ratio(rows, Target::CeilingHttp), 2),
            optional(r.ceiling_ratio(rows, Target::CeilingParseZstd), 2),
            optional(r.per_million_events(RequestClass::Put), 1),
            optional(r.per_million_events(RequestClass::Get), 1),
            optional(r.dollars_per_million_events(), 4),
            optional(r.cpu_us_per_event(), 2),
            rss_with_open_loop(r),
            r.tally.non_2xx + r.tally.conn_errors,
        );
    }
    let _ = writeln!(md);
}

/// Peak RSS after the closed loop, and after the open-loop steps if any.
fn rss_with_open_loop(r: &Row) -> String {
    match r.open.is_empty() {
        true => r.peak_rss(),
        false => format!(
            "{} ({})",
            r.peak_rss(),
            report::mib(r.peak_rss_after_open_kib)
        ),
    }
}

fn open_loop_section(md: &mut String, rows: &[Row]) {
    let steps: Vec<(&Row, &OpenStep)> = rows
        .iter()
        .filter(|r| r.pass == 0)
        .flat_map(|r| r.open.iter().map(move |step| (r, step)))
        .collect();
    if steps.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Latency at a fixed arrival rate (open loop)\n");
    let _ = writeln!(md, "{}", report::OPEN_HEADER);
    let _ = writeln!(
        md,
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for (row, step) in steps {
        let _ = writeln!(md, "{}", report::open_row(row, step));
    }
    let _ = writeln!(md);
}

fn metrics_cost_section(md: &mut String, rows: &[Row]) {
    let shares = report::twin_shares(rows);
    let Some(cost) = shares.iter().find(|s| s.is_metrics_cost()) else {
        return;
    };
    let _ = writeln!(md, "## Metrics cost\n");
    let _ = writeln!(md, "{}.\n", cost.line());
    let _ = writeln!(
        md,
        "| round | order | {0} events/s | {1} events/s | on ÷ off | {0} CPU µs/event \
         | {1} CPU µs/event | events per CPU-second, on ÷ off |",
        cost.twin, cost.name
    );
    let _ = writeln!(md, "|--:|---|--:|--:|--:|--:|--:|--:|");
    let pass = rows
        .iter()
        .filter(|r| r.scenario.name == cost.name)
        .map(|r| r.pass)
        .max();
    for (round, share) in cost.shares.iter().enumerate() {
        let row = |name: &str| {
            rows.iter()
                .find(|r| Some(r.pass) == pass && r.round == round && r.scenario.name == name)
        };
        let events =
            |name| row(name).map_or("–".into(), |r| format!("{:.0}", r.events_per_sec()));
        let cpu = |name| optional(row(name).and_then(Row::cpu_us_per_event), 2);
        let cpu_share = cost.cpu_shares.get(round).map(|s| s * 100.0);
        let order = match round % 2 {
            0 => "on, off",
            _ => "off, on",
        };
        let _ = writeln!(
            md,
            "| {} | {order} | {} | {} | {:.1} % | {} | {} | {} % |",
            round + 1,
            events(cost.twin),
            events(cost.name),
            share * 100.0,
            cpu(cost.twin),
            cpu(cost.name),
            optional(cpu_share, 1),
        );
    }
    let _ = writeln!(md);
}

fn targets_section(md: &mut String, rows: &[Row]) {
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(
        md,
        "| target | where | measured | result |\n|---|---|--:|---|"
    );
    latency_targets(md, rows);
    ceiling_targets(md, rows);
    put_targets(md, rows);
    metrics_target(md, rows);
    let _ = writeln!(md);
}

/// Issue 9: metrics on keep ≥ 97 % of the events/s with them off.
fn metrics_target(md: &mut String, rows: &[Row]) {
    let shares = report::twin_shares(rows);
    let Some(cost) = shares.iter().find(|s| s.is_metrics_cost()) else {
        return;
    };
    let median = cost.median();
    let measured = format!("{:.1} % (median of {})", median * 100.0, cost.shares.len());
    let pass = Some(median * 100.0 >= f64::from(cost.target_percent) && cost.non_2xx == 0);
    let place = format!("{} ÷ {}, file, default", cost.twin, cost.name);
    target_row(
        md,
        "metrics on ≥ 97 % of off (events/s)",
        &place,
        &measured,
        pass,
    );
}

fn latency_targets(md: &mut String, rows: &[Row]) {
    for name in ["durable-1", "durable-100"] {
        let step = find(rows, name, Store::File, Profile::LowLatency)
            .and_then(|r| r.open.iter().find(|s| (s.fraction - 0.5).abs() < 1e-9));
        let (measured, pass) = match step {
            Some(step) => low_latency_p99(step),
            None => ("not run".into(), None),
        };
        target_row(
            md,
            "durable p99 ≤ 25 ms at 50 % of peak",
            &format!("{name}, file, low-latency"),
            &measured,
            pass,
        );
    }
}

fn ceiling_targets(md: &mut String, rows: &[Row]) {
    for profile in [Profile::Default, Profile::LowLatency] {
        let ratio = find(rows, "durable-100", Store::File, profile)
            .and_then(|r| r.ceiling_ratio(rows, Target::CeilingParseZstd));
        let pass = ratio.map(|r| r >= CEILING_SHARE);
        let place = format!("durable-100, file, {}", profile.name());
        target_row(
            md,
            "≥ 1/3 of the parse+compress ceiling",
            &place,
            &optional(ratio, 2),
            pass,
        );
    }
}

/// The PUT target holds at each store's peak: its gateway row (default
/// profile) with the most events/s. The other rows are shown beside what
/// the batching rules imply at their rate ([`batching_puts_per_million`]):
/// a stream that takes fewer events than a segment holds flushes on age,
/// two PUTs a flush however few events it carries, so their figure is set
/// by `max_age`, not by load.
fn put_targets(md: &mut String, rows: &[Row]) {
    for store in [Store::File, Store::Moto] {
        let found: Vec<&Row> = GATEWAY_ROWS
            .iter()
            .filter_map(|name| find(rows, name, store, Profile::Default))
            .collect();
        let peak = found
            .iter()
            .max_by(|a, b| a.events_per_sec().total_cmp(&b.events_per_sec()));
        let Some(peak) = peak else { continue };
        let puts = peak.per_million_events(RequestClass::Put);
        let place = format!(
            "{}, {}, default: the peak ({:.2} M events/s)",
            peak.scenario.name,
            store.name(),
            peak.events_per_sec() / 1e6
        );
        let pass = puts.map(|p| p <= PUTS_PER_MILLION);
        let target = "≤ 100 store PUTs per million events at peak";
        target_row(md, target, &place, &optional(puts, 1), pass);
        for row in found.iter().filter(|r| !std::ptr::eq(**r, *peak)) {
            let puts = row.per_million_events(RequestClass::Put);
            let by_rules = batching_puts_per_million(row);
            let place = format!(
                "{}, {}, default, {:.0} events/s",
                row.scenario.name,
                store.name(),
                row.events_per_sec()
            );
            let result = format!(
                "informational: two PUTs per flush at `max_age`, `max_bytes` or `max_events` ≈ {}",
                optional(by_rules, 0)
            );
            let _ = writeln!(
                md,
                "| store PUTs per million events below peak | {place} | {} | {result} |",
                optional(puts, 1)
            );
        }
    }
}

/// Store PUTs per million events the default batching rules imply at
/// `row`'s rate: a segment and a record per flush, and a flush at
/// whichever of `max_age`, `max_bytes` and `max_events` comes first.
fn batching_puts_per_million(row: &Row) -> Option<f64> {
    let events = row.events_per_sec();
    if events <= 0.0 {
        return None;
    }
    let stored = row.body_len as f64 / row.events_per_request as f64 + ENVELOPE_BYTES;
    let flushes = (1.0 / DEFAULT_MAX_AGE_SECS)
        .max(events * stored / DEFAULT_MAX_BYTES)
        .max(events / DEFAULT_MAX_EVENTS);
    Some(2.0 * flushes * 1e6 / events)
}

/// The step's p99 and whether it meets the target; unsent or unanswered
/// requests make the p99 a lower bound, so the step fails.
fn low_latency_p99(step: &OpenStep) -> (String, Option<bool>) {
    let out = &step.outcome;
    if out.tally.latency_us.is_empty() {
        return ("no answers".into(), Some(false));
    }
    let p99 = out.tally.latency_us.value_at_quantile(0.99) as f64 / 1000.0;
    let missing = out.unsent + out.unanswered + out.tally.non_2xx + out.tally.conn_errors;
    let mut measured = format!("p99 {p99:.1} ms at {:.0} req/s", step.schedule.rate);
    if missing > 0 {
        let _ = write!(
            measured,
            " ({missing} requests unsent, unanswered or failed)"
        );
    }
    (measured, Some(p99 <= LOW_LATENCY_P99_MS && missing == 0))
}

fn target_row(md: &mut String, target: &str, place: &str, measured: &str, pass: Option<bool>) {
    let result = match pass {
        Some(true) => "PASS",
        Some(false) => "**FAIL**",
        None => "not measured",
    };
    let _ = writeln!(md, "| {target} | {place} | {measured} | {result} |");
}
