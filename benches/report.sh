#!/usr/bin/env bash
# Regenerates benches/REPORT.md: builds the release gateway and the load
# harness, then runs the report matrix (benches/load.rs, SLUICE_LOAD_REPORT;
# ~12 minutes on the 2-core VM). Knobs, all optional, are the harness's:
# SLUICE_LOAD_SECS (5), SLUICE_LOAD_WARMUP_SECS (2), SLUICE_LOAD_OPEN
# (0.5,0.8,0.95), SLUICE_LOAD_OPEN_SECS (5), SLUICE_LOAD_ROUNDS (5),
# SLUICE_LOAD_STORES (file,moto), SLUICE_LOAD_PROFILES (default,low-latency),
# SLUICE_LOAD_ONLY, SLUICE_LOAD_CONNS_<SCENARIO>.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v moto_server >/dev/null || pip install 'moto[server]'
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo bench --bench load --no-run
SLUICE_LOAD_REPORT="${SLUICE_LOAD_REPORT:-$PWD/benches/REPORT.md}" \
  timeout "${SLUICE_LOAD_TIMEOUT:-30m}" cargo bench --bench load
