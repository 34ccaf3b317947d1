//! The image: what deploy/Dockerfile builds and runs, which images deploy/
//! uses, and the subcommands the containers run.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::manifests::*;
use crate::workloads::*;

/// Images deploy/ may use besides the one deploy/Dockerfile builds.
const THIRD_PARTY: &[&str] = &["minio/minio", "minio/mc", "prom/prometheus"];

#[test]
fn images_are_the_one_the_dockerfile_builds_or_known_third_party() {
    let d = Deploy::load();
    let ours = d.our_image();
    let (name, tag) = ours.rsplit_once(':').expect("our image has a tag");
    assert_eq!(name, env!("CARGO_PKG_NAME"), "our image's name");
    assert_eq!(
        tag,
        env!("CARGO_PKG_VERSION"),
        "our image's tag is the crate version"
    );
    let mut images: Vec<(String, String)> = Vec::new();
    for (file, obj) in k8s_objects(&d.yaml) {
        for c in pod_spec(obj).map(containers).unwrap_or_default() {
            images.push((file.clone(), str_of(&c["image"])));
        }
    }
    for (service, s) in d.compose()["services"].as_object().unwrap() {
        images.push((format!("compose service {service}"), str_of(&s["image"])));
    }
    for (at, image) in &images {
        if image == &ours {
            continue;
        }
        let (repo, tag) = image.rsplit_once(':').unwrap_or((image, ""));
        assert!(
            THIRD_PARTY.contains(&repo),
            "{at}: image {image:?} is neither {ours} nor a known one"
        );
        assert!(
            !tag.is_empty() && tag != "latest",
            "{at}: pin {image:?} to a release"
        );
    }
    assert!(
        images.iter().filter(|(_, i)| i == &ours).count() >= 4,
        "the gateways, both CronJobs and compose run {ours}: {images:?}"
    );
    // kustomize's image override names the same image.
    let kustomization = &yaml(&d.yaml, "k8s/kustomization.yaml").docs[0];
    for i in kustomization["images"].as_array().into_iter().flatten() {
        assert_eq!(str_of(&i["name"]), name, "kustomization images");
        assert_eq!(str_of(&i["newTag"]), tag, "kustomization images");
    }
}

#[test]
fn the_dockerfile_builds_sluice_and_runs_it_unprivileged() {
    let d = Deploy::load();
    let file = &d.dockerfile;
    assert!(
        file.stages.len() >= 2,
        "multi-stage: a builder and a runtime"
    );
    // Builder: a Rust toolchain at least as new as rust-version, building the
    // sluice binary from the lock file with cache mounts.
    let builder = &file.stages[0];
    let builder_image = file.image_of(builder);
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    let msrv = manifest["package"]["rust-version"].as_str().unwrap();
    let version = builder_image
        .strip_prefix("rust:")
        .and_then(|t| t.split('-').next())
        .unwrap_or_else(|| panic!("builder {builder_image:?} is not rust:VERSION-…"));
    let numbers = |v: &str| -> Vec<u32> { v.split('.').map(|n| n.parse().unwrap()).collect() };
    assert!(
        numbers(version) >= numbers(msrv),
        "builder Rust {version} is older than rust-version {msrv}"
    );
    let build = builder
        .all("RUN")
        .into_iter()
        .find(|r| r.contains("cargo build"))
        .expect("the builder runs cargo build");
    for needed in [
        "--release",
        "--locked",
        &format!("--bin {}", env!("CARGO_PKG_NAME")),
        "--mount=type=cache",
    ] {
        assert!(
            build.contains(needed),
            "cargo build without {needed}: {build}"
        );
    }
    // Runtime: the builder's Debian release (its glibc), CA certificates for
    // S3 over TLS, a numeric non-root user, `sluice serve`.
    let runtime = file.runtime();
    let runtime_image = file.image_of(runtime);
    let release = builder_image.rsplit('-').next().unwrap();
    assert!(
        runtime_image.starts_with(&format!("debian:{release}")),
        "runtime {runtime_image} is not the builder's Debian {release}"
    );
    assert!(
        runtime
            .all("RUN")
            .iter()
            .any(|r| r.contains("ca-certificates")),
        "runtime without ca-certificates"
    );
    let user = runtime.last("USER").expect("USER in the runtime stage");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("USER {user:?} is not numeric"));
    assert_ne!(uid, 0, "the image runs as root");
    for ours in d.our_containers() {
        let ctx = |k: &str| {
            ours.container["securityContext"]
                .get(k)
                .or_else(|| ours.pod["securityContext"].get(k))
                .cloned()
        };
        assert_eq!(
            ctx("runAsNonRoot"),
            Some(Value::Bool(true)),
            "{}",
            ours.what
        );
        assert_eq!(
            ctx("runAsUser"),
            Some(Value::from(uid)),
            "{}: the image's user",
            ours.what
        );
    }
    assert_eq!(
        exec_form(runtime.last("ENTRYPOINT").expect("ENTRYPOINT")),
        [env!("CARGO_PKG_NAME")]
    );
    assert!(
        runtime
            .all("COPY")
            .iter()
            .any(|c| c.ends_with("/usr/local/bin/sluice") && c.contains("--from=")),
        "the built binary is copied onto PATH"
    );
    let cmd = exec_form(runtime.last("CMD").expect("CMD"));
    assert_eq!(cmd, ["serve"], "the image runs the gateway");
    let listen = runtime
        .env()
        .into_iter()
        .rfind(|(k, _)| k == "SLUICE_LISTEN")
        .expect("ENV SLUICE_LISTEN")
        .1;
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    assert!(
        addr.ip().is_unspecified(),
        "listen on every interface in a container, not {addr}"
    );
    let exposed: Vec<u16> = runtime
        .all("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    assert_eq!(exposed, [addr.port()], "EXPOSE the listen port");
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    assert!(
        ignore
            .lines()
            .any(|l| matches!(l.trim(), "target" | "target/" | "/target" | "/target/")),
        ".dockerignore must exclude target/"
    );
}

