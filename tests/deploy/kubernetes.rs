//! The Kubernetes manifests and the compose file against the code: ports,
//! probe paths, environment variables, the shipped configuration, the
//! drain and the memory budget, and what selects the gateways.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::str::FromStr;

use serde_json::Value;
use sluice::config::Config;
use sluice::server::Gateway;
use tokio::net::TcpListener;

use crate::common::gateway::memory;
use crate::manifests::*;
use crate::workloads::*;

/// Resident memory of one open connection, outside every budget: hyper's
/// read and write buffers, the task, the socket (tests/hostile.rs measured
/// ~22 KiB with 10 000 idle ones).
const CONNECTION_BYTES: f64 = 24.0 * 1024.0;
/// Resident memory beyond the budget, the read cache and the connections
/// that the gateway's memory limit must leave: segment builds, the runtime
/// (README "Deploying").
const MEMORY_OVERHEAD: f64 = 64.0 * 1024.0 * 1024.0;

#[test]
fn every_yaml_file_parses_and_every_manifest_is_applied() {
    let d = Deploy::load();
    for y in &d.yaml {
        assert!(!y.docs.is_empty(), "deploy/{} is empty", y.name());
    }
    // Every document of deploy/k8s is a Kubernetes object, except the
    // prometheus-adapter Helm values (a rules list).
    for y in d.yaml.iter().filter(|y| y.name().starts_with("k8s/")) {
        for doc in &y.docs {
            if doc.get("kind").is_none() {
                assert!(
                    doc.pointer("/rules/custom").is_some(),
                    "deploy/{}: neither a Kubernetes object nor adapter values",
                    y.name()
                );
                continue;
            }
            for key in ["apiVersion", "kind"] {
                assert!(doc[key].is_string(), "deploy/{}: no {key}", y.name());
            }
            if doc["kind"] != "Kustomization" {
                assert!(
                    doc["metadata"]["name"].is_string(),
                    "deploy/{}: no name",
                    y.name()
                );
            }
        }
    }
    // `kubectl apply -k deploy/k8s` applies every manifest but the examples.
    let kustomization = &yaml(&d.yaml, "k8s/kustomization.yaml").docs[0];
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("k8s/{}", str_of(r)))
        .collect();
    let manifests: BTreeSet<String> = d
        .yaml
        .iter()
        .filter(|y| y.name().starts_with("k8s/") && !y.name().contains(".example."))
        .filter(|y| y.docs.iter().all(|doc| doc.get("kind").is_some()))
        .filter(|y| y.docs[0]["kind"] != "Kustomization")
        .map(Yaml::name)
        .collect();
    assert_eq!(listed, manifests, "kustomization.yaml resources");
    assert!(d.compose()["services"].is_object(), "compose.yaml services");
    assert!(
        d.prometheus()["scrape_configs"].is_array(),
        "prometheus.yml scrape_configs"
    );
}

/// The ports a gateway listens on: `listen`, and `metrics_listen` if set.
struct Listen {
    main: u16,
    metrics: Option<u16>,
}

impl Listen {
    fn of(config: &Config) -> Listen {
        Listen {
            main: port_of(&config.listen),
            metrics: config.metrics_listen.as_deref().map(port_of),
        }
    }

    /// Where Prometheus scrapes: the metrics port when there is one.
    fn scrape(&self) -> u16 {
        self.metrics.unwrap_or(self.main)
    }

    fn all(&self) -> BTreeSet<u16> {
        std::iter::once(self.main).chain(self.metrics).collect()
    }
}

/// A port as a manifest gives it (a number, or a containerPort's name).
fn resolve_port(ours: &Ours, port: &Value) -> u16 {
    let ports = ours.container["ports"].as_array().expect("containerPorts");
    match port {
        Value::Number(n) => n.as_u64().unwrap() as u16,
        Value::String(name) => ports
            .iter()
            .find(|cp| cp["name"] == name.as_str())
            .map(|cp| cp["containerPort"].as_u64().unwrap() as u16)
            .unwrap_or_else(|| panic!("{}: no port named {name}", ours.what)),
        other => panic!("{}: port {other}", ours.what),
    }
}

/// `(probe, path, port)` of each HTTP probe of a container.
fn http_probes(ours: &Ours) -> Vec<(&'static str, String, u16)> {
    ["livenessProbe", "readinessProbe", "startupProbe"]
        .into_iter()
        .filter_map(|probe| {
            let get = ours.container[probe].get("httpGet")?;
            Some((
                probe,
                str_of(&get["path"]),
                resolve_port(ours, &get["port"]),
            ))
        })
        .collect()
}

