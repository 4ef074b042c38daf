#!/usr/bin/env bash
# An older torch for the exporter's tests: gradcam_export must work with the torch the
# project pins (2.13.0, the reference venv, scripts/setup-pyref.sh) and with an older 2.x.
# torch 2.4.1 (the last before TorchScript's deprecation warnings, with its torchvision
# 0.19.1) in a venv of its own, installed once (about 2.5 GB: PyPI's Linux torch wheels are
# CUDA builds). Idempotent (stamp file). Prints the python path.
set -euo pipefail
cache="${GRADCAM_CACHE:-$HOME/.cache/gradcam-serve}"
wanted="torch==2.4.1 torchvision==0.19.1 numpy<2 safetensors pytest"
venv="$cache/export-torch-2.4.1"
stamp="$venv/.complete"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  echo "setup-export-torch: installing $wanted into $venv (once)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q --disable-pip-version-check $wanted >&2
  echo "$wanted" > "$stamp"
fi
echo "$venv/bin/python"
