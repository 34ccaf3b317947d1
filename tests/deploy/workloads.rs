//! Which containers run the sluice image, and what they run with: the
//! environment (image ENV, envFrom, env), the config file found through
//! their mounts, the configuration that results. Lookups, which fail when
//! a reference does not resolve; the checks are in the test modules.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;
use sluice::config::Config;

use crate::manifests::*;
use crate::promql;

pub fn sluice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    // Only what the manifests give: nothing from the test's own environment.
    for (name, _) in std::env::vars() {
        if name.starts_with("SLUICE_") || name.starts_with("AWS_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Everything the tests need from deploy/, loaded once per test.
pub struct Deploy {
    pub yaml: Vec<Yaml>,
    pub dockerfile: Dockerfile,
}

/// A container that runs our image, with where it comes from.
pub struct Ours<'a> {
    pub what: String,
    pub pod: &'a Value,
    pub container: &'a Value,
}

impl Deploy {
    pub fn load() -> Deploy {
        Deploy {
            yaml: load_yaml(),
            dockerfile: Dockerfile::load(),
        }
    }

    pub fn compose(&self) -> &Value {
        &yaml(&self.yaml, "compose.yaml").docs[0]
    }

    pub fn prometheus(&self) -> &Value {
        &yaml(&self.yaml, "prometheus.yml").docs[0]
    }

    pub fn adapter_rules(&self) -> Vec<&Value> {
        yaml(&self.yaml, "k8s/prometheus-adapter-rules.yaml").docs[0]["rules"]["custom"]
            .as_array()
            .expect("rules.custom in the prometheus-adapter values")
            .iter()
            .collect()
    }

    /// The image deploy/Dockerfile builds: the `image` of the compose
    /// services that build deploy/Dockerfile.
    pub fn our_image(&self) -> String {
        let compose_dir = deploy_dir();
        let dockerfile = deploy_dir().join("Dockerfile").canonicalize().unwrap();
        let mut images = BTreeSet::new();
        for (name, service) in self.compose()["services"].as_object().unwrap() {
            let Some(build) = service.get("build") else {
                continue;
            };
            let context = compose_dir.join(str_of(&build["context"]));
            let file = context.join(str_of(&build["dockerfile"]));
            assert_eq!(
                file.canonicalize().ok().as_ref(),
                Some(&dockerfile),
                "compose service {name} builds {}",
                file.display()
            );
            assert!(
                context.canonicalize().unwrap() == root().canonicalize().unwrap(),
                "compose service {name}: the build context must be the workspace"
            );
            images.insert(str_of(&service["image"]));
        }
        assert_eq!(
            images.len(),
            1,
            "one image built from deploy/Dockerfile: {images:?}"
        );
        images.pop_first().unwrap()
    }

    /// Every Kubernetes container running our image, in every workload.
    pub fn our_containers(&self) -> Vec<Ours<'_>> {
        let image = self.our_image();
        let mut out = Vec::new();
        for (file, obj) in k8s_objects(&self.yaml) {
            let Some(pod) = pod_spec(obj) else { continue };
            for c in containers(pod) {
                if str_of(&c["image"]) == image {
                    let what = format!("{file}: {} {}", str_of(&obj["kind"]), str_of(&c["name"]));
                    out.push(Ours {
                        what,
                        pod,
                        container: c,
                    });
                }
            }
        }
        assert!(!out.is_empty(), "no Kubernetes container runs {image}");
        out
    }

    /// The compose services running our image.
    pub fn our_services(&self) -> Vec<(&String, &Value)> {
        let image = self.our_image();
        self.compose()["services"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, s)| str_of(&s["image"]) == image)
            .collect()
    }

    /// The environment of a container running our image: the image's ENV,
    /// then `envFrom` (the example Secret or a ConfigMap from deploy/k8s),
    /// then `env`.
    pub fn pod_env(&self, container: &Value) -> Vec<(String, String)> {
        let mut env = self.dockerfile.runtime().env();
        for from in container["envFrom"].as_array().into_iter().flatten() {
            for (kind, key, data) in [
                ("Secret", "secretRef", "stringData"),
                ("ConfigMap", "configMapRef", "data"),
            ] {
                let Some(name) = from.pointer(&format!("/{key}/name")) else {
                    continue;
                };
                let obj = object(&self.yaml, kind, name.as_str().unwrap());
                for (k, v) in obj[data].as_object().into_iter().flatten() {
                    env.push((k.clone(), str_of(v)));
                }
            }
        }
        env.extend(container_env(container));
        env
    }

    /// The config file a container reads (`SLUICE_CONFIG`), found through
    /// its volume mounts in a ConfigMap of deploy/k8s; None without one.
    pub fn pod_config_file(&self, ours: &Ours) -> Option<String> {
        let env = self.pod_env(ours.container);
        let path = env
            .iter()
            .rev()
            .find(|(k, _)| k == "SLUICE_CONFIG")?
            .1
            .clone();
        let mount = ours.container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| path.starts_with(&format!("{}/", str_of(&m["mountPath"]))))
            .unwrap_or_else(|| panic!("{}: SLUICE_CONFIG={path} is not mounted", ours.what));
        let file = &path[str_of(&mount["mountPath"]).len() + 1..];
        let volume = ours.pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("{}: no volume {}", ours.what, mount["name"]));
        let map = str_of(&volume["configMap"]["name"]);
        let key = volume["configMap"]["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["path"] == file))
            .map_or(file.to_string(), |i| str_of(&i["key"]));
        let data = &object(&self.yaml, "ConfigMap", &map)["data"][&key];
        assert!(
            data.is_string(),
            "{}: ConfigMap {map} has no {key}",
            ours.what
        );
        Some(str_of(data))
    }

    /// The configuration a container runs with.
    pub fn pod_config(&self, ours: &Ours) -> Config {
        let file = self.pod_config_file(ours);
        config_of(&ours.what, file.as_deref(), &self.pod_env(ours.container))
    }

    /// The compose services' environment: the image's ENV, then theirs.
    pub fn service_env(&self, service: &Value) -> Vec<(String, String)> {
        let mut env = self.dockerfile.runtime().env();
        env.extend(compose_env(service));
        env
    }

    /// The Deployment running our image (the gateways).
    pub fn gateways(&self) -> Vec<Ours<'_>> {
        let deployments: Vec<_> = of_kind(&self.yaml, "Deployment")
            .into_iter()
            .filter_map(pod_spec)
            .collect();
        let out: Vec<_> = self
            .our_containers()
            .into_iter()
            .filter(|o| deployments.iter().any(|p| std::ptr::eq(*p, o.pod)))
            .collect();
        assert!(!out.is_empty(), "no Deployment runs the gateway");
        out
    }
}

