#!/usr/bin/env bash
# `make test` RUNS times in a row, optionally with every core kept busy by another process
# (BUSY=1: one `yes` per core, at the same priority as the tests), to show that no test
# depends on the machine's speed. One log per run under target/repeat-test/, one summary
# line per run (exit status, wall time, tests passed, load average before and after).
# Stops at the first failing run and exits with its status.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-5}
busy=${BUSY:-0}
out=target/repeat-test
mkdir -p "$out"
mode=quiet
hogs=()
stop_hogs() { for p in "${hogs[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap stop_hogs EXIT
if [ "$busy" = 1 ]; then
  mode=busy
  for _ in $(seq 1 "$(nproc)"); do
    yes >/dev/null &
    hogs+=($!)
  done
fi

echo "repeat-test: make test x $runs, $mode ($(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
for i in $(seq 1 "$runs"); do
  log="$out/$mode-$i.log"
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  start=$(date +%s)
  make test >"$log" 2>&1
  status=$?
  wall=$(($(date +%s) - start))
  load_after=$(cut -d' ' -f1-3 /proc/loadavg)
  cargo=$(grep -o '^test result: ok\. [0-9]* passed' "$log" | awk '{s += $4} END {print s + 0}')
  contract=$(grep -m1 -o '[0-9]* generated, [0-9]* passed' "$log")
  browser=$(grep -m1 -E '^[0-9]+ passed, [0-9]+ failed' "$log")
  echo "$mode run $i/$runs: exit $status, ${wall} s, cargo tests passed $cargo, contract '$contract'," \
    "browser '$browser', load average before [$load_before] after [$load_after]; log $log"
  if [ "$status" -ne 0 ]; then
    echo "repeat-test: run $i failed; the end of its log:" >&2
    tail -n 40 "$log" >&2
    exit "$status"
  fi
done
echo "repeat-test: $runs of $runs passed ($mode)"
