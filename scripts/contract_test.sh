#!/usr/bin/env bash
# Contract test: schemathesis (PyPI) against the OpenAPI spec the server itself serves at
# /openapi.json, on a real server process (demo weights, loopback, port 0).
#
# Checks: all of schemathesis's (CHECKS=all, the default), on every generated request,
# positive and negative, of every operation; among them:
#   not_a_server_error          no 5xx
#   status_code_conformance     every status is documented for its operation
#   content_type_conformance    every Content-Type is documented for its status
#   response_headers_conformance  documented headers present and well-formed
#   response_schema_conformance   bodies validate against the documented schemas
#   positive_data_acceptance    schema-valid requests are accepted (ST202); on POST /explain
#                               a 400 too, only for image bytes that do not decode: see
#                               scripts/contract-test.toml and the hook check
#                               positive_400_only_for_undecodable_images (contract_hooks.py);
#                               no 422 is excused: the served spec says what the server takes
#   negative_data_rejection     schema-violating requests are refused (ST201)
#   unsupported_method, missing_required_header, ignored_auth, use_after_free, ...
# None is excluded. CHECKS=a,b runs only those.
#
# Bounded: MAX_EXAMPLES (default 100) generated cases per operation in the fuzzing phase,
# besides the coverage phase's deterministic ones (about 200 for POST /explain); operations
# without parameters (GET /health, ...) have a single valid request, so they get that one.
# A fixed SEED (default 1) so a run can be repeated, 1 schemathesis worker; about 30 s on
# 2 cores. Installs schemathesis once into ~/.cache/gradcam-serve/schemathesis-venv
# (scripts/lib/common.sh's pinned_venv). Needs the release build (BIN, default
# target/release/gradcam-serve).
# Reports (JUnit XML, NDJSON events) go to target/contract-test/.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/gradcam-serve}
MAX_EXAMPLES=${MAX_EXAMPLES:-100}
SEED=${SEED:-1}
CHECKS=${CHECKS:-all}
VERSION=4.32.5
cache="${GRADCAM_CACHE:-$HOME/.cache/gradcam-serve}"
venv="$cache/schemathesis-venv"
out=target/contract-test
here=$(pwd)

# shellcheck source=scripts/lib/common.sh
. scripts/lib/common.sh

if [ ! -x "$BIN" ]; then
  echo "contract-test: $BIN is missing; run \`make build\` first" >&2
  exit 2
fi
pinned_venv contract-test "$venv" "schemathesis==$VERSION"

rm -rf "$out"
mkdir -p "$out"
start_server "$BIN" "$out" main
server=$pid
cleanup() { kill "$server" 2>/dev/null || true; }
trap cleanup EXIT
url=$(server_url contract-test "$out" main "$server")
echo "contract-test: server at $url (pid $server), schemathesis $VERSION, checks $CHECKS, $MAX_EXAMPLES examples per operation, seed $SEED"

status=0
# From inside $out: schemathesis keeps a cache (.schemathesis/) in its working directory.
(cd "$out" && SCHEMATHESIS_HOOKS="$here/scripts/contract_hooks.py" \
  "$venv/bin/schemathesis" --config-file "$here/scripts/contract-test.toml" \
  run "$url/openapi.json" \
  --checks "$CHECKS" \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --workers 1 \
  --request-timeout 60 \
  --generation-database none \
  --no-color \
  --report junit,ndjson --report-dir . \
  --report-junit-path junit.xml --report-ndjson-path events.ndjson) \
  || status=$?

# What was sent and answered, from the NDJSON event log.
python3 - "$out/events.ndjson" <<'EOF' || true
import collections, json, sys, urllib.parse
seen = collections.Counter()
def walk(o):
    if isinstance(o, dict):
        r = o.get("response")
        if isinstance(r, dict) and "status_code" in r and isinstance(o.get("request"), dict):
            q = o["request"]
            seen[(q["method"], urllib.parse.urlsplit(q["uri"]).path, r["status_code"])] += 1
        for v in o.values():
            walk(v)
    elif isinstance(o, list):
        for v in o:
            walk(v)
for line in open(sys.argv[1]):
    walk(json.loads(line))
print(f"contract-test: {sum(seen.values())} responses recorded, by operation and status:")
for (method, path, status), n in sorted(seen.items()):
    print(f"  {method:7s} {path:10s} {status}  {n}")
EOF

# The server must have survived everything it was sent, and still stop cleanly.
stop_server contract-test "$out" main "$server" || status=1
trap - EXIT
[ "$status" -eq 0 ] && echo "contract-test: PASS" || echo "contract-test: FAIL"
exit "$status"
