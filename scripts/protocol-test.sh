#!/usr/bin/env bash
# Protocol test: the KServe v1 and Open Inference Protocol v2 endpoints, driven by clients this
# project did not write, NVIDIA's tritonclient[http] and the kserve SDK's REST client (both
# from PyPI), on real server processes (demo weights, loopback, port 0); every answer is
# compared with the server's own POST /explain for the same image and options. See
# scripts/protocol_test.py for the checks.
#
# Two servers:
#   main    default limits; model name: GET /model's architecture (or $GRADCAM_MODEL_NAME
#           when set: the server and the test read the same variable)
#   limits  --max-upload-bytes $LIMIT_UPLOAD, --queue-capacity $LIMIT_QUEUE, renamed with
#           GRADCAM_MODEL_NAME=$LIMIT_NAME: 413, 503 and the model-name override
# Installs the clients once into ~/.cache/gradcam-serve/protocol-venv (scripts/lib/common.sh's
# pinned_venv; about 500 MB). Needs the release build (BIN, default
# target/release/gradcam-serve). Logs go to target/protocol-test/. About a minute on 2 cores.
# Arguments are passed to protocol_test.py (e.g. `-k v2/triton`).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/gradcam-serve}
LIMIT_UPLOAD=${LIMIT_UPLOAD:-65536}
LIMIT_QUEUE=${LIMIT_QUEUE:-1}
LIMIT_NAME=${LIMIT_NAME:-protocol-limits}
TRITONCLIENT=2.73.0
KSERVE=0.21.0
NUMPY=2.4.6
PILLOW=13.0.0
REQUESTS=2.34.2
pins="tritonclient[http]==$TRITONCLIENT kserve==$KSERVE numpy==$NUMPY pillow==$PILLOW requests==$REQUESTS"
cache="${GRADCAM_CACHE:-$HOME/.cache/gradcam-serve}"
venv="$cache/protocol-venv"
out=target/protocol-test
# shellcheck source=scripts/lib/common.sh
. scripts/lib/common.sh

if [ ! -x "$BIN" ]; then
  echo "protocol-test: $BIN is missing; run \`make build\` first" >&2
  exit 2
fi
# shellcheck disable=SC2086 # $pins is a list of requirements
pinned_venv protocol-test "$venv" $pins

rm -rf "$out"
mkdir -p "$out"
servers=()
cleanup() {
  for p in "${servers[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

start_server "$BIN" "$out" main
main_pid=$pid
servers+=("$pid")
GRADCAM_MODEL_NAME=$LIMIT_NAME start_server "$BIN" "$out" limits \
  --max-upload-bytes "$LIMIT_UPLOAD" --queue-capacity "$LIMIT_QUEUE"
limits_pid=$pid
servers+=("$pid")
main_url=$(server_url protocol-test "$out" main "$main_pid")
limits_url=$(server_url protocol-test "$out" limits "$limits_pid")
echo "protocol-test: main server $main_url (pid $main_pid), limits server $limits_url (pid $limits_pid;" \
  "max upload $LIMIT_UPLOAD bytes, queue $LIMIT_QUEUE, model name $LIMIT_NAME);" \
  "tritonclient $TRITONCLIENT, kserve $KSERVE"

# Bounded: the test stops itself after 15 minutes (every request has its own timeout too).
set +e
timeout --kill-after=10 900 "$venv/bin/python" scripts/protocol_test.py "$main_url" \
  --limits "$limits_url" --limits-model "$LIMIT_NAME" \
  --limits-max-upload "$LIMIT_UPLOAD" --limits-queue "$LIMIT_QUEUE" "$@" \
  2>&1 | tee "$out/results.txt"
status=${PIPESTATUS[0]}
set -e

# The servers must have survived everything they were sent, and still stop cleanly.
stop_server protocol-test "$out" main "$main_pid" || status=1
stop_server protocol-test "$out" limits "$limits_pid" || status=1
trap - EXIT
[ "$status" -eq 0 ] && echo "protocol-test: PASS" || echo "protocol-test: FAIL"
exit "$status"
