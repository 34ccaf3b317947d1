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
//! rate-limit path (the target is ≥ 95 %).
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
//! - `cargo test --all-targets` runs this binary without `--bench`: a smoke run
//!   (4 connections, about a second per scenario) that fails if nothing got a 2xx
//!   (an `-auth` scenario: if anything got another status),
//!   plus `delivery` and `fanout` with a few events and 2 subscribers, which
//!   fail unless the events reach the subscribers.
//! - `cargo bench --bench load -- --smoke`: the same smoke run, release-built.
//!
//! Environment:
//! - `SLUICE_LOAD_ONLY=durable-1,ceiling-http-1`: run only these scenarios
//!   (the smoke run too, then each named one at its smoke size).
//!
//! Environment (full run only):
//! - `SLUICE_LOAD_SECS` (default 10): measured seconds per scenario.
//! - `SLUICE_LOAD_WARMUP_SECS` (default 2): warm-up, after every connection is open.
//! - `SLUICE_LOAD_CONNS_<SCENARIO>`, e.g. `SLUICE_LOAD_CONNS_DURABLE_1=2000`; an
//!   `-auth` scenario without its own takes its twin's (`…_DURABLE_1`).
//! - `SLUICE_LOAD_CEILING_THREADS`: worker threads of the ceiling servers
//!   (default: tokio's, one per core).
//! - `SLUICE_LOAD_DELIVERY_RATE` (default 200): POSTs/s in `delivery`.
//! - `SLUICE_LOAD_FANOUT_RATE` (default 50): POSTs/s in `fanout`.
//! - `SLUICE_LOAD_FANOUT_SUBSCRIBERS` (default `1,10,100`): the steps of `fanout`.

