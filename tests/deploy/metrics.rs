//! Metric names: every one the HPA, the adapter rule, Prometheus and the
//! dashboard use is exported by a gateway after traffic, with the labels
//! they group and filter by; the dashboard shows the golden signals.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value;
use sluice::faults::{Fault, FaultyStore};
use sluice::store::{Store, StoreKind};

use crate::common::gateway::{test_config, TestGateway};
use crate::manifests::*;
use crate::promql::{self, Exposition};
use crate::workloads::*;

/// Traffic that makes every metric the deployment watches appear: events
/// accepted and invalid, a commit conflict between two gateways on one
/// partition, a failed segment PUT. Returns the scrape.
async fn scrape_after_traffic() -> Exposition {
    let shared = Arc::new(object_store::memory::InMemory::new());
    let faulty = Arc::new(FaultyStore::new(shared.clone()));
    let mut config = test_config();
    config.streams.partitions = 1;
    let a = TestGateway::start(
        config.clone(),
        Store::from_parts(faulty.clone(), "", StoreKind::Memory),
    )
    .await;
    let b = TestGateway::start(config, Store::from_parts(shared, "", StoreKind::Memory)).await;
    let client = reqwest::Client::new();
    let post = |gw: &TestGateway, body: &'static str| {
        client
            .post(gw.url("/v1/streams/deploy/events"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // b learns the head (seq 0), a commits seq 1 behind its back, so b's
    // next commit loses the race for seq 1: a conflict.
    assert_eq!(post(&b, r#"{"n":1}"#).await.unwrap().status(), 200);
    assert_eq!(post(&a, r#"[{"n":2},7]"#).await.unwrap().status(), 200);
    assert_eq!(post(&b, r#"{"n":3}"#).await.unwrap().status(), 200);
    // The next segment PUT fails once and is retried: a store error.
    faulty.inject("/data/", Fault::FailBefore, 1);
    assert_eq!(post(&a, r#"{"n":4}"#).await.unwrap().status(), 200);
    b.stop().await;
    let text = client
        .get(a.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    a.stop().await;
    Exposition::parse(&text)
}

#[tokio::test]
async fn every_metric_the_deployment_uses_is_exported() {
    let d = Deploy::load();
    let scraped = scrape_after_traffic().await;
    // (where, expression) of every PromQL the deployment evaluates.
    let mut exprs: Vec<(String, String)> = Vec::new();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("grafana/sluice-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut strings = Vec::new();
    promql::strings_in(&dashboard, "", &mut strings);
    for (key, s) in &strings {
        if key == "expr" {
            exprs.push(("dashboard".into(), s.to_string()));
        }
    }
    let rules = d.adapter_rules();
    for rule in &rules {
        for q in ["seriesQuery", "metricsQuery"] {
            exprs.push((format!("adapter {q}"), str_of(&rule[q])));
        }
    }
    let mut strings = Vec::new();
    promql::strings_in(d.prometheus(), "", &mut strings);
    for (_, s) in strings {
        exprs.push(("prometheus.yml".into(), s.to_string()));
    }
    // The HPA's Pods metrics are the names the adapter rules serve.
    let served: Vec<String> = rules.iter().map(|r| served_name(r)).collect();
    let mut hpa_metrics = 0;
    for hpa in of_kind(&d.yaml, "HorizontalPodAutoscaler") {
        for m in hpa["spec"]["metrics"].as_array().unwrap() {
            if m["type"] == "Pods" {
                let name = str_of(&m["pods"]["metric"]["name"]);
                assert!(
                    served.contains(&name),
                    "HPA metric {name}: no adapter rule serves it"
                );
                hpa_metrics += 1;
            }
        }
    }
    assert!(hpa_metrics >= 1, "the HPA scales on a Pods metric");
    for rule in &rules {
        let series = promql::metric_names(&str_of(&rule["seriesQuery"]));
        assert_eq!(
            series.len(),
            1,
            "one series per rule: {}",
            rule["seriesQuery"]
        );
        exprs.push(("HPA (served by the adapter)".into(), served_name(rule)));
    }
    // Labels Prometheus adds to every target: its own, the relabelled ones
    // of prometheus.yml, and the ones the adapter maps to pods.
    let mut target_labels: BTreeSet<String> = ["instance", "job"].map(String::from).into();
    for job in d.prometheus()["scrape_configs"].as_array().unwrap() {
        for r in job["relabel_configs"].as_array().into_iter().flatten() {
            target_labels.extend(r.get("target_label").map(str_of));
        }
    }
    for rule in &rules {
        let overrides = rule["resources"]["overrides"].as_object().unwrap();
        target_labels.extend(overrides.keys().cloned());
    }
    let mut checked = BTreeSet::new();
    for (at, expr) in &exprs {
        let names = promql::metric_names(expr);
        let mut known = target_labels.clone();
        for name in &names {
            assert!(
                scraped.has_series(name),
                "{at}: {name} is not exported (in {expr})"
            );
            known.extend(scraped.labels_of(name));
            if name.ends_with("_bucket") {
                known.insert("le".into());
            }
            checked.insert(name.clone());
        }
        for label in promql::label_names(expr) {
            assert!(
                known.contains(&label),
                "{at}: no label {label} on {names:?} ({expr})"
            );
        }
    }
    for signal in [
        "sluice_events_total",
        "sluice_ack_latency_seconds_bucket",
        "sluice_buffered_bytes",
        "sluice_commit_conflicts_total",
        "sluice_store_errors_total",
        "sluice_inflight_requests",
    ] {
        assert!(
            checked.contains(signal),
            "nothing in deploy/ watches {signal}"
        );
    }
}

#[test]
fn the_dashboard_shows_the_golden_signals() {
    let text = std::fs::read_to_string(deploy_dir().join("grafana/sluice-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        assert!(p["title"].is_string());
        let targets = p["targets"].as_array().expect("targets");
        let refs: BTreeSet<_> = targets.iter().map(|t| str_of(&t["refId"])).collect();
        assert_eq!(
            refs.len(),
            targets.len(),
            "{}: refIds are unique",
            p["title"]
        );
        exprs.extend(targets.iter().map(|t| str_of(&t["expr"])));
    }
    let compact = |e: &str| e.split_whitespace().collect::<String>();
    let any = |needle: &str| exprs.iter().any(|e| compact(e).contains(&compact(needle)));
    for (signal, needle) in [
        (
            "ingest rate by outcome",
            "by (outcome) (rate(sluice_events_total[",
        ),
        (
            "ack latency p99",
            "histogram_quantile(0.99, sum by (le) (rate(sluice_ack_latency_seconds_bucket[",
        ),
        (
            "rejects by outcome",
            "sluice_events_total{outcome!=\"accepted\"}",
        ),
        ("buffered bytes", "sluice_buffered_bytes"),
        ("commit conflicts", "rate(sluice_commit_conflicts_total["),
        ("store errors", "rate(sluice_store_errors_total["),
    ] {
        assert!(any(needle), "the dashboard has no {signal} ({needle})");
    }
}
