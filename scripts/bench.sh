#!/usr/bin/env bash
# `make bench`: builds the release binaries, installs the Python baseline's venv (once), runs
# every benchmark (bench/run.py) and writes BENCHMARKS.md, bench/*.png and bench/results.json.
# How long it measures: the README's `make bench` row. BENCH_QUICK=1 makes a short, rough run.
set -euo pipefail
cd "$(dirname "$0")/.."
LIBTORCH="${LIBTORCH:-$(scripts/setup-libtorch.sh)}"
export LIBTORCH
cargo build --release --locked --workspace --bins
PY=$(scripts/setup-pyref.sh)
# The exporter, for the exported-model step (as `make test` installs it).
"$PY" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall ./python
rm -rf python/build python/src/*.egg-info
exec "$PY" bench/run.py "$@"
