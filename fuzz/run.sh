#!/usr/bin/env bash
# Fuzz every target for a bounded time and print a table:
#   bash fuzz/run.sh [seconds-per-target]      (default 60)
# Installs cargo-fuzz if missing; uses nightly when installed, else stable
# with RUSTC_BOOTSTRAP=1. Builds in $SLUICE_FUZZ_TARGET_DIR (default
# ~/.cache/sluice-fuzz-target), never in the gateway's target directory.
# New corpus entries go to a scratch directory; fuzz/corpus/ (the seeds) is
# only read. A crash leaves its input in fuzz/artifacts/<target>/ and the
# script exits 1.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"
targets=(body frame commit_record)

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
export CARGO_TARGET_DIR="${SLUICE_FUZZ_TARGET_DIR:-$HOME/.cache/sluice-fuzz-target}"
# Overflow checks and debug assertions on; no sanitizer: the code under test
# is safe Rust, and the C decoders are not instrumented by cargo anyway.
build=(--sanitizer none --debug-assertions)

started=$(date +%s)
"${fuzz[@]}" build "${build[@]}"
echo "built the fuzz targets in $(( $(date +%s) - started )) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
rows=()
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  log="$scratch/$t.log"
  status=0
  touch "$log.start"
  "${fuzz[@]}" run "${build[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
  per_s=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  corpus=$( (grep -o 'corp: [0-9]*' "$log" || true) | tail -1 | cut -d' ' -f2)
  crashes=$(find "artifacts/$t" -type f -newer "$log.start" 2>/dev/null | wc -l || true)
  if [ "$status" -ne 0 ]; then
    failed=1
    crashes=$(( crashes > 0 ? crashes : 1 ))
    tail -40 "$log"
  fi
  rows+=("| $t | ${runs:-?} | ${per_s:-?} | ${corpus:-?} | $crashes |")
done

echo
echo "| target | runs | execs/s | corpus | crashes |"
echo "|---|--:|--:|--:|--:|"
printf '%s\n' "${rows[@]}"
echo "($seconds s per target)"
exit "$failed"
