//! A real Prometheus (Debian's `prometheus`, which tests/run.sh installs)
//! scrapes two `sluice serve` processes on their metrics listeners; the query
//! prometheus-adapter runs for the HPA (deploy/k8s/prometheus-adapter-rules.yaml,
//! taken from the file as it is) returns `sluice_inflight_requests` per pod
//! with the number of requests each gateway is holding.

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::exposition::wait_for;
use common::process::Gateway;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

/// Prometheus, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sluice serve` on `store` with a metrics listener; it and its two addresses.
fn gateway(name: &str, store: &std::path::Path) -> (Gateway, String, String) {
    let env = [(
        "SLUICE_STORE".to_string(),
        format!("file://{}", store.display()),
    )];
    let toml = "metrics_listen = \"127.0.0.1:0\"\n[batch]\nmax_age_ms = 120000\n";
    let mut gw = Gateway::spawn(name, &env, Some(toml));
    let (addr, metrics) = (gw.addr.clone(), gw.metrics_addr());
    (gw, addr, metrics)
}

/// Prometheus on a free port, scraping `targets` (pod name, address) every 200 ms.
fn prometheus(dir: &std::path::Path, targets: &[(&str, &str)]) -> (Proc, String) {
    let jobs: String = targets
        .iter()
        .map(|(pod, addr)| {
            format!("      - targets: [\"{addr}\"]\n        labels: {{ pod: \"{pod}\" }}\n")
        })
        .collect();
    let config = dir.join("prometheus.yml");
    let text = format!(
        "global:\n  scrape_interval: 200ms\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n{jobs}"
    );
    std::fs::File::create(&config)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let port = common::free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus (apt-get install prometheus; tests/run.sh does)");
    common::wait_for_http(port, LIMIT);
    (Proc(child), format!("http://127.0.0.1:{port}"))
}

/// The HPA's query, from the adapter rule as deployed, for these pods.
fn adapter_query(pods: &str) -> String {
    let rules = include_str!("../deploy/k8s/prometheus-adapter-rules.yaml");
    let line = rules
        .lines()
        .find_map(|l| l.trim().strip_prefix("metricsQuery:"))
        .expect("a metricsQuery in the adapter rules");
    line.trim()
        .trim_matches('\'')
        .replace("<<.Series>>", "sluice_inflight_requests")
        .replace("<<.LabelMatchers>>", &format!("pod=~\"{pods}\""))
        .replace("<<.GroupBy>>", "pod")
}

/// Instant query: value by `pod`.
async fn query(base: &str, promql: &str) -> Vec<(String, f64)> {
    let url = format!("{base}/api/v1/query");
    let url = reqwest::Url::parse_with_params(&url, &[("query", promql)]).unwrap();
    let resp = reqwest::get(url).await.unwrap();
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(body["status"], "success", "{promql}: {body}");
    let mut out: Vec<(String, f64)> = body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let pod = r["metric"]["pod"].as_str().unwrap_or_default().to_string();
            (pod, r["value"][1].as_str().unwrap().parse().unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Hold `n` durable requests open on `addr` (the batch waits `max_age`).
fn hold(addr: &str, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    let url = format!("http://{addr}/v1/streams/held/events");
    (0..n)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let body = format!("{{\"n\":{i}}}");
                let _ = reqwest::Client::new().post(url).body(body).send().await;
            })
        })
        .collect()
}

/// Poll (bounded) until `addr`'s own `/metrics` shows `n` requests in flight.
async fn wait_for_inflight(metrics_addr: &str, n: f64) {
    let url = format!("http://{metrics_addr}/metrics");
    let what = format!("{metrics_addr} never had {n} requests in flight");
    wait_for(&url, Duration::from_secs(30), &what, |e| {
        e.value("sluice_inflight_requests", &[]) == Some(n)
    })
    .await;
}

/// Poll (bounded) until `promql` returns `want`.
async fn wait_for_query(base: &str, promql: &str, want: &[(String, f64)]) {
    let mut got = Vec::new();
    for _ in 0..300 {
        got = query(base, promql).await;
        if got == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{promql} gave {got:?}, not {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_inflight_requests_per_pod_as_the_hpa_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (_a, a, a_metrics) = gateway("a", &store);
    let (_b, b, b_metrics) = gateway("b", &store);
    let mut held = hold(&a, 3);
    held.extend(hold(&b, 5));
    wait_for_inflight(&a_metrics, 3.0).await;
    wait_for_inflight(&b_metrics, 5.0).await;

    // Every sample Prometheus takes is from now on, while the requests are held.
    let targets = [
        ("sluice-a", a_metrics.as_str()),
        ("sluice-b", b_metrics.as_str()),
    ];
    let (_prometheus, base) = prometheus(dir.path(), &targets);
    let want = vec![("sluice-a".to_string(), 3.0), ("sluice-b".to_string(), 5.0)];
    wait_for_query(&base, "sluice_inflight_requests", &want).await;
    wait_for_query(&base, &adapter_query("sluice-a|sluice-b"), &want).await;
    for h in held {
        h.abort();
    }
}
