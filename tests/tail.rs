//! `sluice tail` as a real process: against an in-process gateway on
//! loopback (long-poll) and against a directory a gateway wrote (--store).
//! Every wait is bounded; lines are compared with the stored envelopes byte
//! for byte, per partition, in offset order.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use common::gateway::{memory, read_partition, test_config, TestGateway};
use common::tail::Tail;
use sluice::log::retry::RetryPolicy;
use sluice::log::segment::{ReceivedAt, SegmentBuilder};
use sluice::log::Log;
use sluice::server::Gateway;
use sluice::store::Store;
use sluice::tail::{Position, Start};
use tokio::runtime::Runtime;

const PARTITIONS: u32 = 4;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A gateway on loopback, and a client to post with.
struct Env {
    rt: Runtime,
    gw: Option<TestGateway>,
    client: reqwest::Client,
}

impl Env {
    fn start(store: Store) -> Env {
        let rt = runtime();
        let gw = rt.block_on(TestGateway::start(test_config(), store));
        Env {
            rt,
            gw: Some(gw),
            client: reqwest::Client::new(),
        }
    }

    fn gw(&self) -> &TestGateway {
        self.gw.as_ref().unwrap()
    }

    fn base(&self) -> String {
        format!("http://{}", self.gw().addr)
    }

    /// Post `events` as one NDJSON body (durable); the partition they landed in.
    fn post(&self, stream: &str, events: &[String]) -> u32 {
        let url = self.gw().url(&format!("/v1/streams/{stream}/events"));
        let body = events.join("\n");
        let answer: serde_json::Value = self.rt.block_on(async {
            let resp = self
                .client
                .post(url)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
        });
        assert_eq!(answer["accepted"], events.len(), "{answer}");
        answer["partition"].as_u64().unwrap() as u32
    }

    /// Commit `events` to `partition` as another writer would (no gateway).
    fn append(&self, stream: &str, partition: u32, events: &[String]) {
        let log = Log::new(self.gw().store.clone(), "other", RetryPolicy::default());
        let path = log.stream("default", stream);
        let mut b = SegmentBuilder::default();
        for e in events {
            b.push(ReceivedAt::now(), e.as_bytes());
        }
        let segment = b.seal(1).unwrap().unwrap();
        let name = ulid::Ulid::new().to_string();
        self.rt
            .block_on(log.append(&path, partition, &segment, &name))
            .unwrap();
    }

    /// Every stored envelope line of the stream, per partition, in offset order.
    fn stored(&self, stream: &str) -> Vec<Vec<String>> {
        let store = &self.gw().store;
        (0..PARTITIONS)
            .map(|p| {
                let lines = self.rt.block_on(read_partition(store, stream, p));
                lines
                    .iter()
                    .map(|l| String::from_utf8(l.to_vec()).unwrap())
                    .collect()
            })
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(gw) = self.gw.take() {
            self.rt.block_on(gw.stop());
        }
    }
}

