# Sourced by the set-up and test scripts (not run): the two things they all do, written once.
#   pinned_venv     a Python venv holding exactly the pinned requirements, installed once
#   start_server    a real server process (demo weights, loopback, port 0) in the background
#   server_url      waits for its `listening on URL` line and GET /ready, prints the URL
#   stop_server     fails when it died during the run or does not exit 0 on SIGTERM
# Each takes the calling script's name first (WHO), for its messages.

# pinned_venv WHO VENV REQUIREMENT...: VENV with REQUIREMENTs installed, once. The stamp file
# holds the list, so a changed pin reinstalls and an interrupted install is redone.
pinned_venv() {
  local who=$1 venv=$2
  shift 2
  local wanted="$*"
  if [ -f "$venv/.complete" ] && [ "$(cat "$venv/.complete")" = "$wanted" ]; then
    return 0
  fi
  echo "$who: installing $wanted into $venv (once)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$@" >&2
  echo "$wanted" >"$venv/.complete"
}

# start_server BIN OUT NAME [server flags...]: starts `BIN serve` on 127.0.0.1:0 with the
# demo weights; its stdout and log go to OUT/NAME.stdout and OUT/NAME.log. Sets $pid.
start_server() {
  local bin=$1 out=$2 name=$3
  shift 3
  GRADCAM_LOG=${GRADCAM_LOG:-warn} "$bin" serve --bind 127.0.0.1:0 --demo-weights \
    --weights /nonexistent/weights.safetensors "$@" \
    >"$out/$name.stdout" 2>"$out/$name.log" &
  pid=$!
}

# server_url WHO OUT NAME PID: the URL from the server's first line (`listening on URL`),
# printed once GET /ready answers 200. Waits on conditions with deadlines (60 s for the
# line, 120 s for ready: warm-up on a busy 2-core machine), and fails at once if it exits.
server_url() {
  local who=$1 out=$2 name=$3 pid=$4 line url=
  for _ in $(seq 1 600); do
    if line=$(head -n 1 "$out/$name.stdout" 2>/dev/null) && [[ "$line" == "listening on "* ]]; then
      url=${line#listening on }
      break
    fi
    kill -0 "$pid" 2>/dev/null || { echo "$who: the $name server exited; see $out/$name.log" >&2; return 2; }
    sleep 0.1
  done
  [ -n "$url" ] || { echo "$who: no 'listening on' line from the $name server within 60 s" >&2; return 2; }
  # (An `if !`: `set -e` does not reach into the $(...) this runs in.)
  if ! python3 - "$url" "$pid" "$who: the $name server" "$out/$name.log" <<'EOF' >&2
import os, sys, time, urllib.request
url, pid, what, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url + "/ready", timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:  # not listening yet, or 503 while warming up
        pass
    try:
        os.kill(pid, 0)  # the shell reaps its exited children, so this fails once it exits
    except ProcessLookupError:
        sys.exit(f"{what} exited before it was ready; see {log}")
    time.sleep(0.1)
sys.exit(f"{what} is not ready within 120 s; see {log}")
EOF
  then
    return 2
  fi
  echo "$url"
}

# stop_server WHO OUT NAME PID: the server must have survived everything it was sent, and
# still stop cleanly: returns 1 (with the reason) when it died, or exits non-zero on SIGTERM.
stop_server() {
  local who=$1 out=$2 name=$3 pid=$4 code=0
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "$who: FAIL: the $name server died during the run; see $out/$name.log" >&2
    return 1
  fi
  kill -TERM "$pid"
  wait "$pid" || code=$?
  if [ "$code" -ne 0 ]; then
    echo "$who: FAIL: the $name server exited $code on SIGTERM; see $out/$name.log" >&2
    return 1
  fi
}
