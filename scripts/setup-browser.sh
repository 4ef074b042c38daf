#!/usr/bin/env bash
# The browser test's tools, installed once: Debian's headless Chromium and its chromedriver
# (apt, as root), and Selenium in its own venv under ~/.cache/gradcam-serve. Idempotent
# (a stamp file; apt only when a binary is missing). Prints the venv's python path.
set -euo pipefail
cache="${GRADCAM_CACHE:-$HOME/.cache/gradcam-serve}"
venv="$cache/browser-selenium-4.51.0"
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "setup-browser: installing Debian's chromium and chromium-driver (once)" >&2
  if [ "$(id -u)" != 0 ]; then
    echo "setup-browser: run as root, or install chromium and chromium-driver yourself" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium chromium-driver >&2 \
    || { apt-get update -q >&2 && apt-get install -y -q chromium chromium-driver >&2; }
fi
# shellcheck source=scripts/lib/common.sh
. "$(dirname "$0")/lib/common.sh"
pinned_venv setup-browser "$venv" selenium==4.51.0
echo "$venv/bin/python"