/// Prometheus' static targets in prometheus.yml, with their metrics path.
fn scrape_targets(d: &Deploy) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for job in d.prometheus()["scrape_configs"].as_array().unwrap() {
        let path = job.get("metrics_path").map_or("/metrics".into(), str_of);
        for sc in job["static_configs"].as_array().into_iter().flatten() {
            for t in sc["targets"].as_array().into_iter().flatten() {
                out.push((str_of(t), path.clone()));
            }
        }
    }
    out
}

#[test]
fn container_service_and_scrape_ports_are_the_listen_ports() {
    let d = Deploy::load();
    for ours in d.gateways() {
        let listen = Listen::of(&d.pod_config(&ours));
        let declared: BTreeSet<u16> = ours.container["ports"]
            .as_array()
            .expect("containerPorts")
            .iter()
            .map(|cp| resolve_port(&ours, &cp["containerPort"]))
            .collect();
        assert_eq!(declared, listen.all(), "{}: containerPorts", ours.what);
        for (probe, _, port) in http_probes(&ours) {
            assert!(
                listen.all().contains(&port),
                "{}: {probe} port {port}",
                ours.what
            );
        }
        let deployment = object(&d.yaml, "Deployment", "sluice");
        let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            str_of(&annotations["prometheus.io/port"]),
            listen.scrape().to_string(),
            "{}: prometheus.io/port",
            ours.what
        );
        // Services selecting the gateway pods send clients to the main port.
        let labels = pod_labels(deployment);
        let services: Vec<_> = of_kind(&d.yaml, "Service")
            .into_iter()
            .filter(|s| selects(&s["spec"]["selector"], labels))
            .collect();
        assert!(!services.is_empty(), "no Service selects the gateways");
        for s in services {
            for sp in s["spec"]["ports"].as_array().unwrap() {
                let target = resolve_port(&ours, &sp["targetPort"]);
                assert_eq!(target, listen.main, "Service targetPort");
            }
        }
    }
    // compose: the published container ports and Prometheus' targets.
    let targets: Vec<String> = scrape_targets(&d).into_iter().map(|(t, _)| t).collect();
    let services = d.our_services();
    assert!(services.len() >= 2, "compose runs two gateways");
    for (name, service) in services {
        let listen = Listen::of(&config_of(name, None, &d.service_env(service)));
        for p in service["ports"].as_array().expect("published ports") {
            let container: u16 = str_of(p).rsplit(':').next().unwrap().parse().unwrap();
            assert_eq!(container, listen.main, "compose {name}: {p}");
        }
        let target = format!("{name}:{}", listen.scrape());
        assert!(
            targets.contains(&target),
            "Prometheus does not scrape {target}: {targets:?}"
        );
    }
}

/// A gateway set up as `config` says, on a memory store, its listeners on
/// free ports: the address serving each port the config gives.
async fn run_gateway(mut config: Config) -> (BTreeMap<u16, SocketAddr>, TestStop) {
    let listen = Listen::of(&config);
    config.listen = "127.0.0.1:0".into();
    config.metrics_listen = None;
    let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut gateway = Gateway::with_store(config, memory(), main);
    let mut by_port = BTreeMap::from([(listen.main, gateway.local_addr().unwrap())]);
    if let Some(port) = listen.metrics {
        let side = TcpListener::bind("127.0.0.1:0").await.unwrap();
        gateway = gateway.with_metrics_listener(side);
        by_port.insert(port, gateway.metrics_addr().unwrap());
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gateway.run(async {
        let _ = stopped.await;
    }));
    (by_port, TestStop { stop, task })
}

