//! Reading `deploy/`: YAML (through PyYAML), the Dockerfile, Kubernetes pod
//! specs and quantities, and the configuration a container ends up with.
//!
//! Only parsing and lookups; what must hold is asserted in `tests/deploy.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sluice::config::Config;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn deploy_dir() -> PathBuf {
    root().join("deploy")
}

/// Every file under `dir` whose name ends with one of `exts`, sorted.
pub fn files_under(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if exts
                .iter()
                .any(|x| path.to_string_lossy().ends_with(&format!(".{x}")))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// One YAML file: its documents as JSON values.
pub struct Yaml {
    pub path: PathBuf,
    pub docs: Vec<Value>,
}

impl Yaml {
    /// The path relative to `deploy/`, for messages and lookups.
    pub fn name(&self) -> String {
        self.path
            .strip_prefix(deploy_dir())
            .unwrap_or(&self.path)
            .display()
            .to_string()
    }
}

/// Every YAML file under `deploy/`, parsed by PyYAML (`safe_load_all`) in
/// one `python3` run; a file that does not parse fails with PyYAML's message.
pub fn load_yaml() -> Vec<Yaml> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        out = {}\n\
        for p in sys.argv[1:]:\n\
        \x20   with open(p) as f:\n\
        \x20       out[p] = list(yaml.safe_load_all(f))\n\
        json.dump(out, sys.stdout, default=str)\n";
    let files = files_under(&deploy_dir(), &["yaml", "yml"]);
    assert!(!files.is_empty(), "no YAML files under deploy/");
    let output = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .args(&files)
        .output()
        .expect("run python3 (PyYAML comes with moto, which tests/run.sh installs)");
    assert!(
        output.status.success(),
        "YAML under deploy/ does not parse:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut parsed: BTreeMap<String, Vec<Value>> =
        serde_json::from_slice(&output.stdout).expect("PyYAML's JSON");
    files
        .into_iter()
        .map(|path| {
            let docs = parsed
                .remove(&path.display().to_string())
                .expect("every file parsed")
                .into_iter()
                .filter(|d| !d.is_null())
                .collect();
            Yaml { path, docs }
        })
        .collect()
}

/// The one file named `name` (relative to `deploy/`).
pub fn yaml<'a>(all: &'a [Yaml], name: &str) -> &'a Yaml {
    all.iter()
        .find(|y| y.name() == name)
        .unwrap_or_else(|| panic!("deploy/{name} is missing"))
}

/// Kubernetes objects: every document of `deploy/k8s/` with a `kind`.
pub fn k8s_objects(all: &[Yaml]) -> Vec<(String, &Value)> {
    all.iter()
        .filter(|y| y.name().starts_with("k8s/"))
        .flat_map(|y| y.docs.iter().map(move |d| (y.name(), d)))
        .filter(|(_, d)| d.get("kind").is_some())
        .collect()
}

pub fn of_kind<'a>(all: &'a [Yaml], kind: &str) -> Vec<&'a Value> {
    k8s_objects(all)
        .into_iter()
        .filter(|(_, d)| d["kind"] == kind)
        .map(|(_, d)| d)
        .collect()
}

/// The single object of `kind` named `name`.
pub fn object<'a>(all: &'a [Yaml], kind: &str, name: &str) -> &'a Value {
    let found: Vec<_> = of_kind(all, kind)
        .into_iter()
        .filter(|d| d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "{kind} {name:?} in deploy/k8s: {found:?}");
    found[0]
}

pub fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The pod spec of a workload (Deployment, StatefulSet, DaemonSet, Job,
/// CronJob, Pod).
pub fn pod_spec(obj: &Value) -> Option<&Value> {
    let spec = obj.get("spec")?;
    match obj["kind"].as_str()? {
        "Pod" => Some(spec),
        "CronJob" => spec.pointer("/jobTemplate/spec/template/spec"),
        _ => spec.pointer("/template/spec"),
    }
}

/// The pod template's labels of a workload.
pub fn pod_labels(obj: &Value) -> &Value {
    match obj["kind"].as_str() {
        Some("CronJob") => &obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"],
        _ => &obj["spec"]["template"]["metadata"]["labels"],
    }
}

/// Containers and init containers of a pod spec.
pub fn containers(pod: &Value) -> Vec<&Value> {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod.get(*k)?.as_array())
        .flatten()
        .collect()
}

/// `env` entries with a literal value (not `valueFrom`).
pub fn container_env(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e.get("value").is_some())
        .map(|e| (str_of(&e["name"]), str_of(&e["value"])))
        .collect()
}

