#!/usr/bin/env bash
# The whole test suite: installs what it needs (moto for the S3 tests,
# DuckDB for the Parquet tables, schemathesis for the OpenAPI fuzzing,
# Chromium for the browser test, Prometheus for the scrape test), then runs
# every test target.
# Usage: bash tests/run.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v moto_server >/dev/null 2>&1; then
  python3 -m pip install --quiet 'moto[server]'
fi
# tests/deploy.rs parses deploy/ with PyYAML (moto[server] brings it along).
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
  python3 -m pip install --quiet pyyaml
fi
# tests/compact.rs reads the Parquet tables back with DuckDB.
if ! python3 -c 'import duckdb' >/dev/null 2>&1; then
  python3 -m pip install --quiet duckdb
fi
# tests/openapi.rs fuzzes a live gateway from GET /openapi.json with schemathesis.
if ! python3 -c 'import schemathesis' >/dev/null 2>&1; then
  python3 -m pip install --quiet schemathesis
fi
# tests/browser.rs drives headless Chromium, tests/prometheus.rs scrapes two
# gateways with a real Prometheus (Debian packages; root with apt).
for pkg in chromium prometheus; do
  if [ ! -x "/usr/bin/$pkg" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y "$pkg" || { apt-get update && apt-get install -y "$pkg"; }
  fi
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice-target}"
cargo test --all-targets "$@"