use std::fmt::Display;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use plan::{BodyKind, Plan, Scenario};
use report::Row;

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
    let bodies = Bodies::load();
    let plan = if full { plan::full() } else { plan::smoke() };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the client's tokio runtime");
    let rows = run_plan(&runtime, &plan, &bodies);
    let reads = read_path::run(&runtime, &plan);
    if !rows.is_empty() {
        report::print(&plan, &rows);
    }
    read_path::print(&plan, &reads);
    if !full {
        // `SLUICE_LOAD_ONLY` may leave either half of the plan empty.
        if !plan.groups.is_empty() {
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

fn run_plan(runtime: &tokio::runtime::Runtime, plan: &Plan, bodies: &Bodies) -> Vec<Row> {
    let mut rows = Vec::new();
    for group in &plan.groups {
        let server = server::ServerProcess::start(group.target);
        for scenario in &group.scenarios {
            rows.push(run_scenario(runtime, plan, scenario, &server, bodies));
        }
    }
    rows
}

fn run_scenario(
    runtime: &tokio::runtime::Runtime,
    plan: &Plan,
    scenario: &Scenario,
    server: &server::ServerProcess,
    bodies: &Bodies,
) -> Row {
    limits::check_open_files(scenario);
    let body = bodies.get(scenario.body);
    eprintln!(
        "load: {} against {} at {}: {} connections, {:?} warm-up, {:?} measured",
        scenario.name, server.label, server.addr, scenario.conns, plan.warmup, plan.measure
    );
    let spec = load::LoadSpec {
        addr: server.addr,
        host: server.addr.to_string(),
        authorization: server.authorization.clone(),
        body: body.bytes.clone(),
        respond_async: scenario.respond_async,
        websocket: scenario.websocket,
    };
    let phases = load::PhaseLengths {
        warmup: plan.warmup,
        measure: plan.measure,
    };
    let tally = runtime.block_on(load::run(Arc::new(spec), scenario.conns, phases));
    Row {
        scenario: *scenario,
        secs: plan.measure.as_secs_f64(),
        events_per_request: body.events,
        body_len: body.bytes.len(),
        tally,
        peak_rss_kib: server.peak_rss_kib(),
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

/// Which scenarios run, with how many connections, for how long.
mod plan {
    use std::time::Duration;

    use super::{env_parse, env_secs};

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Target {
        Gateway,
        /// The gateway with a key and (never refusing) rate limits configured.
        AuthGateway,
        /// The gateway with a JSON Schema on the stream the load posts to.
        SchemaGateway,
        CeilingHttp,
        CeilingParseZstd,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum BodyKind {
        One,
        Hundred,
    }

    #[derive(Clone, Copy, Debug)]
    pub struct Scenario {
        pub name: &'static str,
        pub target: Target,
        /// Frames over `GET …/ws` instead of POSTs (gateway only).
        pub websocket: bool,
        pub respond_async: bool,
        pub body: BodyKind,
        pub conns: usize,
    }

    /// Servers run one after another; the scenarios of a group share one process.
    pub struct Group {
        pub target: Target,
        pub scenarios: Vec<Scenario>,
    }

    /// A read-path scenario: one fresh gateway, one row per subscriber count.
    #[derive(Clone, Debug, PartialEq)]
    pub enum ReadScenario {
        /// POST → WebSocket delivery latency, one subscriber from `latest`.
        Delivery { rate: f64 },
        /// Store requests/s with each of `subscribers` on one stream.
        Fanout { rate: f64, subscribers: Vec<usize> },
    }

    impl ReadScenario {
        pub fn name(&self) -> &'static str {
            match self {
                ReadScenario::Delivery { .. } => DELIVERY,
                ReadScenario::Fanout { .. } => FANOUT,
            }
        }
    }

    const DELIVERY: &str = "delivery";
    const FANOUT: &str = "fanout";
    const READ_NAMES: [&str; 2] = [DELIVERY, FANOUT];

    pub struct Plan {
        pub groups: Vec<Group>,
        pub reads: Vec<ReadScenario>,
        pub warmup: Duration,
        pub measure: Duration,
    }

    /// Connections of a ceiling run unless `SLUICE_LOAD_CONNS_<SCENARIO>` says otherwise.
    const CEILING_CONNS: usize = 256;

    const fn ceiling(name: &'static str, target: Target, body: BodyKind) -> Scenario {
        Scenario {
            name,
            target,
            websocket: false,
            respond_async: false,
            body,
            conns: CEILING_CONNS,
        }
    }

    const fn gateway(
        name: &'static str,
        respond_async: bool,
        body: BodyKind,
        conns: usize,
    ) -> Scenario {
        Scenario {
            name,
            target: Target::Gateway,
            websocket: false,
            respond_async,
            body,
            conns,
        }
    }

    /// The same batches as frames on WebSocket ingest connections, one frame
    /// in flight per connection, like one request in flight per HTTP connection.
    const fn gateway_ws(name: &'static str, body: BodyKind, conns: usize) -> Scenario {
        Scenario {
            websocket: true,
            ..gateway(name, false, body, conns)
        }
    }

    /// A `gateway` scenario on the gateway with auth and rate limits on.
    const fn gateway_auth(name: &'static str, body: BodyKind, conns: usize) -> Scenario {
        Scenario {
            target: Target::AuthGateway,
            ..gateway(name, false, body, conns)
        }
    }

    /// A `gateway` scenario on the gateway whose stream has a JSON Schema.
    const fn gateway_schema(name: &'static str, body: BodyKind, conns: usize) -> Scenario {
        Scenario {
            target: Target::SchemaGateway,
            ..gateway(name, false, body, conns)
        }
    }

    /// What an auth scenario's name ends with; without it, its plain twin's.
    pub const AUTH_SUFFIX: &str = "-auth";
    /// What a schema scenario's name ends with; without it, its plain twin's.
    pub const SCHEMA_SUFFIX: &str = "-schema";

    /// The plain scenario a variant (`-auth`, `-schema`) is compared with.
    pub fn twin(name: &str) -> Option<&str> {
        name.strip_suffix(AUTH_SUFFIX)
            .or_else(|| name.strip_suffix(SCHEMA_SUFFIX))
    }

    /// Every scenario with its default connection count; ceilings first, so
    /// the gateway's rows can be read against them, and each auth scenario
    /// right after its plain twin.
    const ALL: [Scenario; 12] = [
        ceiling("ceiling-http-1", Target::CeilingHttp, BodyKind::One),
        ceiling("ceiling-http-100", Target::CeilingHttp, BodyKind::Hundred),
        ceiling(
            "ceiling-parse-zstd-1",
            Target::CeilingParseZstd,
            BodyKind::One,
        ),
        ceiling(
            "ceiling-parse-zstd-100",
            Target::CeilingParseZstd,
            BodyKind::Hundred,
        ),
        gateway("durable-1", false, BodyKind::One, 4000),
        gateway_auth("durable-1-auth", BodyKind::One, 4000),
        gateway("durable-100", false, BodyKind::Hundred, 1000),
        gateway_auth("durable-100-auth", BodyKind::Hundred, 1000),
        gateway_schema("durable-100-schema", BodyKind::Hundred, 1000),
        gateway("async-1", true, BodyKind::One, 256),
        gateway("async-100", true, BodyKind::Hundred, 256),
        gateway_ws("ws-durable-100", BodyKind::Hundred, 1000),
    ];

    /// `cargo bench`: every selected scenario, each on a fresh server process
    /// (so its peak memory is its own).
    pub fn full() -> Plan {
        let only = selected_names();
        let groups = ALL
            .iter()
            .filter(|s| only.as_ref().is_none_or(|names| names.contains(&s.name)))
            .map(|s| Group {
                target: s.target,
                scenarios: vec![Scenario {
                    conns: conns_for(s),
                    ..*s
                }],
            })
            .collect();
        let reads = READ_NAMES
            .iter()
            .filter(|name| only.as_ref().is_none_or(|names| names.contains(name)))
            .map(|name| read_scenario(name))
            .collect();
        Plan {
            groups,
            reads,
            warmup: env_secs("SLUICE_LOAD_WARMUP_SECS", 2.0),
            measure: env_secs("SLUICE_LOAD_SECS", 10.0),
        }
    }

    /// The read scenario `name` as the environment configures it.
    fn read_scenario(name: &str) -> ReadScenario {
        if name == DELIVERY {
            return ReadScenario::Delivery {
                rate: rate("SLUICE_LOAD_DELIVERY_RATE", 200.0),
            };
        }
        ReadScenario::Fanout {
            rate: rate("SLUICE_LOAD_FANOUT_RATE", 50.0),
            subscribers: subscriber_counts(),
        }
    }

    fn rate(variable: &str, default: f64) -> f64 {
        let rate = env_parse(variable).unwrap_or(default);
        assert!(
            rate.is_finite() && rate > 0.0,
            "{variable} must be a positive number of requests per second"
        );
        rate
    }

    fn subscriber_counts() -> Vec<usize> {
        const VARIABLE: &str = "SLUICE_LOAD_FANOUT_SUBSCRIBERS";
        let raw = std::env::var(VARIABLE).unwrap_or_else(|_| "1,10,100".to_string());
        let counts: Vec<usize> = raw
            .split(',')
            .map(|n| n.trim().parse().ok().filter(|&n| n > 0))
            .collect::<Option<_>>()
            .unwrap_or_else(|| panic!("{VARIABLE}={raw:?} must be counts like 1,10,100"));
        assert!(!counts.is_empty(), "{VARIABLE} names no subscriber count");
        counts
    }

    /// The smoke run's scenarios unless `SLUICE_LOAD_ONLY` names others.
    const SMOKE: [&str; 6] = [
        "ceiling-http-1",
        "ceiling-parse-zstd-100",
        "durable-1",
        "durable-1-auth",
        "async-1",
        "durable-100-schema",
    ];

    /// `cargo test`: both ceilings, `durable-1`, `durable-1-auth`, `durable-100-schema` and
    /// `async-1` (or those `SLUICE_LOAD_ONLY` names) with 4 connections for
    /// about a second each, neighbours on the same server sharing its
    /// process; then a few events through `delivery` and through `fanout`
    /// with 2 subscribers.
    pub fn smoke() -> Plan {
        let only = selected_names();
        let chosen = |name: &str| match &only {
            Some(names) => names.contains(&name),
            None => SMOKE.contains(&name) || READ_NAMES.contains(&name),
        };
        let mut groups: Vec<Group> = Vec::new();
        for s in ALL.iter().filter(|s| chosen(s.name)) {
            let s = Scenario { conns: 4, ..*s };
            match groups.last_mut() {
                Some(group) if group.target == s.target => group.scenarios.push(s),
                _ => groups.push(Group {
                    target: s.target,
                    scenarios: vec![s],
                }),
            }
        }
        let reads = [
            ReadScenario::Delivery { rate: 20.0 },
            ReadScenario::Fanout {
                rate: 20.0,
                subscribers: vec![2],
            },
        ];
        Plan {
            groups,
            reads: reads.into_iter().filter(|r| chosen(r.name())).collect(),
            warmup: Duration::from_millis(200),
            measure: Duration::from_secs(1),
        }
    }

    fn selected_names() -> Option<Vec<&'static str>> {
        let raw = std::env::var("SLUICE_LOAD_ONLY").ok()?;
        let names = raw
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(|name| {
                let known = ALL.iter().map(|s| s.name).chain(READ_NAMES);
                let known = known.collect::<Vec<_>>();
                known
                    .iter()
                    .copied()
                    .find(|k| *k == name)
                    .unwrap_or_else(|| {
                        panic!(
                            "SLUICE_LOAD_ONLY names {name:?}; known scenarios: {}",
                            known.join(", ")
                        )
                    })
            })
            .collect();
        Some(names)
    }

    pub fn conns_variable(name: &str) -> String {
        format!(
            "SLUICE_LOAD_CONNS_{}",
            name.to_uppercase().replace('-', "_")
        )
    }

    /// `SLUICE_LOAD_CONNS_<SCENARIO>`, else (an auth scenario) its twin's,
    /// else the default: an auth row compares with its twin at equal load.
    fn conns_for(s: &Scenario) -> usize {
        let variable = conns_variable(s.name);
        let twin = twin(s.name);
        let conns = env_parse(&variable)
            .or_else(|| twin.and_then(|twin| env_parse(&conns_variable(twin))))
            .unwrap_or(s.conns);
        assert!(conns > 0, "{variable} must be at least 1");
        conns
    }
}

/// The open-files limit: every connection is a descriptor here and one in the server.
mod limits {
    use super::plan::{conns_variable, Scenario};

    /// Descriptors beyond the connections: runtime, pipes, store files.
    const HEADROOM: u64 = 128;

    pub fn check_open_files(scenario: &Scenario) {
        let variable = conns_variable(scenario.name);
        check_sockets(scenario.name, scenario.conns, &variable);
    }

    /// Fails unless `sockets` connections fit the limit; `variable` lowers them.
    pub fn check_sockets(name: &str, sockets: usize, variable: &str) {
        let Some(limit) = open_files_soft_limit() else {
            return;
        };
        let needed = sockets as u64 + HEADROOM;
        assert!(
            needed <= limit,
            "{name}: {sockets} connections need about {needed} open files but `ulimit -n` is {limit}; \
             lower {variable} or raise the limit",
        );
    }

    /// The soft limit from /proc/self/limits; `None` where unknown or unlimited.
    fn open_files_soft_limit() -> Option<u64> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse().ok()
    }
}

/// Server child processes: start, find the address they print, sample memory, kill.
mod server {
    use std::io::{BufRead, BufReader};
    use std::net::SocketAddr;
    use std::process::{Child, ChildStdout, Command, Stdio};
    use std::sync::mpsc::{self, RecvTimeoutError};
    use std::time::{Duration, Instant};

    use http::HeaderValue;
    use tempfile::TempDir;

    use super::plan::Target;

    const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

    /// Kills the child when dropped, including when the harness panics.
    struct ChildGuard(Child);

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    pub struct ServerProcess {
        pub label: &'static str,
        pub addr: SocketAddr,
        /// `Bearer KEY` for a gateway with auth on.
        pub authorization: Option<HeaderValue>,
        // Field order matters: the process dies before its store is removed.
        child: ChildGuard,
        _store: Option<TempDir>,
    }

    impl ServerProcess {
        pub fn start(target: Target) -> ServerProcess {
            match target {
                Target::Gateway => start_gateway(None),
                Target::AuthGateway => start_auth_gateway(),
                Target::SchemaGateway => start_schema_gateway(),
                Target::CeilingHttp => start_ceiling("ceiling-http", super::ceiling::HTTP),
                Target::CeilingParseZstd => {
                    start_ceiling("ceiling-parse-zstd", super::ceiling::PARSE_ZSTD)
                }
            }
        }

        /// Peak resident memory so far (VmHWM), in KiB.
        pub fn peak_rss_kib(&self) -> Option<u64> {
            let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id()));
            let status = status.ok()?;
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        }
    }

    /// The gateway on a fresh file store; `config` is written beside the
    /// store as `sluice.toml` and passed with `--config`.
    fn start_gateway(config: Option<&str>) -> ServerProcess {
        let dir = tempfile::Builder::new()
            .prefix("sluice-load-")
            .tempdir()
            .expect("create a temporary directory for the gateway's file store");
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command.arg("serve");
        if let Some(config) = config {
            let file = dir.path().join("sluice.toml");
            std::fs::write(&file, config)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
            command.arg("--config").arg(file);
        }
        let store = dir.path().join("store");
        command
            .env("SLUICE_LISTEN", "127.0.0.1:0")
            .env("SLUICE_STORE", format!("file://{}", store.display()))
            .env("RUST_LOG", "warn");
        launch("gateway", command, Some(dir))
    }

    /// The gateway with one tenant and one write key for the stream the
    /// load posts to, and rate limits on the key, the stream and the tenant,
    /// each far above what loopback can send: every request takes the whole
    /// check path and none is refused.
    fn start_auth_gateway() -> ServerProcess {
        let key = sluice::auth::keys::generate().expect("generate an API key");
        let config = auth_config(&sluice::auth::keys::hash_text(&key));
        let mut server = start_gateway(Some(&config));
        server.label = "gateway (auth, rate limits)";
        let bearer = HeaderValue::try_from(format!("Bearer {key}"))
            .expect("a generated key is a valid header value");
        server.authorization = Some(bearer);
        server
    }

    /// The gateway (auth off) with `benches/data/pageview.schema.json` on the
    /// stream the load posts to; every bench event satisfies it.
    fn start_schema_gateway() -> ServerProcess {
        let schema = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/data/pageview.schema.json"
        );
        let config = format!(
            "[tenants.default.streams.{}]\nschema_file = {schema:?}\n",
            super::load::STREAM
        );
        let mut server = start_gateway(Some(&config));
        server.label = "gateway (JSON Schema)";
        server
    }

    /// The config of `start_auth_gateway`: `hash` is the key's `hash_text`.
    fn auth_config(hash: &str) -> String {
        // u32 fields; governor caps a bucket at 1e9 cells/s, still far beyond reach.
        const RATE: &str = "{ events_per_sec = 4000000000, bytes_per_sec = 4000000000 }";
        let stream = super::load::STREAM;
        format!(
            r#"[tenants.bench]
rate = {RATE}
key_rate = {RATE}
[tenants.bench.streams.{stream}]
rate = {RATE}

[[keys]]
id = "bench"
tenant = "bench"
hash = "{hash}"
scopes = ["write"]
streams = ["{stream}*"]
"#
        )
    }

    fn start_ceiling(label: &'static str, mode: &str) -> ServerProcess {
        let exe =
            std::env::current_exe().expect("locate this bench binary to run a ceiling server");
        let mut command = Command::new(exe);
        command.args(["--ceiling-server", mode]);
        launch(label, command, None)
    }

    /// Starts the process and waits for its `listening on ADDR` line.
    /// Its stdin stays open: a ceiling server exits when it closes.
    fn launch(label: &'static str, mut command: Command, store: Option<TempDir>) -> ServerProcess {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!("cannot start the {label} {:?}: {e}", command.get_program())
        });
        let stdout = child.stdout.take().expect("the child's stdout is piped");
        let mut child = ChildGuard(child);
        let addr = wait_for_address(label, stdout, &mut child.0);
        ServerProcess {
            label,
            addr,
            authorization: None,
            child,
            _store: store,
        }
    }

    fn wait_for_address(label: &str, stdout: ChildStdout, child: &mut Child) -> SocketAddr {
        let (found, address) = mpsc::channel();
        let prefix = format!("[{label}] ");
        std::thread::spawn(move || forward_stdout(stdout, found, &prefix));
        match address.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => addr,
            Err(RecvTimeoutError::Timeout) => panic!(
                "the {label} did not print `listening on 127.0.0.1:PORT` within {STARTUP_TIMEOUT:?}"
            ),
            Err(RecvTimeoutError::Disconnected) => panic!(
                "the {label} closed its stdout without printing `listening on 127.0.0.1:PORT` ({})",
                exit_note(child)
            ),
        }
    }

    /// Sends the first address found, then echoes the rest to stderr so the
    /// child never blocks on a full pipe.
    fn forward_stdout(stdout: ChildStdout, found: mpsc::Sender<SocketAddr>, prefix: &str) {
        let mut found = Some(found);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if found.is_some() {
                if let Some(addr) = listening_address(&line) {
                    let _ = found.take().map(|sender| sender.send(addr));
                    continue;
                }
            }
            eprintln!("{prefix}{line}");
        }
    }

    fn listening_address(line: &str) -> Option<SocketAddr> {
        let (_, rest) = line.split_once("listening on ")?;
        let token = rest.split_whitespace().next()?;
        let token = token.trim_matches(|c: char| {
            !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        });
        token.parse().ok()
    }

    fn exit_note(child: &mut Child) -> String {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => return format!("it exited: {status}"),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return format!("its status is unknown: {e}"),
            }
        }
        "it is still running".to_string()
    }
}