/// Whether a label selector (`matchLabels` or a plain map) selects `labels`.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    let map = selector.get("matchLabels").unwrap_or(selector);
    map.as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The metric name an adapter rule serves: `name.as`, else the series'.
pub fn served_name(rule: &Value) -> String {
    match rule.pointer("/name/as") {
        Some(name) => str_of(name),
        None => promql::metric_names(&str_of(&rule["seriesQuery"]))
            .pop_first()
            .unwrap_or_default(),
    }
}

/// A `SLUICE_*` variable is read when it sets a config key (an unknown
/// `SLUICE_<SECTION>__<KEY>` fails to load: unknown fields are errors; a
/// top-level one shows up in the loaded config), or when the code names it
/// (`SLUICE_CONFIG`, `SLUICE_LOG`, clap's `env = "…"`).
pub fn sluice_var_is_read(name: &str, value: &str, sources: &str) -> bool {
    if name.contains("__") {
        let vars = [(name.to_string(), value.to_string())];
        let config =
            Config::from_sources("env", "", vars).unwrap_or_else(|e| panic!("{name}={value}: {e}"));
        config
            .validate()
            .unwrap_or_else(|e| panic!("{name}={value}: {e}"));
        return true;
    }
    let probe = "\"deploy-env-probe\"";
    let sets_config = Config::from_sources("env", "", [(name.to_string(), probe.to_string())])
        .is_ok_and(|c| format!("{c:?}").contains("deploy-env-probe"));
    sets_config || sources.contains(&format!("\"{name}\""))
}
