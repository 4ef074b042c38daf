#!/usr/bin/env bash
# The page at GET / in headless Chromium against real servers (scripts/browser_test.py).
# Installs Chromium, chromedriver and Selenium once (scripts/setup-browser.sh); needs the
# release build. Screenshots go to target/browser-test/.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup-browser.sh)
exec "$py" scripts/browser_test.py "$@"
