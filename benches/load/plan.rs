//! Which scenarios run, with how many connections, for how long.

use std::time::Duration;

use super::{env_parse, env_secs};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Gateway,
    /// The gateway with a key and (never refusing) rate limits configured.
    AuthGateway,
    /// The gateway with a JSON Schema on the stream the load posts to.
    SchemaGateway,
    /// The gateway started with `SLUICE_METRICS=false`: nothing recorded.
    NoMetricsGateway,
    CeilingHttp,
    CeilingParseZstd,
}

impl Target {
    pub fn is_ceiling(self) -> bool {
        matches!(self, Target::CeilingHttp | Target::CeilingParseZstd)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    One,
    Hundred,
}

/// Where a gateway keeps its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// A fresh directory, fsync on (the gateway's default for `file://`).
    File,
    /// A fresh prefix in a bucket on the moto S3 server the harness runs.
    Moto,
}

/// The gateway's batching settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `batch.max_age_ms` = 200, the default.
    Default,
    /// `batch.max_age_ms` = 10 (`SLUICE_BATCH__MAX_AGE_MS`).
    LowLatency,
}

impl Store {
    pub fn name(self) -> &'static str {
        match self {
            Store::File => "file",
            Store::Moto => "moto",
        }
    }
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::LowLatency => "low-latency",
        }
    }

    /// `batch.max_age_ms` when it is not the default.
    pub fn max_age_ms(self) -> Option<u64> {
        match self {
            Profile::Default => None,
            Profile::LowLatency => Some(10),
        }
    }
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
    /// The gateway's store and batching (a ceiling ignores them).
    pub store: Store,
    pub profile: Profile,
    /// After the closed-loop run, the open-loop steps of `Plan::open`.
    pub open_loop: bool,
}

impl Scenario {
    /// The server this scenario needs; neighbours with equal keys share one.
    pub fn server_key(&self) -> (Target, Store, Profile) {
        (self.target, self.store, self.profile)
    }

    /// Plain POSTs to the plain gateway: the scenarios open-loop steps follow.
    fn can_open_loop(&self) -> bool {
        self.target == Target::Gateway && !self.websocket
    }
}

/// Servers run one after another; the scenarios of a group share one process.
pub struct Group {
    pub scenarios: Vec<Scenario>,
}

impl Group {
    pub fn first(&self) -> &Scenario {
        &self.scenarios[0]
    }
}

/// Groups run `rounds` times, in reverse order every other round, so two
/// scenarios compared with each other alternate (A B, B A, A B, …) and a
/// drift of the machine's speed falls on both alike.
pub struct Pass {
    pub groups: Vec<Group>,
    pub rounds: usize,
}

/// Open-loop steps: requests on a fixed schedule at `fractions` of the
/// closed-loop run's req/s, each `warmup` then `measure` long.
pub struct OpenLoop {
    pub fractions: Vec<f64>,
    pub warmup: Duration,
    pub measure: Duration,
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
    pub passes: Vec<Pass>,
    pub reads: Vec<ReadScenario>,
    pub warmup: Duration,
    pub measure: Duration,
    pub open: OpenLoop,
}

impl Plan {
    pub fn scenarios(&self) -> impl Iterator<Item = &Scenario> {
        let groups = self.passes.iter().flat_map(|pass| &pass.groups);
        groups.flat_map(|group| &group.scenarios)
    }

    pub fn needs_moto(&self) -> bool {
        self.scenarios().any(|s| s.store == Store::Moto)
    }
}

/// Connections of a ceiling run unless `SLUICE_LOAD_CONNS_<SCENARIO>` says otherwise.
const CEILING_CONNS: usize = 256;