fn events(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!(r#"{{"tag":"{tag}","i":{i}, "pad" : [1, 2]}}"#))
        .collect()
}

/// `printed` are exactly the stored lines, each once, in offset order per
/// partition (partitions may interleave with each other, lines may not).
fn assert_same(printed: &[String], stored: &[Vec<String>]) {
    let mut partition_of = HashMap::new();
    for (p, lines) in stored.iter().enumerate() {
        for l in lines {
            assert!(partition_of.insert(l.as_str(), p).is_none(), "{l}");
        }
    }
    let mut per_partition = vec![Vec::new(); stored.len()];
    for line in printed {
        let p = partition_of
            .get(line.as_str())
            .unwrap_or_else(|| panic!("printed line is no stored envelope: {line}"));
        per_partition[*p].push(line.clone());
    }
    assert_eq!(&per_partition, stored);
}

/// `--from earliest` prints the whole stream (several partitions, several
/// writers), then new commits live; SIGTERM exits 0 with nothing half
/// printed and names the `--from` that resumes exactly after it.
#[test]
fn gateway_tail_prints_the_log_then_live_events_and_stops_on_sigterm() {
    let env = Env::start(memory());
    let home = env.post("clicks", &events("a", 3));
    env.post("clicks", &events("b", 5));
    let (other, third) = ((home + 1) % PARTITIONS, (home + 2) % PARTITIONS);
    env.append("clicks", other, &events("c", 4));
    env.append("clicks", third, &events("d", 2));
    env.append("clicks", other, &events("e", 3));
    let stored = env.stored("clicks");
    assert_eq!(stored.iter().map(Vec::len).sum::<usize>(), 17);

    let base = env.base();
    let mut tail = Tail::spawn(&["clicks", "--url", &base, "--from", "earliest"]);
    tail.wait_for(17);
    assert_same(&tail.seen, &stored);

    env.post("clicks", &events("live-a", 2));
    env.append("clicks", third, &events("live-b", 3));
    env.post("clicks", &events("live-c", 1));
    let stored = env.stored("clicks");
    tail.wait_for(23);
    assert_same(&tail.seen, &stored);

    let (status, stderr) = tail.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    assert_same(&tail.seen, &stored);
    let resume = resume_spec(&stderr);
    let expected: Vec<String> = (0..PARTITIONS)
        .map(|p| format!("{p}:{}", stored[p as usize].len()))
        .collect();
    assert_eq!(resume, expected.join(","), "{stderr}");

    // The resume position prints only what came after.
    env.post("clicks", &events("after", 2));
    let mut resumed = Tail::spawn(&["clicks", "--url", &base, "--from", &resume]);
    resumed.wait_for(2);
    let newer = env.stored("clicks");
    let tail_of: Vec<Vec<String>> = (0..PARTITIONS as usize)
        .map(|p| newer[p][stored[p].len()..].to_vec())
        .collect();
    let (status, stderr) = resumed.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    assert_same(&resumed.seen, &tail_of);
}

/// SIGTERM while lines are streaming: every printed line is whole, each
/// partition's lines are a gap-free prefix of its log, and the resume
/// position on stderr is exactly where each prefix ends.
#[test]
fn sigterm_mid_stream_leaves_whole_lines_and_an_exact_resume_point() {
    let env = Env::start(memory());
    for p in 0..PARTITIONS {
        for round in 0..2 {
            env.append("bulk", p, &events(&format!("p{p}r{round}"), 2_500));
        }
    }
    let stored = env.stored("bulk");
    let base = env.base();
    let mut tail = Tail::spawn(&["bulk", "--url", &base, "--from", "earliest"]);
    tail.wait_for(1);
    let (status, stderr) = tail.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    let seen: HashSet<&String> = tail.seen.iter().collect();
    let printed_of: Vec<Vec<String>> = stored
        .iter()
        .map(|lines| {
            let n = lines.iter().filter(|l| seen.contains(l)).count();
            lines[..n].to_vec()
        })
        .collect();
    assert_same(&tail.seen, &printed_of);
    // A partition nothing was printed of resumes where it was told to
    // start: `earliest` (the low watermark, wherever it is by then).
    let expected: Vec<String> = printed_of
        .iter()
        .enumerate()
        .map(|(p, lines)| match lines.len() {
            0 => format!("{p}:earliest"),
            n => format!("{p}:{n}"),
        })
        .collect();
    assert_eq!(resume_spec(&stderr), expected.join(","), "{stderr}");
}

/// A gateway on a fixed loopback port, stoppable and restartable there.
struct Served {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

fn serve_on(rt: &Runtime, addr: SocketAddr, store: &Store) -> Served {
    let store = store.clone();
    rt.block_on(async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let listener = socket.listen(128).unwrap();
        let gateway = Gateway::with_store(test_config(), store, listener);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gateway.run(async {
            let _ = stopped.await;
        }));
        Served { stop, task }
    })
}

impl Served {
    fn stop(self, rt: &Runtime) {
        let _ = self.stop.send(());
        rt.block_on(self.task).unwrap();
    }
}

/// Connection errors while the gateway restarts are retried: events committed
/// before, during (by another writer) and after the outage all print once.
#[test]
fn tail_rides_out_a_gateway_restart() {
    let env = Env::start(memory());
    let store = env.gw().store.clone();
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let first = serve_on(&env.rt, addr, &store);
    let base = format!("http://{addr}");
    // No pooled connection may outlive the first gateway.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let post = |tag: &str| {
        let url = format!("{base}/v1/streams/restarts/events");
        env.rt.block_on(async {
            let resp = client
                .post(url)
                .header("content-type", "application/x-ndjson")
                .body(events(tag, 2).join("\n"))
                .send()
                .await;
            assert_eq!(resp.unwrap().status().as_u16(), 200);
        })
    };
    post("before");
    let mut tail = Tail::spawn(&["restarts", "--url", &base, "--from", "earliest"]);
    tail.wait_for(2);

    first.stop(&env.rt);
    env.append("restarts", 1, &events("during", 3));
    let second = serve_on(&env.rt, addr, &store);
    post("after");
    let stored = env.stored("restarts");
    tail.wait_for(stored.iter().map(Vec::len).sum());
    assert_same(&tail.seen, &stored);

    let (status, stderr) = tail.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    assert_same(&tail.seen, &stored);
    second.stop(&env.rt);
}