/// A compose service's `environment`, in map or list form.
pub fn compose_env(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), str_of(v))).collect(),
        Value::Array(a) => a
            .iter()
            .map(|e| {
                let e = str_of(e);
                let (k, v) = e.split_once('=').unwrap_or((&e, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Memory or CPU quantity as Kubernetes writes it, in base units (bytes,
/// cores): `512Mi`, `1Gi`, `500M`, `500m`, `2`.
pub fn quantity(q: &Value) -> f64 {
    let s = str_of(q);
    let suffixes: [(&str, f64); 11] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("k", 1e3),
        ("K", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("m", 1e-3),
        ("", 1.0),
    ];
    let (number, factor) = suffixes
        .iter()
        .find_map(|(suffix, f)| Some((s.strip_suffix(suffix)?, *f)))
        .unwrap();
    number
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("quantity {s:?}"))
        * factor
}

/// A compose duration (`25s`, `1m30s`, `500ms`) in seconds.
pub fn duration_secs(text: &str) -> f64 {
    let re = regex::Regex::new(r"(\d+(?:\.\d+)?)(ms|h|m|s)").unwrap();
    let mut total = 0.0;
    let mut covered = 0;
    for c in re.captures_iter(text) {
        let n: f64 = c[1].parse().unwrap();
        total += n * match &c[2] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            _ => 0.001,
        };
        covered += c[0].len();
    }
    assert!(covered == text.len() && covered > 0, "duration {text:?}");
    total
}

/// The configuration a process gets from `file` (TOML) and `env`, as
/// `sluice serve` loads it; panics naming `what` if it is invalid.
pub fn config_of(what: &str, file: Option<&str>, env: &[(String, String)]) -> Config {
    let config = Config::from_sources(what, file.unwrap_or(""), env.iter().cloned())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    config.validate().unwrap_or_else(|e| panic!("{what}: {e}"));
    config
}

pub fn port_of(listen: &str) -> u16 {
    listen
        .parse::<std::net::SocketAddr>()
        .unwrap_or_else(|e| panic!("listen {listen:?}: {e}"))
        .port()
}

/// One stage of the Dockerfile: its `FROM` and its instructions in order.
pub struct Stage {
    pub from: String,
    pub instructions: Vec<(String, String)>,
}

impl Stage {
    pub fn all(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The last `keyword` instruction (Docker keeps the last ENTRYPOINT, CMD, USER).
    pub fn last(&self, keyword: &str) -> Option<&str> {
        self.all(keyword).pop()
    }

    /// `ENV` pairs (`K=V …`, quotes removed).
    pub fn env(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for line in self.all("ENV") {
            for word in line.split_whitespace() {
                let (k, v) = word
                    .split_once('=')
                    .unwrap_or_else(|| panic!("ENV {line:?}: use the K=V form"));
                out.push((k.to_string(), v.trim_matches('"').to_string()));
            }
        }
        out
    }
}

pub struct Dockerfile {
    /// `ARG`s before the first `FROM`, with their defaults.
    pub args: BTreeMap<String, String>,
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    /// `deploy/Dockerfile`, continuation lines joined, comments dropped.
    pub fn load() -> Dockerfile {
        let text =
            std::fs::read_to_string(deploy_dir().join("Dockerfile")).expect("deploy/Dockerfile");
        let mut lines = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(head) => {
                    current.push_str(head);
                    current.push(' ');
                }
                None => {
                    current.push_str(trimmed);
                    lines.push(std::mem::take(&mut current));
                }
            }
        }
        let mut file = Dockerfile {
            args: BTreeMap::new(),
            stages: Vec::new(),
        };
        for line in lines.iter().filter(|l| !l.is_empty()) {
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let (keyword, rest) = (keyword.to_ascii_uppercase(), rest.trim().to_string());
            match (keyword.as_str(), file.stages.last_mut()) {
                ("FROM", _) => file.stages.push(Stage {
                    from: rest,
                    instructions: Vec::new(),
                }),
                ("ARG", None) => {
                    let (k, v) = rest.split_once('=').unwrap_or((&rest, ""));
                    file.args.insert(k.to_string(), v.to_string());
                }
                (_, Some(stage)) => stage.instructions.push((keyword, rest)),
                (_, None) => panic!("Dockerfile: {keyword} before the first FROM"),
            }
        }
        assert!(!file.stages.is_empty(), "Dockerfile without FROM");
        file
    }

    /// `FROM image [AS name]` with global `ARG` defaults substituted.
    pub fn image_of(&self, stage: &Stage) -> String {
        let mut image = stage.from.split_whitespace().next().unwrap().to_string();
        for (k, v) in &self.args {
            image = image
                .replace(&format!("${{{k}}}"), v)
                .replace(&format!("${k}"), v);
        }
        image
    }

    pub fn runtime(&self) -> &Stage {
        self.stages.last().unwrap()
    }
}

/// The JSON (exec) form of an instruction: `["sluice"]`.
pub fn exec_form(value: &str) -> Vec<String> {
    serde_json::from_str(value)
        .unwrap_or_else(|_| panic!("{value:?} is not in exec form [\"...\"]"))
}