const fn ceiling(name: &'static str, target: Target, body: BodyKind) -> Scenario {
    Scenario {
        target,
        ..gateway(name, false, body, CEILING_CONNS)
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
        store: Store::File,
        profile: Profile::Default,
        open_loop: false,
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

/// A durable `gateway` scenario on a variant of the gateway (`target`).
const fn variant(name: &'static str, target: Target, body: BodyKind, conns: usize) -> Scenario {
    Scenario {
        target,
        ..gateway(name, false, body, conns)
    }
}

/// What a variant's name ends with; without it, its plain twin's.
pub const AUTH_SUFFIX: &str = "-auth";
pub const SCHEMA_SUFFIX: &str = "-schema";
pub const NO_METRICS_SUFFIX: &str = "-nometrics";

/// The plain scenario a variant (`-auth`, `-schema`, `-nometrics`) is compared with.
pub fn twin(name: &str) -> Option<&str> {
    [AUTH_SUFFIX, SCHEMA_SUFFIX, NO_METRICS_SUFFIX]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
}

/// Every scenario with its default connection count; ceilings first, so
/// the gateway's rows can be read against them, and each variant right
/// after its plain twin.
const ALL: [Scenario; 13] = [
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
    variant("durable-1-auth", Target::AuthGateway, BodyKind::One, 4000),
    gateway("durable-100", false, BodyKind::Hundred, 1000),
    variant(
        "durable-100-auth",
        Target::AuthGateway,
        BodyKind::Hundred,
        1000,
    ),
    variant(
        "durable-100-schema",
        Target::SchemaGateway,
        BodyKind::Hundred,
        1000,
    ),
    variant(
        "durable-100-nometrics",
        Target::NoMetricsGateway,
        BodyKind::Hundred,
        1000,
    ),
    gateway("async-1", true, BodyKind::One, 256),
    gateway("async-100", true, BodyKind::Hundred, 256),
    gateway_ws("ws-durable-100", BodyKind::Hundred, 1000),
];

/// What `SLUICE_LOAD_REPORT` runs unless `SLUICE_LOAD_ONLY` names others.
const REPORT: [&str; 8] = [
    "ceiling-http-1",
    "ceiling-http-100",
    "ceiling-parse-zstd-1",
    "ceiling-parse-zstd-100",
    "durable-1",
    "durable-100",
    "async-1",
    "async-100",
];

/// The pair the report's metrics-cost rounds alternate.
const METRICS_TWINS: [&str; 2] = ["durable-100", "durable-100-nometrics"];

/// `cargo bench`: every selected scenario, each on a fresh server process
/// (so its peak memory is its own), on each store and profile of
/// `SLUICE_LOAD_STORES` and `SLUICE_LOAD_PROFILES` (default: file, default),
/// the whole list `SLUICE_LOAD_ROUNDS` times (default 1).
pub fn full() -> Plan {
    let only = selected_names();
    let chosen = |name: &str| only.as_ref().is_none_or(|names| names.contains(&name));
    let open = open_loop(&[], 5.0);
    let matrix = matrix(&chosen, !open.fractions.is_empty(), ("file", "default"));
    let reads = READ_NAMES
        .iter()
        .filter(|name| chosen(name))
        .map(|name| read_scenario(name))
        .collect();
    Plan {
        passes: vec![Pass {
            groups: matrix,
            rounds: rounds(1),
        }],
        reads,
        warmup: env_secs("SLUICE_LOAD_WARMUP_SECS", 2.0),
        measure: env_secs("SLUICE_LOAD_SECS", 10.0),
        open,
    }
}

/// `SLUICE_LOAD_REPORT`: the matrix of `benches/REPORT.md` (both ceilings,
/// durable and async, single events and 100-event batches, on the file
/// store and moto, default and low-latency profiles, each gateway row
/// followed by open-loop steps at 50, 80 and 95 % of its peak), then
/// `durable-100` and `durable-100-nometrics` alternating for
/// `SLUICE_LOAD_ROUNDS` (default 5) rounds. Each default can be overridden
/// by the variable `full` reads.
pub fn report() -> Plan {
    let only = selected_names();
    let chosen = |name: &str| match &only {
        Some(names) => names.contains(&name),
        None => REPORT.contains(&name),
    };
    let open = open_loop(&[0.5, 0.8, 0.95], 5.0);
    let matrix = matrix(
        &chosen,
        !open.fractions.is_empty(),
        ("file,moto", "default,low-latency"),
    );
    let twins = ALL.iter().filter(|s| METRICS_TWINS.contains(&s.name));
    let twins = twins.map(|s| Group {
        scenarios: vec![Scenario {
            conns: conns_for(s),
            ..*s
        }],
    });
    Plan {
        passes: vec![
            Pass {
                groups: matrix,
                rounds: 1,
            },
            Pass {
                groups: twins.collect(),
                rounds: rounds(5),
            },
        ],
        reads: Vec::new(),
        warmup: env_secs("SLUICE_LOAD_WARMUP_SECS", 2.0),
        measure: env_secs("SLUICE_LOAD_SECS", 5.0),
        open,
    }
}

/// One group per chosen scenario on each store and profile (`defaults`:
/// the lists `SLUICE_LOAD_STORES` and `SLUICE_LOAD_PROFILES` default to);
/// ceilings once, as they have neither.
fn matrix(chosen: &dyn Fn(&str) -> bool, open_loop: bool, defaults: (&str, &str)) -> Vec<Group> {
    let mut groups = Vec::new();
    let mut first = true;
    for store in stores(defaults.0) {
        for profile in profiles(defaults.1) {
            for s in ALL.iter().filter(|s| chosen(s.name)) {
                if s.target.is_ceiling() && !first {
                    continue;
                }
                let s = Scenario {
                    conns: conns_for(s),
                    store,
                    profile,
                    open_loop: open_loop && s.can_open_loop(),
                    ..*s
                };
                groups.push(Group { scenarios: vec![s] });
            }
            first = false;
        }
    }
    groups
}

fn rounds(default: usize) -> usize {
    let rounds = env_parse("SLUICE_LOAD_ROUNDS").unwrap_or(default);
    assert!(rounds > 0, "SLUICE_LOAD_ROUNDS must be at least 1");
    rounds
}

/// `SLUICE_LOAD_OPEN` (fractions of peak, like `0.5,0.8,0.95`; empty: no
/// open-loop steps), `SLUICE_LOAD_OPEN_SECS`, `SLUICE_LOAD_OPEN_WARMUP_SECS`.
fn open_loop(default: &[f64], secs: f64) -> OpenLoop {
    const VARIABLE: &str = "SLUICE_LOAD_OPEN";
    let fractions = match std::env::var(VARIABLE) {
        Ok(raw) => list(VARIABLE, &raw, |f: &f64| *f > 0.0 && *f <= 2.0),
        Err(_) => default.to_vec(),
    };
    OpenLoop {
        fractions,
        warmup: env_secs("SLUICE_LOAD_OPEN_WARMUP_SECS", 1.0),
        measure: env_secs("SLUICE_LOAD_OPEN_SECS", secs),
    }
}

fn stores(default: &str) -> Vec<Store> {
    named_list(
        "SLUICE_LOAD_STORES",
        default,
        &[Store::File, Store::Moto],
        |s| s.name(),
    )
}

fn profiles(default: &str) -> Vec<Profile> {
    let all = [Profile::Default, Profile::LowLatency];
    named_list("SLUICE_LOAD_PROFILES", default, &all, |p| p.name())
}

/// The values of `all` named, comma-separated, by `variable` (else `default`).
fn named_list<T: Copy>(
    variable: &str,
    default: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Vec<T> {
    let raw = std::env::var(variable).unwrap_or_else(|_| default.to_string());
    let known: Vec<&str> = all.iter().map(|t| name(*t)).collect();
    let chosen: Vec<T> = raw
        .split(',')
        .map(str::trim)
        .filter(|word| !word.is_empty())
        .map(|word| {
            let found = all.iter().find(|t| name(**t) == word);
            *found
                .unwrap_or_else(|| panic!("{variable} names {word:?}; known: {}", known.join(", ")))
        })
        .collect();
    assert!(
        !chosen.is_empty(),
        "{variable} names nothing; known: {}",
        known.join(", ")
    );
    chosen
}

/// Comma-separated values of `variable` that pass `valid`.
fn list<T: std::str::FromStr>(variable: &str, raw: &str, valid: fn(&T) -> bool) -> Vec<T> {
    raw.split(',')
        .map(str::trim)
        .filter(|word| !word.is_empty())
        .map(|word| word.parse().ok().filter(valid))
        .collect::<Option<_>>()
        .unwrap_or_else(|| panic!("{variable}={raw:?} is not a list of valid values"))
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
    let counts = list(VARIABLE, &raw, |&n: &usize| n > 0);
    assert!(!counts.is_empty(), "{VARIABLE} names no subscriber count");
    counts
}

/// The smoke run's scenarios unless `SLUICE_LOAD_ONLY` names others.
const SMOKE: [(&str, Store); 8] = [
    ("ceiling-http-1", Store::File),
    ("ceiling-parse-zstd-100", Store::File),
    ("durable-1", Store::File),
    ("durable-1-auth", Store::File),
    ("async-1", Store::File),
    ("durable-100-schema", Store::File),
    ("durable-100-nometrics", Store::File),
    ("durable-1", Store::Moto),
];

/// `cargo test`: both ceilings, `durable-1` (then one open-loop step at half
/// its rate), `durable-1-auth`, `async-1`, `durable-100-schema`,
/// `durable-100-nometrics` and `durable-1` on moto (or those
/// `SLUICE_LOAD_ONLY` names, on the file store) with 4 connections for
/// about a second each, neighbours on the same server sharing its process;
/// then a few events through `delivery` and through `fanout` with 2
/// subscribers.
pub fn smoke() -> Plan {
    let only = selected_names();
    let chosen = |name: &str, store: Store| match &only {
        Some(names) => names.contains(&name) && store == Store::File,
        None => SMOKE.contains(&(name, store)) || READ_NAMES.contains(&name),
    };
    let mut groups: Vec<Group> = Vec::new();
    for store in [Store::File, Store::Moto] {
        for s in ALL.iter().filter(|s| chosen(s.name, store)) {
            let s = Scenario {
                conns: 4,
                store,
                open_loop: s.name == "durable-1" && store == Store::File,
                ..*s
            };
            match groups.last_mut() {
                Some(group) if group.first().server_key() == s.server_key() => {
                    group.scenarios.push(s)
                }
                _ => groups.push(Group { scenarios: vec![s] }),
            }
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
        passes: vec![Pass { groups, rounds: 1 }],
        reads: reads
            .into_iter()
            .filter(|r| chosen(r.name(), Store::File))
            .collect(),
        warmup: Duration::from_millis(200),
        measure: Duration::from_secs(1),
        open: OpenLoop {
            fractions: vec![0.5],
            warmup: Duration::from_millis(200),
            measure: Duration::from_secs(1),
        },
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

/// `SLUICE_LOAD_CONNS_<SCENARIO>`, else (a variant) its twin's, else the
/// default: a variant's row compares with its twin's at equal load.
fn conns_for(s: &Scenario) -> usize {
    let variable = conns_variable(s.name);
    let twin = twin(s.name);
    let conns = env_parse(&variable)
        .or_else(|| twin.and_then(|twin| env_parse(&conns_variable(twin))))
        .unwrap_or(s.conns);
    assert!(conns > 0, "{variable} must be at least 1");
    conns
}
