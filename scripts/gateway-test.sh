#!/usr/bin/env bash
# The gateway test (`make gateway-test`, run by CI): docker/nginx.conf, rendered for
# loopback, run by real nginx in front of two gradcam-serve replicas on 127.0.0.1; see
# scripts/gateway_test.py for what it shows. Set-up, idempotent:
#   - Debian's nginx (package nginx-light) installed once when /usr/sbin/nginx is missing;
#     that needs root, as in CI. The package is kept from starting a system nginx.
#   - the release binary built when target/release/gradcam-serve is missing.
# Bounded: the test stops itself after 170 s and stops every process it started.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "gateway-test: nginx is missing; run as root or: apt-get install nginx-light" >&2
    exit 1
  fi
  echo "gateway-test: installing nginx (Debian package nginx-light), once" >&2
  policy=/usr/sbin/policy-rc.d
  made_policy=
  if [ ! -e "$policy" ]; then
    # invoke-rc.d's "101: action forbidden": the package must not start an nginx of its own.
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
  fi
  trap '[ -n "$made_policy" ] && rm -f "$policy"' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends nginx-light >&2
  [ -n "$made_policy" ] && rm -f "$policy" && made_policy=
fi

if [ ! -x target/release/gradcam-serve ]; then
  LIBTORCH="${LIBTORCH:-$(scripts/setup-libtorch.sh)}"
  export LIBTORCH
  cargo build --release --locked
fi

# SIGTERM at 170 s: the script stops its replicas and nginx and exits non-zero.
exec timeout --kill-after=10 170 python3 scripts/gateway_test.py "$@"