#[test]
fn every_command_the_deployment_runs_is_a_subcommand() {
    let d = Deploy::load();
    let mut commands: Vec<(String, Vec<String>)> = Vec::new();
    commands.push((
        "Dockerfile CMD".into(),
        exec_form(d.dockerfile.runtime().last("CMD").unwrap()),
    ));
    for ours in d.our_containers() {
        let args: Vec<String> = ours.container["args"]
            .as_array()
            .into_iter()
            .flatten()
            .map(str_of)
            .collect();
        assert!(
            ours.container.get("command").is_none(),
            "{}: keep the image's ENTRYPOINT",
            ours.what
        );
        commands.push((ours.what, args));
    }
    for (name, service) in d.our_services() {
        if let Some(c) = service.get("command") {
            let args = c
                .as_array()
                .expect("command in exec form")
                .iter()
                .map(str_of)
                .collect();
            commands.push((format!("compose {name}"), args));
        }
    }
    let mut checked = BTreeSet::new();
    for (what, args) in commands {
        assert!(!args.is_empty(), "{what}: no subcommand");
        // clap rejects unknown flags before it prints the help.
        let out = sluice().args(&args).arg("--help").output().unwrap();
        assert!(
            out.status.success(),
            "{what}: sluice {} --help: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        checked.insert(args[0].clone());
    }
    for needed in ["serve", "compact", "gc"] {
        assert!(
            checked.contains(needed),
            "nothing runs `sluice {needed}`: {checked:?}"
        );
    }
    // The CronJobs run with the gateways' image, config and store.
    let gateway = d.gateways().into_iter().next().unwrap();
    let volumes_of = |pod: &Value| -> BTreeSet<String> {
        pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.pointer("/configMap/name").map(str_of))
            .collect()
    };
    let secrets_of = |c: &Value| -> BTreeSet<String> {
        c["envFrom"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.pointer("/secretRef/name").map(str_of))
            .collect()
    };
    for job in of_kind(&d.yaml, "CronJob") {
        let pod = pod_spec(job).unwrap();
        let name = str_of(&job["metadata"]["name"]);
        assert_eq!(
            volumes_of(pod),
            volumes_of(gateway.pod),
            "CronJob {name}: config"
        );
        for c in containers(pod) {
            assert_eq!(
                secrets_of(c),
                secrets_of(gateway.container),
                "CronJob {name}: store"
            );
        }
        let labels = pod_labels(job);
        assert_eq!(
            labels["app.kubernetes.io/name"], "sluice",
            "CronJob {name} labels"
        );
    }
}
