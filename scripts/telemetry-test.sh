#!/usr/bin/env bash
# Telemetry test (a step of `make test`): the OpenTelemetry traces a real server exports
# over OTLP/HTTP, received by a receiver built on the official opentelemetry-proto
# definitions, and /metrics parsed by the Prometheus project's Python parser
# (prometheus_client) and checked by `promtool check metrics` (Prometheus's own linter).
# See scripts/telemetry_test.py for the checks. Installs the Python packages, pinned, once
# into ~/.cache/gradcam-serve/telemetry-venv (scripts/lib/common.sh's pinned_venv), and
# promtool from Debian's prometheus package, unpacked (not installed: no service starts)
# into ~/.cache/gradcam-serve/promtool.
# Needs the release build (BIN, default target/release/gradcam-serve). Logs go to
# target/telemetry-test/. About 10 s.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/gradcam-serve}
pins="opentelemetry-proto==1.45.2 protobuf==7.36.2 prometheus-client==0.26.0"
cache="${GRADCAM_CACHE:-$HOME/.cache/gradcam-serve}"
venv="$cache/telemetry-venv"
out=target/telemetry-test
# shellcheck source=scripts/lib/common.sh
. scripts/lib/common.sh

if [ ! -x "$BIN" ]; then
  echo "telemetry-test: $BIN is missing; run \`make build\` first" >&2
  exit 2
fi
# shellcheck disable=SC2086 # $pins is a list of requirements
pinned_venv telemetry-test "$venv" $pins
promtool_dir="$cache/promtool"
promtool="$promtool_dir/usr/bin/promtool"
if [ ! -x "$promtool" ]; then
  echo "telemetry-test: unpacking promtool from Debian's prometheus package (once)" >&2
  rm -rf "$promtool_dir.tmp"
  mkdir -p "$promtool_dir.tmp"
  (cd "$promtool_dir.tmp" && { apt-get download prometheus >&2 \
    || { apt-get update -q >&2 && apt-get download prometheus >&2; }; })
  dpkg-deb -x "$promtool_dir.tmp"/prometheus_*.deb "$promtool_dir.tmp/root"
  rm -rf "$promtool_dir"
  mv "$promtool_dir.tmp/root" "$promtool_dir"
  rm -rf "$promtool_dir.tmp"
fi
rm -rf "$out"
mkdir -p "$out"
PROMTOOL="$promtool" timeout --kill-after=10 600 "$venv/bin/python" scripts/telemetry_test.py "$BIN" "$out"
