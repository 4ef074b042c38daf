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
# Installs the clients once into ~/.cache/gradcam-serve/protocol-venv (a stamp file marks a
# finished install; about 500 MB). Needs the release build (BIN, default
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
stamp="$venv/.complete-tritonclient-$TRITONCLIENT-kserve-$KSERVE-numpy-$NUMPY-pillow-$PILLOW-requests-$REQUESTS"
out=target/protocol-test

if [ ! -x "$BIN" ]; then
  echo "protocol-test: $BIN is missing; run \`make build\` first" >&2
  exit 2
fi
if [ ! -f "$stamp" ]; then
  echo "protocol-test: installing $pins into $venv (once)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086 # $pins is a list of requirements
  "$venv/bin/pip" install -q --disable-pip-version-check $pins >&2
  touch "$stamp"
fi

rm -rf "$out"
mkdir -p "$out"
servers=()
cleanup() {
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# start NAME [server flags...]: starts a server, logs to $out/NAME.*; sets $pid.
start() {
  local name=$1
  shift
  GRADCAM_LOG=${GRADCAM_LOG:-warn} "$BIN" serve --bind 127.0.0.1:0 --demo-weights \
    --weights /nonexistent/weights.safetensors "$@" \
    >"$out/$name.stdout" 2>"$out/$name.log" &
  pid=$!
  servers+=("$pid")
}

# wait_for NAME PID: the URL of its `listening on URL` line, once GET /ready is 200.
wait_for() {
  local name=$1 pid=$2 line url=
  for _ in $(seq 1 600); do
    if line=$(head -n 1 "$out/$name.stdout" 2>/dev/null) && [[ "$line" == "listening on "* ]]; then
      url=${line#listening on }
      break
    fi
    kill -0 "$pid" 2>/dev/null || { echo "protocol-test: the $name server exited; see $out/$name.log" >&2; return 2; }
    sleep 0.1
  done
  [ -n "$url" ] || { echo "protocol-test: no 'listening on' line from the $name server within 60 s" >&2; return 2; }
  python3 - "$url" "$name" <<'EOF' >&2
import sys, time, urllib.request, urllib.error
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        if urllib.request.urlopen(sys.argv[1] + "/ready", timeout=2).status == 200:
            sys.exit(0)
    except (urllib.error.URLError, OSError):
        pass
    time.sleep(0.1)
sys.exit(f"protocol-test: the {sys.argv[2]} server is not ready within 120 s")
EOF
  echo "$url"
}

start main
main_pid=$pid
GRADCAM_MODEL_NAME=$LIMIT_NAME start limits --max-upload-bytes "$LIMIT_UPLOAD" --queue-capacity "$LIMIT_QUEUE"
limits_pid=$pid
main_url=$(wait_for main "$main_pid")
limits_url=$(wait_for limits "$limits_pid")
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
for name in main limits; do
  pid=$main_pid
  [ "$name" = limits ] && pid=$limits_pid
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "protocol-test: FAIL: the $name server died during the run; see $out/$name.log" >&2
    status=1
    continue
  fi
  kill -TERM "$pid"
  code=0
  wait "$pid" || code=$?
  if [ "$code" -ne 0 ]; then
    echo "protocol-test: FAIL: the $name server exited $code on SIGTERM; see $out/$name.log" >&2
    status=1
  fi
done
trap - EXIT
[ "$status" -eq 0 ] && echo "protocol-test: PASS" || echo "protocol-test: FAIL"
exit "$status"