/// The client: keep-alive connections, each a task sending requests back to back.
mod load {
    use std::error::Error;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use hdrhistogram::Histogram;
    use http::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST};
    use http::{HeaderValue, Request, StatusCode};
    use http_body_util::{BodyExt, Full};
    use hyper::client::conn::http1::{self, SendRequest};
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpStream;
    use tokio::sync::{watch, Barrier};
    use tokio::time::{sleep_until, timeout_at, Instant};

    /// The stream every load request posts to (the auth gateway's key may
    /// write it); `EVENTS_PATH` names it too.
    pub const STREAM: &str = "pageviews";
    const EVENTS_PATH: &str = "/v1/streams/pageviews/events";
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
    const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
    /// Latencies above a minute are recorded as a minute.
    const MAX_LATENCY_US: u64 = 60_000_000;
    /// 2 significant figures (1 %): small enough for one histogram per connection.
    const HISTOGRAM_SIGFIG: u8 = 2;

    type Sender = SendRequest<Full<Bytes>>;

    pub struct LoadSpec {
        pub addr: SocketAddr,
        pub host: String,
        /// `Authorization` of every request, rendered once (a clone shares it).
        pub authorization: Option<HeaderValue>,
        pub body: Bytes,
        pub respond_async: bool,
        pub websocket: bool,
    }

    impl LoadSpec {
        fn request(&self) -> Request<Full<Bytes>> {
            let mut request = Request::post(EVENTS_PATH)
                .header(HOST, &self.host)
                .header(CONTENT_TYPE, "application/json");
            if self.respond_async {
                request = request.header("prefer", "respond-async");
            }
            if let Some(authorization) = &self.authorization {
                request = request.header(AUTHORIZATION, authorization.clone());
            }
            request
                .body(Full::new(self.body.clone()))
                .expect("the request's parts are valid")
        }
    }

    #[derive(Clone, Copy)]
    pub struct PhaseLengths {
        pub warmup: Duration,
        pub measure: Duration,
    }

    /// When measuring starts and when every task stops, fixed once all are connected.
    #[derive(Clone, Copy)]
    pub(super) struct Phases {
        pub(super) measure_start: Instant,
        pub(super) end: Instant,
    }

    #[derive(Clone)]
    pub struct Answer {
        pub status: StatusCode,
        pub body: Bytes,
        pub(super) close: bool,
    }

    /// What one connection (or, merged, a whole run) saw. Answers and latencies
    /// count only inside the measured window; connection errors count throughout.
    pub struct Tally {
        /// Latency of 2xx answers, in microseconds.
        pub latency_us: Histogram<u64>,
        pub ok: u64,
        pub non_2xx: u64,
        pub overloaded: u64,
        pub conn_errors: u64,
        pub first_failure: Option<String>,
        /// The first 2xx answer, for the smoke run's contract checks.
        pub sample: Option<Answer>,
    }

    impl Tally {
        pub(super) fn new() -> Tally {
            Tally {
                latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, HISTOGRAM_SIGFIG)
                    .expect("the latency histogram's bounds are valid"),
                ok: 0,
                non_2xx: 0,
                overloaded: 0,
                conn_errors: 0,
                first_failure: None,
                sample: None,
            }
        }

        pub(super) fn record(&mut self, answer: &Answer, latency: Duration) {
            if answer.status.is_success() {
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.latency_us.saturating_record(micros);
                self.ok += 1;
                if self.sample.is_none() {
                    self.sample = Some(answer.clone());
                }
                return;
            }
            self.non_2xx += 1;
            if answer.status == StatusCode::SERVICE_UNAVAILABLE {
                self.overloaded += 1;
            }
            if self.first_failure.is_none() {
                let shown = &answer.body[..answer.body.len().min(300)];
                let text = String::from_utf8_lossy(shown);
                self.first_failure = Some(format!("HTTP {}: {text}", answer.status));
            }
        }

        pub(super) fn connection_error(&mut self, what: String) {
            self.conn_errors += 1;
            self.first_failure.get_or_insert(what);
        }

        fn merge(&mut self, other: Tally) {
            self.latency_us
                .add(&other.latency_us)
                .expect("histograms with the same bounds merge");
            self.ok += other.ok;
            self.non_2xx += other.non_2xx;
            self.overloaded += other.overloaded;
            self.conn_errors += other.conn_errors;
            if self.first_failure.is_none() {
                self.first_failure = other.first_failure;
            }
            if self.sample.is_none() {
                self.sample = other.sample;
            }
        }
    }

    /// Opens `conns` connections, then drives them through the warm-up and the
    /// measured window, and returns everything they saw.
    pub async fn run(spec: Arc<LoadSpec>, conns: usize, lengths: PhaseLengths) -> Tally {
        let connected = Arc::new(Barrier::new(conns + 1));
        let (start, started) = watch::channel(None);
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                tokio::spawn(connection_task(
                    spec.clone(),
                    connected.clone(),
                    started.clone(),
                ))
            })
            .collect();
        let opening = Instant::now();
        connected.wait().await;
        eprintln!("load:   connections opened in {:.2?}", opening.elapsed());
        let measure_start = Instant::now() + lengths.warmup;
        start.send_replace(Some(Phases {
            measure_start,
            end: measure_start + lengths.measure,
        }));
        let mut total = Tally::new();
        for task in tasks {
            total.merge(task.await.expect("a load task panicked"));
        }
        total
    }

    async fn connection_task(
        spec: Arc<LoadSpec>,
        connected: Arc<Barrier>,
        mut started: watch::Receiver<Option<Phases>>,
    ) -> Tally {
        if spec.websocket {
            return super::ws_load::connection_task(spec, connected, started).await;
        }
        let mut tally = Tally::new();
        let mut sender = connect(&spec, &mut tally, Instant::now() + CONNECT_TIMEOUT).await;
        connected.wait().await;
        let phases = wait_for_start(&mut started).await;
        loop {
            if let Some(open) = sender.take() {
                drive(open, &spec, &phases, &mut tally).await;
            }
            if Instant::now() >= phases.end {
                return tally;
            }
            sender = connect(&spec, &mut tally, phases.end).await;
            if sender.is_none() {
                sleep_until((Instant::now() + RECONNECT_BACKOFF).min(phases.end)).await;
            }
        }
    }

    pub(super) async fn wait_for_start(started: &mut watch::Receiver<Option<Phases>>) -> Phases {
        let signal = started
            .wait_for(Option::is_some)
            .await
            .expect("the harness keeps the start signal open");
        (*signal).expect("wait_for returns a started signal")
    }

    async fn connect(spec: &LoadSpec, tally: &mut Tally, deadline: Instant) -> Option<Sender> {
        match timeout_at(deadline, handshake(spec.addr)).await {
            Ok(Ok(sender)) => Some(sender),
            Ok(Err(e)) => {
                tally.connection_error(format!("connect: {e}"));
                None
            }
            Err(_) => {
                tally.connection_error("connect: timed out".to_string());
                None
            }
        }
    }

    async fn handshake(addr: SocketAddr) -> Result<Sender, Box<dyn Error + Send + Sync>> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        // The connection's own errors surface through `sender`.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Sends requests back to back until the run ends or the connection is
    /// gone (an error, or the server asked to close it).
    async fn drive(mut sender: Sender, spec: &LoadSpec, phases: &Phases, tally: &mut Tally) {
        loop {
            let sent = Instant::now();
            if sent >= phases.end {
                return;
            }
            let Ok(outcome) = timeout_at(phases.end, send_one(&mut sender, spec)).await else {
                return; // in flight when the run ended: not counted
            };
            match outcome {
                Ok(answer) => {
                    if sent >= phases.measure_start {
                        tally.record(&answer, sent.elapsed());
                    }
                    if answer.close {
                        return;
                    }
                }
                Err(e) => {
                    tally.connection_error(format!("request: {e}"));
                    return;
                }
            }
        }
    }

    async fn send_one(sender: &mut Sender, spec: &LoadSpec) -> Result<Answer, hyper::Error> {
        sender.ready().await?;
        let response = sender.send_request(spec.request()).await?;
        let status = response.status();
        let close = response
            .headers()
            .get(CONNECTION)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            body,
            close,
        })
    }
}

