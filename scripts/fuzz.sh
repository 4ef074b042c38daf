#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for FUZZ_SECONDS (default 60) each and prints the
# executions run, target by target. Exit 1 when a target finds a crash (its input is then
# under fuzz/artifacts/<target>/: copy it to tests/fuzz-regressions/<target>/ and make
# `cargo test --test core fuzz_regressions` cover it), 2 when it cannot build or run.
#
# Needs: LIBTORCH exported (the Makefile does), cargo-fuzz (installed here once when
# missing). cargo-fuzz needs nightly compiler flags (-Z sanitizer, sancov); RUSTC_BOOTSTRAP=1
# lets the stable toolchain accept them.
#
#   FUZZ_SECONDS=60 FUZZ_TARGETS="decode request" scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

: "${LIBTORCH:?export LIBTORCH (scripts/setup-libtorch.sh prints it)}"
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_TARGETS=${FUZZ_TARGETS:-decode request}
# ASan catches memory errors in the C parts too (libtorch is linked, not instrumented).
FUZZ_SANITIZER=${FUZZ_SANITIZER:-address}
export RUSTC_BOOTSTRAP=1
# The fuzz binaries link libtorch through torch-sys; build.rs bakes an rpath only into the
# service's own binaries, so the loader needs the path here.
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (once, a few minutes)" >&2
  cargo install cargo-fuzz --locked
fi

(cd fuzz && cargo fuzz build --sanitizer "$FUZZ_SANITIZER") || exit 2

log_dir=fuzz/artifacts/logs
mkdir -p "$log_dir"
summary=()
status=0
for target in $FUZZ_TARGETS; do
  corpus="$root/fuzz/corpus/$target"
  seeds="$root/fuzz/seeds/$target"
  mkdir -p "$corpus" "$root/fuzz/artifacts/$target"
  extra=()
  [ -f "fuzz/$target.dict" ] && extra+=("-dict=$root/fuzz/$target.dict")
  log="$log_dir/$target.log"
  echo "fuzz: $target for ${FUZZ_SECONDS} s (corpus $corpus, seeds $seeds; log $log)"
  rc=0
  (cd fuzz && cargo fuzz run --sanitizer "$FUZZ_SANITIZER" "$target" "$corpus" "$seeds" -- \
    -max_total_time="$FUZZ_SECONDS" -timeout=20 -rss_limit_mb=4096 -malloc_limit_mb=512 -print_final_stats=1 \
    "${extra[@]}") >"$log" 2>&1 || rc=$?
  runs=$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -n 1 || true)
  [ -n "$runs" ] || runs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1 || true)
  cov=$(grep -oE 'DONE[[:space:]]+cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -n 1 || true)
  if [ "$rc" -eq 0 ]; then
    summary+=("$target: ${runs:-?} executions in ${FUZZ_SECONDS} s, no crash (${cov:-no stats})")
  else
    status=1
    artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -n 1 | sed 's/Test unit written to //' || true)
    summary+=("$target: FAILED (exit $rc) after ${runs:-?} executions; input: ${artifact:-none written}; see $log")
    tail -n 40 "$log" >&2
  fi
done
echo
echo "fuzz summary (sanitizer: $FUZZ_SANITIZER):"
printf '  %s\n' "${summary[@]}"
exit "$status"
