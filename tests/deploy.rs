//! `deploy/` checked against the code it deploys: the image, the Kubernetes
//! manifests, the compose file, Prometheus, the adapter rule and the Grafana
//! dashboard must name only images, ports, paths, environment variables,
//! subcommands and metrics that exist, and their numbers must fit the
//! configuration they ship (drain, memory budget).
//!
//! Nothing here runs a container: the YAML is parsed (PyYAML), the gateway
//! runs in-process for the probe paths and metric names, and the built
//! `sluice` binary answers for the configuration and the subcommands.
//!
//! The checks live in `deploy/`: `image`, `kubernetes`, `metrics`; the
//! parsing and lookups they share in `manifests`, `workloads`, `promql`.

mod common;
#[path = "deploy/image.rs"]
mod image;
#[path = "deploy/kubernetes.rs"]
mod kubernetes;
#[path = "deploy/manifests.rs"]
mod manifests;
#[path = "deploy/metrics.rs"]
mod metrics;
#[path = "deploy/promql.rs"]
mod promql;
#[path = "deploy/workloads.rs"]
mod workloads;
