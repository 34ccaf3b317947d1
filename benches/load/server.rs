//! Server child processes: start, find the address they print, sample memory, kill.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use http::HeaderValue;
use tempfile::TempDir;

use super::moto::Moto;
use super::plan::{Scenario, Store, Target};

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
    /// The server `scenario` runs against; a moto scenario's gateway needs `moto`.
    pub fn start(scenario: &Scenario, moto: Option<&Moto>) -> ServerProcess {
        let env = gateway_env(scenario, moto);
        match scenario.target {
            Target::Gateway => start_gateway(None, env),
            Target::AuthGateway => start_auth_gateway(env),
            Target::SchemaGateway => start_schema_gateway(env),
            Target::NoMetricsGateway => start_no_metrics_gateway(env),
            Target::CeilingHttp => start_ceiling("ceiling-http", super::ceiling::HTTP),
            Target::CeilingParseZstd => {
                start_ceiling("ceiling-parse-zstd", super::ceiling::PARSE_ZSTD)
            }
        }
    }

    /// The plain gateway on a fresh file store, default settings.
    pub fn plain_gateway() -> ServerProcess {
        start_gateway(None, Vec::new())
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id()));
        let status = status.ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

/// The store and batching of `scenario`'s gateway, as environment variables.
fn gateway_env(scenario: &Scenario, moto: Option<&Moto>) -> Vec<(String, String)> {
    let mut env = match scenario.store {
        Store::File => Vec::new(),
        Store::Moto => moto
            .expect("the harness starts moto for a plan with moto scenarios")
            .gateway_env(),
    };
    if let Some(ms) = scenario.profile.max_age_ms() {
        env.push(("SLUICE_BATCH__MAX_AGE_MS".into(), ms.to_string()));
    }
    env
}

/// The gateway on a fresh file store unless `env` names another;
/// `config` is written beside the store as `sluice.toml` and passed with
/// `--config`.
fn start_gateway(config: Option<&str>, env: Vec<(String, String)>) -> ServerProcess {
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
        .env("RUST_LOG", "warn")
        .envs(env);
    launch("gateway", command, Some(dir))
}

/// The gateway with `SLUICE_METRICS=false`: nothing recorded, no `/metrics`.
fn start_no_metrics_gateway(mut env: Vec<(String, String)>) -> ServerProcess {
    env.push(("SLUICE_METRICS".into(), "false".into()));
    let mut server = start_gateway(None, env);
    server.label = "gateway (metrics off)";
    server
}

/// The gateway with one tenant and one write key for the stream the
/// load posts to, and rate limits on the key, the stream and the tenant,
/// each far above what loopback can send: every request takes the whole
/// check path and none is refused.
fn start_auth_gateway(env: Vec<(String, String)>) -> ServerProcess {
    let key = sluice::auth::keys::generate().expect("generate an API key");
    let config = auth_config(&sluice::auth::keys::hash_text(&key));
    let mut server = start_gateway(Some(&config), env);
    server.label = "gateway (auth, rate limits)";
    let bearer = HeaderValue::try_from(format!("Bearer {key}"))
        .expect("a generated key is a valid header value");
    server.authorization = Some(bearer);
    server
}

/// The gateway (auth off) with `benches/data/pageview.schema.json` on the
/// stream the load posts to; every bench event satisfies it.
fn start_schema_gateway(env: Vec<(String, String)>) -> ServerProcess {
    let schema = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/data/pageview.schema.json"
    );
    let config = format!(
        "[tenants.default.streams.{}]\nschema_file = {schema:?}\n",
        super::client::STREAM
    );
    let mut server = start_gateway(Some(&config), env);
    server.label = "gateway (JSON Schema)";
    server
}

/// The config of `start_auth_gateway`: `hash` is the key's `hash_text`.
fn auth_config(hash: &str) -> String {
    // u32 fields; governor caps a bucket at 1e9 cells/s, still far beyond reach.
    const RATE: &str = "{ events_per_sec = 4000000000, bytes_per_sec = 4000000000 }";
    let stream = super::client::STREAM;
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
    let exe = std::env::current_exe().expect("locate this bench binary to run a ceiling server");
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
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the {label} {:?}: {e}", command.get_program()));
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
    let token = token
        .trim_matches(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']')));
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

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    /// `/proc/PID/stat` counts in USER_HZ, 100 per second on Linux.
    const TICKS_PER_SEC: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is the
    // first; utime and stime (fields 14 and 15) are the 12th and 13th.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}