struct TestStop {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl TestStop {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

#[tokio::test]
async fn probe_and_scrape_paths_answer_200_on_their_ports() {
    let d = Deploy::load();
    let client = reqwest::Client::new();
    let get = |by_port: &BTreeMap<u16, SocketAddr>, port: u16, path: &str| {
        let addr = by_port.get(&port).copied();
        let client = client.clone();
        let path = path.to_string();
        async move {
            let addr = addr.unwrap_or_else(|| panic!("nothing listens on port {port}"));
            let resp = client.get(format!("http://{addr}{path}")).send().await;
            resp.unwrap().status()
        }
    };
    // Kubernetes: the probes and the scrape annotations of the gateways.
    let gateway = d.gateways().into_iter().next().unwrap();
    let probes = http_probes(&gateway);
    assert!(
        probes.len() >= 2,
        "liveness and readiness probes: {probes:?}"
    );
    let annotations =
        &object(&d.yaml, "Deployment", "sluice")["spec"]["template"]["metadata"]["annotations"];
    let scrape = (
        "prometheus.io/path",
        str_of(&annotations["prometheus.io/path"]),
        str_of(&annotations["prometheus.io/port"]).parse().unwrap(),
    );
    let (by_port, running) = run_gateway(d.pod_config(&gateway)).await;
    for (what, path, port) in probes.into_iter().chain([scrape]) {
        let status = get(&by_port, port, &path).await;
        assert_eq!(status, 200, "{what}: GET :{port}{path}");
    }
    running.stop().await;
    // compose: Prometheus' targets.
    for (name, service) in d.our_services() {
        let config = config_of(name, None, &d.service_env(service));
        let (by_port, running) = run_gateway(config).await;
        for (target, path) in scrape_targets(&d) {
            let Some(port) = target.strip_prefix(&format!("{name}:")) else {
                continue;
            };
            let status = get(&by_port, port.parse().unwrap(), &path).await;
            assert_eq!(status, 200, "Prometheus: GET {target}{path}");
        }
        running.stop().await;
    }
}

#[test]
fn every_environment_variable_is_one_the_code_reads() {
    let d = Deploy::load();
    let mut env: Vec<(String, String, String)> = Vec::new();
    for ours in d.our_containers() {
        for (k, v) in d.pod_env(ours.container) {
            env.push((ours.what.clone(), k, v));
        }
    }
    for (name, service) in d.our_services() {
        for (k, v) in d.service_env(service) {
            env.push((format!("compose {name}"), k, v));
        }
    }
    let sources = files_under(&root().join("src"), &["rs"])
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    for (at, name, value) in &env {
        if let Some(key) = name.strip_prefix("AWS_") {
            // object_store's AmazonS3Builder::from_env takes every AWS_*
            // variable whose lowercase name is one of its config keys.
            let parsed = object_store::aws::AmazonS3ConfigKey::from_str(&name.to_lowercase());
            assert!(
                parsed.is_ok(),
                "{at}: AWS_{key} is not read by the S3 client"
            );
        } else if name.starts_with("SLUICE_") {
            assert!(
                sluice_var_is_read(name, value, &sources),
                "{at}: {name} is not read by sluice"
            );
        } else {
            panic!("{at}: {name} is neither SLUICE_* nor AWS_*");
        }
    }
    for needed in ["SLUICE_CONFIG", "SLUICE_STORE", "SLUICE_LISTEN"] {
        assert!(
            env.iter().any(|(_, k, _)| k == needed),
            "nothing sets {needed}"
        );
    }
}

#[test]
fn the_shipped_configuration_passes_check_config() {
    let d = Deploy::load();
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for ours in d.our_containers() {
        let mut env = d.pod_env(ours.container);
        if let Some(text) = d.pod_config_file(&ours) {
            let path = dir.path().join(format!("{}.toml", runs.len()));
            std::fs::write(&path, text).unwrap();
            env.push(("SLUICE_CONFIG".into(), path.display().to_string()));
        }
        runs.push((ours.what, env));
    }
    for (name, service) in d.our_services() {
        runs.push((format!("compose {name}"), d.service_env(service)));
    }
    for (what, env) in runs {
        let out = sluice().arg("check-config").envs(env).output().unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("config ok"),
            "{what}: sluice check-config: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_grace_period_covers_pre_stop_and_both_drains() {
    let d = Deploy::load();
    for ours in d.gateways() {
        let drain = d.pod_config(&ours).server.drain_timeout_ms as f64 / 1000.0;
        let grace = ours.pod["terminationGracePeriodSeconds"]
            .as_f64()
            .expect("terminationGracePeriodSeconds");
        let pre_stop = &ours.container["lifecycle"]["preStop"];
        let sleep = match (
            pre_stop.pointer("/sleep/seconds"),
            pre_stop.pointer("/exec/command"),
        ) {
            (Some(s), _) => s.as_f64().unwrap(),
            (None, Some(Value::Array(cmd))) if cmd.len() == 2 && cmd[0] == "sleep" => {
                str_of(&cmd[1]).parse().unwrap()
            }
            _ => panic!("{}: preStop must sleep: {pre_stop}", ours.what),
        };
        assert!(sleep > 0.0, "{}: preStop sleep", ours.what);
        assert!(
            grace > sleep + 2.0 * drain,
            "{}: terminationGracePeriodSeconds {grace} <= preStop {sleep} + 2 x drain {drain}",
            ours.what
        );
    }
    // compose: docker stop's SIGKILL comes after stop_grace_period (10 s by default).
    for (name, service) in d.our_services() {
        let config = config_of(name, None, &d.service_env(service));
        let drain = config.server.drain_timeout_ms as f64 / 1000.0;
        let grace = service
            .get("stop_grace_period")
            .map_or(10.0, |g| duration_secs(&str_of(g)));
        assert!(
            grace > 2.0 * drain,
            "compose {name}: stop_grace_period {grace}s <= 2 x {drain}s"
        );
    }
}

#[test]
fn gateway_resources_fit_the_memory_budget() {
    let d = Deploy::load();
    for ours in d.gateways() {
        let config = d.pod_config(&ours);
        let resources = &ours.container["resources"];
        let request = quantity(&resources["requests"]["memory"]);
        let limit = quantity(&resources["limits"]["memory"]);
        let connections = config.server.max_connections as f64 * CONNECTION_BYTES;
        let floor = (config.batch.memory_budget_bytes + config.read.cache_bytes) as f64
            + connections
            + MEMORY_OVERHEAD;
        assert!(
            limit >= floor,
            "{}: memory limit {limit} < budget + read cache + max_connections × {CONNECTION_BYTES} + {MEMORY_OVERHEAD} = {floor}",
            ours.what
        );
        assert!(
            request <= limit,
            "{}: memory request above the limit",
            ours.what
        );
        assert!(
            request >= floor,
            "{}: memory request {request} < {floor}: the scheduler would overcommit the budget",
            ours.what
        );
        // The HPA's CPU utilization is relative to the request.
        assert!(
            quantity(&resources["requests"]["cpu"]) > 0.0,
            "{}: cpu request",
            ours.what
        );
    }
}

#[test]
fn the_autoscaler_disruption_budget_and_service_select_the_gateways() {
    let d = Deploy::load();
    let deployment = object(&d.yaml, "Deployment", "sluice");
    let labels = pod_labels(deployment);
    assert!(
        selects(&deployment["spec"]["selector"], labels),
        "the Deployment's selector"
    );
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "the HPA owns the replica count: leave spec.replicas unset"
    );
    let hpas = of_kind(&d.yaml, "HorizontalPodAutoscaler");
    assert_eq!(hpas.len(), 1);
    let hpa = hpas[0];
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(target["kind"], "Deployment");
    assert_eq!(target["name"], deployment["metadata"]["name"]);
    let min = hpa["spec"]["minReplicas"].as_u64().expect("minReplicas");
    let max = hpa["spec"]["maxReplicas"].as_u64().unwrap();
    assert!(min >= 2 && max > min, "replicas {min}..{max}");
    // Each rule maps the series' namespace and pod labels to those resources.
    for rule in d.adapter_rules() {
        let overrides = &rule["resources"]["overrides"];
        for r in ["namespace", "pod"] {
            assert_eq!(overrides[r]["resource"], r, "adapter rule {r} mapping");
            assert!(
                str_of(&rule["seriesQuery"]).contains(&format!("{r}!=\"\"")),
                "the adapter's seriesQuery needs a {r} label"
            );
        }
    }
    let pdbs = of_kind(&d.yaml, "PodDisruptionBudget");
    assert_eq!(pdbs.len(), 1);
    assert!(
        selects(&pdbs[0]["spec"]["selector"], labels),
        "the PDB's selector"
    );
    let allowed = match (
        pdbs[0]["spec"].get("maxUnavailable"),
        pdbs[0]["spec"].get("minAvailable"),
    ) {
        (Some(n), None) => n.as_u64().expect("maxUnavailable as a number"),
        (None, Some(n)) => min.saturating_sub(n.as_u64().expect("minAvailable as a number")),
        other => panic!("PDB: one of maxUnavailable, minAvailable: {other:?}"),
    };
    assert!(
        allowed >= 1 && allowed < min,
        "the PDB lets {allowed} of at least {min} gateways go at once"
    );
    assert!(
        of_kind(&d.yaml, "Service")
            .iter()
            .any(|s| selects(&s["spec"]["selector"], labels)),
        "a Service selects the gateways"
    );
}
