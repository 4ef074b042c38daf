#!/bin/sh
# Container health probe for gradcam-serve: GET a path (default /health) on the port the
# service listens on (taken from GRADCAM_BIND), exit 0 on a 2xx answer.
#   /health  the process is up and answering (the image's HEALTHCHECK)
#   /ready   the model is loaded and warmed up (compose gates the gateway on it)
set -eu
path="${1:-/health}"
bind="${GRADCAM_BIND:-0.0.0.0:8080}"
port="${bind##*:}"
exec curl --fail --silent --show-error --max-time 3 --output /dev/null \
  "http://127.0.0.1:${port}${path}"