/// WebSocket ingest load: one connection, one frame in flight, ack by ack.
mod ws_load {
    use std::sync::Arc;

    use futures::{SinkExt, StreamExt};
    use http::StatusCode;
    use tokio::sync::{watch, Barrier};
    use tokio::time::{timeout_at, Instant};
    use tokio_tungstenite::tungstenite::Message;

    use super::load::{wait_for_start, Answer, LoadSpec, Phases, Tally, STREAM};

    type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    pub async fn connection_task(
        spec: Arc<LoadSpec>,
        connected: Arc<Barrier>,
        mut started: watch::Receiver<Option<Phases>>,
    ) -> Tally {
        let mut tally = Tally::new();
        let url = format!("ws://{}/v1/streams/{STREAM}/ws", spec.addr);
        let socket = match tokio_tungstenite::connect_async(url).await {
            Ok((s, _)) => Some(s),
            Err(e) => {
                tally.connection_error(format!("websocket connect: {e}"));
                None
            }
        };
        connected.wait().await;
        let phases = wait_for_start(&mut started).await;
        if let Some(socket) = socket {
            drive(socket, &spec, &phases, &mut tally).await;
        }
        tally
    }

    async fn drive(mut socket: Socket, spec: &LoadSpec, phases: &Phases, tally: &mut Tally) {
        let frame = String::from_utf8_lossy(&spec.body).into_owned();
        loop {
            let sent = Instant::now();
            if sent >= phases.end {
                return;
            }
            if socket.send(Message::text(frame.clone())).await.is_err() {
                tally.connection_error("websocket send failed".into());
                return;
            }
            let Ok(Some(ack)) = timeout_at(phases.end, next_text(&mut socket)).await else {
                return; // in flight when the run ended, or the socket closed
            };
            if sent >= phases.measure_start {
                tally.record(&answer_of(ack), sent.elapsed());
            }
        }
    }

    async fn next_text(socket: &mut Socket) -> Option<bytes::Bytes> {
        while let Some(Ok(msg)) = socket.next().await {
            if let Message::Text(t) = msg {
                return Some(bytes::Bytes::from(t));
            }
        }
        None
    }

    /// An ack with `accepted` is a 200; an error frame carries its `status`.
    fn answer_of(ack: bytes::Bytes) -> Answer {
        let v: serde_json::Value = serde_json::from_slice(&ack).unwrap_or_default();
        let status = match v.get("status").and_then(|s| s.as_u64()) {
            Some(code) => StatusCode::from_u16(code as u16).unwrap_or(StatusCode::BAD_GATEWAY),
            None if v.get("accepted").is_some() => StatusCode::OK,
            None => StatusCode::BAD_GATEWAY,
        };
        Answer {
            status,
            body: ack,
            close: false,
        }
    }
}

/// The markdown table.
mod report {
    use super::load::Tally;
    use super::plan::{Plan, Scenario, Target};

    pub struct Row {
        pub scenario: Scenario,
        pub secs: f64,
        pub events_per_request: u64,
        pub body_len: usize,
        pub tally: Tally,
        pub peak_rss_kib: Option<u64>,
    }

    impl Row {
        fn requests_per_sec(&self) -> f64 {
            self.tally.ok as f64 / self.secs
        }

        fn events_per_sec(&self) -> f64 {
            self.requests_per_sec() * self.events_per_request as f64
        }

        fn megabytes_per_sec(&self) -> f64 {
            self.requests_per_sec() * self.body_len as f64 / 1e6
        }

