#!/usr/bin/env bash
# The browser test's tools, installed once: Debian's headless Chromium and its chromedriver
# (apt, as root), and Selenium in its own venv under ~/.cache/gradcam-serve. Idempotent
# (a stamp file; apt only when a binary is missing). Prints the venv's python path.
set -euo pipefail
cache="${GRADCAM_CACHE:-$HOME/.cache/gradcam-serve}"
venv="$cache/browser-selenium-4.51.0"
stamp="$venv/.complete"
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
if [ ! -f "$stamp" ]; then
  echo "setup-browser: installing selenium 4.51.0 into $venv (once)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check selenium==4.51.0 >&2
  touch "$stamp"
fi
echo "$venv/bin/python"