/// The `--from` named on stderr when tail stops.
fn resume_spec(stderr: &str) -> String {
    let (_, after) = stderr
        .split_once("--from ")
        .unwrap_or_else(|| panic!("no resume position on stderr: {stderr}"));
    after.lines().next().unwrap_or("").trim().to_string()
}

/// The default, `--from latest`, prints nothing that was committed before
/// it started, and a gap-free run of what came after.
#[test]
fn latest_prints_only_events_committed_after_it_started() {
    let env = Env::start(memory());
    let home = env.post("views", &events("old", 4));
    let base = env.base();
    let mut tail = Tail::spawn(&["views", "--url", &base]);
    // It starts at the head some time after spawning: post until it prints.
    let mut first = None;
    for i in 0..60 {
        env.post("views", &[format!(r#"{{"probe":{i}}}"#)]);
        if let Some(line) = tail.next_within(Duration::from_millis(500)) {
            first = Some(line);
            break;
        }
    }
    let first = first.expect("tail --from latest printed nothing new within 30 s");
    env.post("views", &events("new", 3));
    let stored = env.stored("views");
    let lines = &stored[home as usize];
    let at = lines.iter().position(|l| *l == first).unwrap();
    assert!(
        at >= 4,
        "printed an event committed before it started: {first}"
    );
    tail.wait_for(lines.len() - at);
    let (status, stderr) = tail.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    assert_eq!(tail.seen, lines[at..].to_vec());
}

/// `--store file://DIR` reads the bucket a gateway writes, with no gateway
/// in between: the log first, then commits as they land.
#[test]
fn store_mode_follows_a_directory_a_gateway_writes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let env = Env::start(Store::open(&url).unwrap());
    let home = env.post("orders", &events("a", 3));
    env.append("orders", (home + 3) % PARTITIONS, &events("b", 2));
    let stored = env.stored("orders");

    let mut tail = Tail::spawn(&["orders", "--store", &url, "--from", "earliest"]);
    tail.wait_for(5);
    assert_same(&tail.seen, &stored);

    env.post("orders", &events("live", 4));
    env.append("orders", (home + 1) % PARTITIONS, &events("other", 1));
    let stored = env.stored("orders");
    tail.wait_for(10);
    assert_same(&tail.seen, &stored);

    let (status, stderr) = tail.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    assert_same(&tail.seen, &stored);
}

/// A refusal (4xx) ends tail at once with a non-zero status and the
/// problem's detail on stderr; a malformed `--from` is a usage error.
#[test]
fn refusals_exit_non_zero_with_the_detail() {
    let env = Env::start(memory());
    env.post("known", &events("a", 1));
    let base = env.base();

    let mut bad_name = Tail::spawn(&["bad!name", "--url", &base]);
    let (status, stderr) = bad_name.finish();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stream name"), "{stderr}");
    assert!(bad_name.seen.is_empty());

    let mut no_partition = Tail::spawn(&["known", "--url", &base, "--from", "9:0"]);
    let (status, stderr) = no_partition.finish();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("partition 9 does not exist"), "{stderr}");

    let mut past_head = Tail::spawn(&[
        "known",
        "--url",
        &base,
        "--from",
        "0:1000,1:1000,2:1000,3:1000",
    ]);
    let (status, stderr) = past_head.finish();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("416"), "{stderr}");

    let mut usage = Tail::spawn(&["known", "--url", &base, "--from", "soon"]);
    let (status, stderr) = usage.finish();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--from"), "{stderr}");
}

#[test]
fn from_accepts_earliest_latest_and_positions() {
    assert_eq!(Start::from_str("earliest").unwrap(), Start::Earliest);
    assert_eq!(Start::from_str("latest").unwrap(), Start::Latest);
    let at = Start::from_str("0:120,2:latest,3:earliest").unwrap();
    assert_eq!(at.position(0), Position::Offset(120));
    assert_eq!(at.position(1), Position::Latest);
    assert_eq!(at.position(2), Position::Latest);
    assert_eq!(at.position(3), Position::Earliest);
    assert_eq!(at.to_string(), "0:120,2:latest,3:earliest");
    for bad in ["", "0", "x:1", "0:x", "0:1,0:2", "0:1,", "-1:0"] {
        assert!(Start::from_str(bad).is_err(), "{bad:?} was accepted");
    }
}