        fn latency_ms(&self, quantile: f64) -> String {
            if self.tally.latency_us.is_empty() {
                return "–".to_string();
            }
            let micros = self.tally.latency_us.value_at_quantile(quantile);
            format!("{:.2}", micros as f64 / 1000.0)
        }

        fn peak_rss(&self) -> String {
            self.peak_rss_kib.map_or("–".to_string(), |kib| {
                format!("{:.0}", kib as f64 / 1024.0)
            })
        }
    }

    pub fn print(plan: &Plan, rows: &[Row]) {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!();
        println!(
            "sluice load: {:?} measured after {:?} warm-up per scenario, {cores} cores shared by client and server",
            plan.measure, plan.warmup
        );
        println!();
        println!(
            "| scenario | conns | req/s | events/s | MB/s | p50 ms | p99 ms | p99.9 ms \
             | non-2xx (503) | conn errors | ÷ ceiling-http | ÷ ceiling-parse-zstd | server peak RSS MiB |"
        );
        println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for row in rows {
            print_row(row, rows);
        }
        println!();
        println!(
            "MB/s counts request body bytes; latencies are of 2xx answers; \
             ÷ columns compare events/s with the ceiling run on the same body."
        );
        print_auth_costs(rows);
        print_failures(rows);
    }

    /// Each auth or schema row's throughput as a share of its plain twin's
    /// in this run.
    fn print_auth_costs(rows: &[Row]) {
        for row in rows {
            let Some(twin) = super::plan::twin(row.scenario.name) else {
                continue;
            };
            let Some(plain) = rows.iter().find(|r| r.scenario.name == twin) else {
                continue;
            };
            if plain.requests_per_sec() <= 0.0 {
                continue;
            }
            let share = row.requests_per_sec() / plain.requests_per_sec();
            let refused = match row.tally.non_2xx {
                0 => String::new(),
                n => format!("; {n} non-2xx, so not a cost measure"),
            };
            let (what, target) = match row.scenario.target {
                Target::SchemaGateway => ("with a JSON Schema on every event", 80),
                _ => ("with auth and rate limits on", 95),
            };
            println!(
                "- {}: {:.1} % of {twin}'s events/s {what} (target ≥ {target} %){refused}",
                row.scenario.name,
                share * 100.0,
            );
        }
    }

    fn print_row(row: &Row, rows: &[Row]) {
        let tally = &row.tally;
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {} | {} | {} | {} ({}) | {} | {} | {} | {} |",
            row.scenario.name,
            row.scenario.conns,
            row.requests_per_sec(),
            row.events_per_sec(),
            row.megabytes_per_sec(),
            row.latency_ms(0.5),
            row.latency_ms(0.99),
            row.latency_ms(0.999),
            tally.non_2xx,
            tally.overloaded,
            tally.conn_errors,
            ratio(row, rows, Target::CeilingHttp),
            ratio(row, rows, Target::CeilingParseZstd),
            row.peak_rss(),
        );
    }

    /// This row's events/s over those of the `ceiling` run on the same body.
    fn ratio(row: &Row, rows: &[Row], ceiling: Target) -> String {
        let matching = rows
            .iter()
            .find(|r| r.scenario.target == ceiling && r.scenario.body == row.scenario.body);
        match matching {
            Some(c) if c.events_per_sec() > 0.0 => {
                format!("{:.2}", row.events_per_sec() / c.events_per_sec())
            }
            _ => "–".to_string(),
        }
    }

    fn print_failures(rows: &[Row]) {
        for row in rows {
            if let Some(failure) = &row.tally.first_failure {
                println!("- {}: first failure: {failure}", row.scenario.name);
            }
        }
    }
}

/// The smoke run's checks (`cargo test`): some 2xx everywhere, and the
/// gateway's answers have the contract's shape.
mod smoke {
    use http::StatusCode;

    use super::plan::{Scenario, Target};
    use super::report::Row;

    pub fn check(rows: &[Row]) {
        for row in rows {
            let tally = &row.tally;
            assert!(
                tally.ok > 0,
                "{}: no request succeeded ({} non-2xx, {} connection errors; first failure: {})",
                row.scenario.name,
                tally.non_2xx,
                tally.conn_errors,
                tally.first_failure.as_deref().unwrap_or("none")
            );
        }
        for row in rows.iter().filter(|r| {
            matches!(
                r.scenario.target,
                Target::AuthGateway | Target::SchemaGateway
            )
        }) {
            check_all_2xx(row);
        }
        for row in rows.iter().filter(|r| is_durable_post(&r.scenario)) {
            check_durable_answer(row);
        }
        for row in rows.iter().filter(|r| r.scenario.name == "async-1") {
            check_status(row, StatusCode::ACCEPTED);
        }
        println!("load smoke: ok ({} scenarios answered)", rows.len());
    }

    /// Durable POSTs to either gateway (`durable-1`, `durable-100-auth`, …).
    fn is_durable_post(s: &Scenario) -> bool {
        matches!(
            s.target,
            Target::Gateway | Target::AuthGateway | Target::SchemaGateway
        ) && !s.respond_async
            && !s.websocket
    }

    /// An auth scenario measures the cost of checks that pass: a 401/403
    /// (wrong key or config) or 429 (limits too low) makes its row meaningless.
    fn check_all_2xx(row: &Row) {
        let tally = &row.tally;
        assert!(
            tally.non_2xx == 0,
            "{}: {} answers were not 2xx, so auth or rate limits refused some \
             (first failure: {})",
            row.scenario.name,
            tally.non_2xx,
            tally.first_failure.as_deref().unwrap_or("none")
        );
    }

    fn check_status(row: &Row, expected: StatusCode) {
        let sample = row
            .tally
            .sample
            .as_ref()
            .expect("a run with 2xx keeps a sample");
        assert_eq!(
            sample.status,
            expected,
            "{}: expected HTTP {expected}, got {} ({})",
            row.scenario.name,
            sample.status,
            String::from_utf8_lossy(&sample.body)
        );
    }

    fn check_durable_answer(row: &Row) {
        check_status(row, StatusCode::OK);
        let sample = row
            .tally
            .sample
            .as_ref()
            .expect("a run with 2xx keeps a sample");
        let answer: serde_json::Value = serde_json::from_slice(&sample.body).unwrap_or_else(|e| {
            panic!(
                "{}: the 200 body is not JSON ({e}): {:?}",
                row.scenario.name, sample.body
            )
        });
        assert_eq!(
            answer["accepted"].as_u64(),
            Some(row.events_per_request),
            "{}: `accepted` should count the request's events: {answer}",
            row.scenario.name
        );
        assert_eq!(
            answer["rejected"].as_u64(),
            Some(0),
            "{}: nothing should be rejected: {answer}",
            row.scenario.name
        );
    }
}

/// The read-path scenarios (`delivery`, `fanout`): a paced producer, WebSocket
/// subscribers that time every event from its POST to its delivery, and the
/// gateway's store-request counter scraped at both ends of the measured window.
mod read_path {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use hdrhistogram::Histogram;

    use super::plan::{Plan, ReadScenario, Target};
    use super::server::ServerProcess;

    /// `batch.max_age_ms` + `read.poll_interval_ms` + 50 ms, at their defaults.
    const DELIVERY_P99_TARGET_MS: f64 = 200.0 + 50.0 + 50.0;
    /// How long subscribers get, after the producer's last answer, to receive
    /// every event sent in the measured window.
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
    /// Store req/s with N subscribers over those with 1 that still counts as
    /// flat: run-to-run noise on the development VM is about ±15 %.
    const FLAT_RATIO: f64 = 1.25;
    const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

    /// The warm-up and the measured window, on a clock the producer and the
    /// subscribers share (events carry `t_ns`, nanoseconds since `base`).
    #[derive(Clone, Copy)]
    pub struct Window {
        base: Instant,
        pub measure_start: Instant,
        pub end: Instant,
    }

    impl Window {
        fn new(base: Instant, warmup: Duration, measure: Duration) -> Window {
            let measure_start = Instant::now() + warmup;
            Window {
                base,
                measure_start,
                end: measure_start + measure,
            }
        }

        /// Now, as an event's `t_ns`.
        pub fn stamp(&self) -> u64 {
            u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
        }

        /// Whether an event stamped `t_ns` was sent inside the measured window.
        pub fn measured(&self, t_ns: u64) -> bool {
            let sent = self.base + Duration::from_nanos(t_ns);
            self.measure_start <= sent && sent < self.end
        }

        fn secs(&self) -> f64 {
            (self.end - self.measure_start).as_secs_f64()
        }
    }

    /// Where the subscribers of a step start.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Start {
        /// `from=latest`, as a live client would.
        Latest,
        /// Each partition's head read just before, so every later event is due.
        Head,
    }

    #[derive(Clone, Copy)]
    struct StepSpec {
        scenario: &'static str,
        subscribers: usize,
        rate: f64,
        start: Start,
    }

    /// One measured window: `subscribers` on the stream named after the scenario.
    pub struct Step {
        scenario: &'static str,
        subscribers: usize,
        start: Start,
        secs: f64,
        produced: produce::Produced,
        received: Vec<subscribe::Received>,
        open_errors: Vec<String>,
        /// Store requests made during the window, by `op`.
        store: BTreeMap<String, u64>,
        peak_rss_kib: Option<u64>,
    }

    /// What the steps of one scenario share.
    struct Ctx<'a> {
        server: &'a ServerProcess,
        http: reqwest::Client,
        base: Instant,
        warmup: Duration,
        measure: Duration,
    }

    /// Every read scenario of the plan, each on a fresh gateway.
    pub fn run(runtime: &tokio::runtime::Runtime, plan: &Plan) -> Vec<Step> {
        let mut steps = Vec::new();
        for scenario in &plan.reads {
            let server = ServerProcess::start(Target::Gateway);
            steps.extend(runtime.block_on(run_scenario(&server, plan, scenario)));
        }
        steps
    }

    async fn run_scenario(server: &ServerProcess, plan: &Plan, read: &ReadScenario) -> Vec<Step> {
        let ctx = Ctx {
            server,
            http: http_client(),
            base: Instant::now(),
            warmup: plan.warmup,
            measure: plan.measure,
        };
        let (rate, counts, start, knob) = match read {
            ReadScenario::Delivery { rate } => {
                (*rate, vec![1], Start::Latest, "SLUICE_LOAD_DELIVERY_RATE")
            }
            ReadScenario::Fanout { rate, subscribers } => (
                *rate,
                subscribers.clone(),
                Start::Head,
                "SLUICE_LOAD_FANOUT_SUBSCRIBERS",
            ),
        };
        let most = counts.iter().copied().max().unwrap_or(0);
        super::limits::check_sockets(read.name(), most + producer_sockets(rate), knob);
        let mut steps = Vec::new();
        for subscribers in counts {
            let spec = StepSpec {
                scenario: read.name(),
                subscribers,
                rate,
                start,
            };
            steps.push(run_step(&ctx, spec).await);
        }
        steps
    }

    fn http_client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(HTTP_TIMEOUT)
            .build()
            .expect("build the producer's HTTP client")
    }

    /// Connections the open-loop producer holds: a durable POST takes ~250 ms.
    fn producer_sockets(rate: f64) -> usize {
        (rate * 0.5).ceil() as usize + 8
    }

    /// Subscribes, then runs the producer through the warm-up and the
    /// measured window, then gives the subscribers time to catch up.
    async fn run_step(ctx: &Ctx<'_>, spec: StepSpec) -> Step {
        let addr = ctx.server.addr;
        eprintln!(
            "load: {} against the gateway at {addr}: {} subscribers, {} POST/s, {:?} warm-up, {:?} measured",
            spec.scenario, spec.subscribers, spec.rate, ctx.warmup, ctx.measure
        );
        let (sockets, open_errors) = open_subscriptions(ctx, spec).await;
        let window = Window::new(ctx.base, ctx.warmup, ctx.measure);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let subscribers: Vec<_> = sockets
            .into_iter()
            .map(|socket| subscribe::spawn(socket, window, stopped.clone()))
            .collect();
        let url = format!("http://{addr}/v1/streams/{}/events", spec.scenario);
        let producer = tokio::spawn(produce::run(ctx.http.clone(), url, spec.rate, window));
        let store = scrape::store_requests_over(&ctx.http, addr, window).await;
        let produced = producer.await.expect("the producer panicked");
        subscribe::drain(&subscribers, produced.measured_ok, DRAIN_TIMEOUT).await;
        stop.send_replace(true);
        Step {
            scenario: spec.scenario,
            subscribers: spec.subscribers,
            start: spec.start,
            secs: window.secs(),
            produced,
            received: subscribe::join(subscribers).await,
            open_errors,
            store,
            peak_rss_kib: ctx.server.peak_rss_kib(),
        }
    }

    async fn open_subscriptions(
        ctx: &Ctx<'_>,
        spec: StepSpec,
    ) -> (Vec<subscribe::Socket>, Vec<String>) {
        let addr = ctx.server.addr;
        let from = match spec.start {
            Start::Latest => "latest".to_string(),
            Start::Head => scrape::heads(&ctx.http, addr, spec.scenario).await,
        };
        subscribe::connect(addr, spec.scenario, &from, spec.subscribers).await
    }

    impl Step {
        fn store_per_sec(&self) -> f64 {
            self.store.values().sum::<u64>() as f64 / self.secs
        }

        /// Measured events received by the subscriber that got the fewest.
        fn fewest_delivered(&self) -> u64 {
            let fewest = self.received.iter().map(|r| r.measured).min();
            if self.open_errors.is_empty() {
                fewest.unwrap_or(0)
            } else {
                0
            }
        }

        fn latency_us(&self) -> Histogram<u64> {
            let mut all = subscribe::latency_histogram();
            for received in &self.received {
                all.add(&received.latency_us)
                    .expect("histograms with the same bounds merge");
            }
            all
        }

        fn first_error(&self) -> Option<&str> {
            let received = self.received.iter().find_map(|r| r.error.as_deref());
            self.open_errors.first().map(String::as_str).or(received)
        }
    }

    /// The read-path table, after the write-path one.
    pub fn print(plan: &Plan, steps: &[Step]) {
        if steps.is_empty() {
            return;
        }
        println!();
        println!(
            "sluice read path: {:?} measured after {:?} warm-up per step, file store, \
             one gateway per scenario (its steps share it)",
            plan.measure, plan.warmup
        );
        println!();
        println!(
            "| scenario | subscribers | POST/s | events sent | delivered (fewest per subscriber) \
             | p50 ms | p99 ms | p99.9 ms | max ms | store req/s | ÷ 1 subscriber \
             | server peak RSS MiB | target |"
        );
        println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|");
        for step in steps {
            print_row(step, steps);
        }
        println!();
        println!(
            "Events sent: 2xx POSTs (one event each) sent in the measured window; latency: \
             POST sent → event parsed from a subscriber's frame, for those events, every \
             subscriber merged; store req/s: rise of sluice_store_requests_total (every op) \
             over the window, the producer's own commits included."
        );
        print_notes(steps);
    }

    fn print_row(step: &Step, steps: &[Step]) {
        let latency = step.latency_us();
        let ms = |quantile: f64| {
            if latency.is_empty() {
                return "–".to_string();
            }
            format!("{:.1}", latency.value_at_quantile(quantile) as f64 / 1000.0)
        };
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {} |",
            step.scenario,
            step.subscribers,
            step.produced.measured_ok as f64 / step.secs,
            step.produced.measured_ok,
            step.fewest_delivered(),
            ms(0.5),
            ms(0.99),
            ms(0.999),
            ms(1.0),
            step.store_per_sec(),
            versus_one_subscriber(step, steps),
            step.peak_rss_kib.map_or("–".to_string(), |kib| format!(
                "{:.0}",
                kib as f64 / 1024.0
            )),
            target(step, steps, &latency),
        );
    }

    /// This step's store req/s over those of its scenario's 1-subscriber step.
    fn ratio_to_one(step: &Step, steps: &[Step]) -> Option<f64> {
        let one = steps.iter().find(|s| {
            s.scenario == step.scenario && s.subscribers == 1 && s.start == Start::Head
        })?;
        let fits = step.start == Start::Head && one.store_per_sec() > 0.0;
        fits.then(|| step.store_per_sec() / one.store_per_sec())
    }

    fn versus_one_subscriber(step: &Step, steps: &[Step]) -> String {
        ratio_to_one(step, steps).map_or("–".to_string(), |r| format!("{r:.2}"))
    }

    fn target(step: &Step, steps: &[Step], latency: &Histogram<u64>) -> String {
        if step.start == Start::Head {
            let verdict = match ratio_to_one(step, steps) {
                _ if step.subscribers == 1 => "baseline",
                Some(r) if r <= FLAT_RATIO => "flat",
                Some(_) => "NOT flat",
                None => "no 1-subscriber step",
            };
            return format!("÷ 1 subscriber ≤ {FLAT_RATIO}: {verdict}");
        }
        let p99_ms = latency.value_at_quantile(0.99) as f64 / 1000.0;
        let verdict = if !latency.is_empty() && p99_ms <= DELIVERY_P99_TARGET_MS {
            "met"
        } else {
            "MISSED"
        };
        format!("p99 ≤ {DELIVERY_P99_TARGET_MS:.0} ms: {verdict}")
    }

    fn print_notes(steps: &[Step]) {
        for step in steps {
            let ops: Vec<String> = step
                .store
                .iter()
                .filter(|(_, &n)| n > 0)
                .map(|(op, &n)| format!("{op} {:.1}", n as f64 / step.secs))
                .collect();
            println!(
                "- {} ×{}: store req/s by op: {}",
                step.scenario,
                step.subscribers,
                ops.join(", ")
            );
            if let Some(failure) = &step.produced.first_failure {
                println!("  {} POSTs failed; first: {failure}", step.produced.failed);
            }
            if let Some(error) = step.first_error() {
                println!("  first subscriber error: {error}");
            }
        }
    }

    /// The smoke run's checks: the events reached every subscriber.
    pub fn check(steps: &[Step]) {
        for step in steps {
            let name = format!("{} ×{}", step.scenario, step.subscribers);
            let error = step.first_error().unwrap_or("none");
            let sent = step.produced.measured_ok;
            assert!(
                sent > 0,
                "{name}: no POST succeeded ({} failed; first: {})",
                step.produced.failed,
                step.produced.first_failure.as_deref().unwrap_or("none")
            );
            let fewest = step.fewest_delivered();
            assert!(
                fewest > 0,
                "{name}: a subscriber got none of the {sent} events (first error: {error})"
            );
            // Subscribers that start at the head are owed every later event.
            assert!(
                step.start == Start::Latest || fewest == sent,
                "{name}: a subscriber got {fewest} of the {sent} events (first error: {error})"
            );
        }
        println!("load smoke: read path ok ({} steps delivered)", steps.len());
    }

    /// The producer: single durable events at a fixed rate.
    mod produce {
        use std::time::Duration;

        use reqwest::header::CONTENT_TYPE;
        use tokio::task::JoinSet;

        use super::Window;

        #[derive(Default)]
        pub struct Produced {
            /// 2xx answers to POSTs sent inside the measured window.
            pub measured_ok: u64,
            /// Failed POSTs, warm-up included.
            pub failed: u64,
            pub first_failure: Option<String>,
        }

        struct Sent {
            measured: bool,
            outcome: Result<(), String>,
        }

        /// POSTs one event every `1 / rate` s until the window ends. Open loop:
        /// each POST is its own task, so a slow answer never delays the next.
        pub async fn run(
            http: reqwest::Client,
            url: String,
            rate: f64,
            window: Window,
        ) -> Produced {
            let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut posts = JoinSet::new();
            while ticks.tick().await.into_std() < window.end {
                posts.spawn(post(http.clone(), url.clone(), window));
            }
            let mut produced = Produced::default();
            while let Some(sent) = posts.join_next().await {
                let sent = sent.expect("a POST task panicked");
                match sent.outcome {
                    Ok(()) => produced.measured_ok += u64::from(sent.measured),
                    Err(e) => {
                        produced.failed += 1;
                        produced.first_failure.get_or_insert(e);
                    }
                }
            }
            produced
        }

        async fn post(http: reqwest::Client, url: String, window: Window) -> Sent {
            let t_ns = window.stamp();
            let body = format!(r#"{{"t_ns":{t_ns},"page":"/load/read-path","kind":"probe"}}"#);
            let request = http.post(url).header(CONTENT_TYPE, "application/json");
            Sent {
                measured: window.measured(t_ns),
                outcome: answer(request.body(body).send().await).await,
            }
        }

        async fn answer(sent: reqwest::Result<reqwest::Response>) -> Result<(), String> {
            let response = sent.map_err(|e| format!("POST: {e}"))?;
            let status = response.status();
            let body = response.bytes().await.map_err(|e| format!("POST: {e}"))?;
            if status.is_success() {
                return Ok(());
            }
            let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            Err(format!("HTTP {status}: {shown}"))
        }
    }

    /// WebSocket subscribers that count and time the events they receive.
    mod subscribe {
        use std::net::SocketAddr;
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        use std::time::Duration;

        use futures::StreamExt;
        use hdrhistogram::Histogram;
        use serde::Deserialize;
        use tokio::net::TcpStream;
        use tokio::sync::watch;
        use tokio::task::JoinHandle;
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

        use super::Window;

        pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

        /// Latencies above a minute are recorded as a minute.
        const MAX_LATENCY_US: u64 = 60_000_000;

        /// A pushed frame, as far as the harness reads it.
        #[derive(Deserialize)]
        struct Frame {
            events: Vec<Envelope>,
        }

        #[derive(Deserialize)]
        struct Envelope {
            event: Probe,
        }

        #[derive(Deserialize)]
        struct Probe {
            t_ns: u64,
        }

        /// What one subscriber saw.
        pub struct Received {
            /// POST → delivery of the measured events, in microseconds.
            pub latency_us: Histogram<u64>,
            /// Events received that were sent inside the measured window.
            pub measured: u64,
            pub error: Option<String>,
        }

        pub fn latency_histogram() -> Histogram<u64> {
            Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("the latency histogram's bounds are valid")
        }

        impl Received {
            fn frame(&mut self, text: &str, window: &Window, measured: &AtomicU64) {
                let now = window.stamp();
                let frame = match serde_json::from_str::<Frame>(text) {
                    Ok(frame) => frame,
                    Err(e) => {
                        let shown = text.chars().take(200).collect::<String>();
                        self.error
                            .get_or_insert(format!("unexpected frame ({e}): {shown}"));
                        return;
                    }
                };
                for envelope in frame.events {
                    let sent = envelope.event.t_ns;
                    if window.measured(sent) {
                        let micros = now.saturating_sub(sent) / 1_000;
                        self.latency_us.saturating_record(micros);
                        self.measured += 1;
                        measured.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }

        pub struct Subscriber {
            task: JoinHandle<Received>,
            measured: Arc<AtomicU64>,
        }

        /// Opens `n` subscriptions one after another; the errors of those that failed.
        pub async fn connect(
            addr: SocketAddr,
            stream: &str,
            from: &str,
            n: usize,
        ) -> (Vec<Socket>, Vec<String>) {
            let url = format!("ws://{addr}/v1/streams/{stream}/subscribe?from={from}");
            let mut sockets = Vec::with_capacity(n);
            let mut errors = Vec::new();
            for _ in 0..n {
                match tokio_tungstenite::connect_async(url.as_str()).await {
                    Ok((socket, _)) => sockets.push(socket),
                    Err(e) => errors.push(format!("subscribe {url}: {e}")),
                }
            }
            (sockets, errors)
        }

        /// Reads `socket` until `stop` changes.
        pub fn spawn(socket: Socket, window: Window, stop: watch::Receiver<bool>) -> Subscriber {
            let measured = Arc::new(AtomicU64::new(0));
            let task = tokio::spawn(read(socket, window, stop, measured.clone()));
            Subscriber { task, measured }
        }

        async fn read(
            mut socket: Socket,
            window: Window,
            mut stop: watch::Receiver<bool>,
            measured: Arc<AtomicU64>,
        ) -> Received {
            let mut received = Received {
                latency_us: latency_histogram(),
                measured: 0,
                error: None,
            };
            loop {
                let message = tokio::select! {
                    _ = stop.changed() => break,
                    message = socket.next() => message,
                };
                let ended = match message {
                    Some(Ok(Message::Text(text))) => {
                        received.frame(text.as_str(), &window, &measured);
                        continue;
                    }
                    Some(Ok(Message::Close(close))) => format!("the gateway closed it: {close:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => format!("subscription: {e}"),
                    None => "the subscription ended".to_string(),
                };
                received.error.get_or_insert(ended);
                break;
            }
            let _ = socket.close(None).await;
            received
        }

        /// Waits until every live subscriber has `expected` measured events,
        /// or `timeout` passed.
        pub async fn drain(subscribers: &[Subscriber], expected: u64, timeout: Duration) {
            let deadline = tokio::time::Instant::now() + timeout;
            let behind = || {
                subscribers
                    .iter()
                    .any(|s| !s.task.is_finished() && s.measured.load(Ordering::Relaxed) < expected)
            };
            while behind() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        pub async fn join(subscribers: Vec<Subscriber>) -> Vec<Received> {
            let mut all = Vec::with_capacity(subscribers.len());
            for subscriber in subscribers {
                all.push(subscriber.task.await.expect("a subscriber task panicked"));
            }
            all
        }
    }

    /// The gateway's own answers: partition heads and the store-request counter.
    mod scrape {
        use std::collections::BTreeMap;
        use std::net::SocketAddr;

        use reqwest::StatusCode;
        use serde::Deserialize;
        use tokio::time::{sleep_until, Instant};

        use super::Window;

        const STORE_REQUESTS: &str = "sluice_store_requests_total";

        #[derive(Deserialize)]
        struct Described {
            partitions: Vec<PartitionHead>,
        }

        #[derive(Deserialize)]
        struct PartitionHead {
            partition: u32,
            head_offset: u64,
        }

        async fn get(http: &reqwest::Client, url: &str) -> (StatusCode, bytes::Bytes) {
            let response = http
                .get(url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            let status = response.status();
            let body = response.bytes().await;
            (status, body.unwrap_or_else(|e| panic!("GET {url}: {e}")))
        }

        /// `from` that starts every partition at its current head
        /// (`0:120,1:98,…`), or `earliest` while the stream has no events.
        pub async fn heads(http: &reqwest::Client, addr: SocketAddr, stream: &str) -> String {
            let url = format!("http://{addr}/v1/streams/{stream}");
            let (status, body) = get(http, &url).await;
            if status == StatusCode::NOT_FOUND {
                return "earliest".to_string();
            }
            assert!(status.is_success(), "GET {url}: HTTP {status}");
            let described: Described = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("GET {url}: not the documented shape ({e})"));
            let positions: Vec<String> = described
                .partitions
                .iter()
                .map(|p| format!("{}:{}", p.partition, p.head_offset))
                .collect();
            positions.join(",")
        }

        /// Store requests made between the window's start and end, by `op`.
        pub async fn store_requests_over(
            http: &reqwest::Client,
            addr: SocketAddr,
            window: Window,
        ) -> BTreeMap<String, u64> {
            sleep_until(Instant::from_std(window.measure_start)).await;
            let before = store_requests(http, addr).await;
            sleep_until(Instant::from_std(window.end)).await;
            let after = store_requests(http, addr).await;
            after
                .into_iter()
                .map(|(op, n)| {
                    let earlier = before.get(&op).copied().unwrap_or(0);
                    (op, n.saturating_sub(earlier))
                })
                .collect()
        }

        /// `sluice_store_requests_total` by `op`, from `GET /metrics`.
        async fn store_requests(http: &reqwest::Client, addr: SocketAddr) -> BTreeMap<String, u64> {
            let url = format!("http://{addr}/metrics");
            let (status, body) = get(http, &url).await;
            assert!(status.is_success(), "GET {url}: HTTP {status}");
            let mut by_op = BTreeMap::new();
            for (op, n) in String::from_utf8_lossy(&body).lines().filter_map(sample) {
                *by_op.entry(op).or_insert(0) += n;
            }
            by_op
        }

        /// `(op, value)` from a line `sluice_store_requests_total{op="…",…} 12`.
        fn sample(line: &str) -> Option<(String, u64)> {
            let rest = line.strip_prefix(STORE_REQUESTS)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once('}')?,
                None => ("", rest),
            };
            let value: f64 = value.split_whitespace().next()?.parse().ok()?;
            let op = labels.split(',').find_map(|pair| {
                let quoted = pair.trim().strip_prefix("op=\"")?;
                quoted.strip_suffix('"')
            });
            Some((op.unwrap_or("").to_string(), value as u64))
        }
    }
}

/// The ceiling servers: this binary run as `--ceiling-server http|parse-zstd`.
/// They print `listening on ADDR` like the gateway, and exit when their stdin
/// closes (the harness is gone) or after `MAX_LIFETIME`.
mod ceiling {
    use std::io::Write;
    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::Bytes;
    use http::header::CONTENT_TYPE;
    use http::{Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use serde::de::IgnoredAny;
    use tokio::net::{TcpListener, TcpSocket, TcpStream};

    pub const HTTP: &str = "http";
    pub const PARSE_ZSTD: &str = "parse-zstd";
    const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
    const LISTEN_BACKLOG: u32 = 4096;

    #[derive(Clone, Copy)]
    enum Mode {
        /// Read the whole body, answer a small JSON object.
        Http,
        /// Also parse every event and zstd-1 compress the body.
        ParseZstd,
    }

    pub fn serve(mode: &str) {
        let mode = match mode {
            HTTP => Mode::Http,
            PARSE_ZSTD => Mode::ParseZstd,
            other => panic!("unknown ceiling server mode {other:?}; use {HTTP} or {PARSE_ZSTD}"),
        };
        exit_when_stdin_closes();
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        if let Some(threads) = super::env_parse("SLUICE_LOAD_CEILING_THREADS") {
            runtime.worker_threads(threads);
        }
        let runtime = runtime
            .enable_all()
            .build()
            .expect("build the ceiling server's tokio runtime");
        runtime.block_on(accept_loop(mode));
    }

    fn exit_when_stdin_closes() {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            std::process::exit(0);
        });
    }

    async fn accept_loop(mode: Mode) {
        let listener = bind_loopback();
        announce(
            listener
                .local_addr()
                .expect("a bound listener has an address"),
        );
        let lifetime = tokio::time::sleep(MAX_LIFETIME);
        tokio::pin!(lifetime);
        loop {
            tokio::select! {
                () = &mut lifetime => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(serve_connection(mode, stream));
                    }
                    Err(e) => {
                        eprintln!("ceiling server: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
            }
        }
    }

    /// A listener with room for a whole connection storm: std's and tokio's
    /// default backlog (128) drops SYNs when hundreds of clients connect at once.
    fn bind_loopback() -> TcpListener {
        let socket = TcpSocket::new_v4().expect("create the ceiling server's socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind the ceiling server to 127.0.0.1");
        socket
            .listen(LISTEN_BACKLOG)
            .expect("listen on the ceiling server's socket")
    }

    fn announce(addr: SocketAddr) {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {addr}")
            .and_then(|()| stdout.flush())
            .expect("write the ceiling server's address to stdout");
    }

    async fn serve_connection(mode: Mode, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let service = service_fn(move |request| answer(mode, request));
        // Clients hang up when a run ends; those errors are expected.
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    }

    async fn answer(
        mode: Mode,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, hyper::Error> {
        let body = request.into_body().collect().await?.to_bytes();
        let (status, json) = match mode {
            Mode::Http => (
                StatusCode::OK,
                serde_json::json!({ "received": body.len() }),
            ),
            Mode::ParseZstd => parse_and_compress(&body),
        };
        let response = Response::builder()
            .status(status)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json.to_string())))
            .expect("the response's parts are valid");
        Ok(response)
    }

    fn parse_and_compress(body: &[u8]) -> (StatusCode, serde_json::Value) {
        let events = match count_events(body) {
            Ok(events) => events,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "error": e.to_string() }),
                )
            }
        };
        match zstd::bulk::compress(body, 1) {
            Ok(compressed) => (
                StatusCode::OK,
                serde_json::json!({
                    "accepted": events, "rejected": 0, "partition": 0, "first_offset": 0,
                    "errors": [], "compressed_bytes": compressed.len(),
                }),
            ),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "error": e.to_string() }),
            ),
        }
    }

    /// Parses and validates every event without keeping it (as `RawValue`
    /// would, but without turning on serde_json's `raw_value` feature, which
    /// would rebuild the dependency tree for test and bench builds).
    fn count_events(body: &[u8]) -> Result<usize, serde_json::Error> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'[') {
            serde_json::from_slice::<Vec<IgnoredAny>>(body).map(|events| events.len())
        } else {
            serde_json::from_slice::<IgnoredAny>(body).map(|_| 1)
        }
    }
}
