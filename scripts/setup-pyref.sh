#!/usr/bin/env bash
# Python environment for the reference checks and the baseline benchmark:
# pytorch-grad-cam (PyPI grad-cam) and torchvision on the SAME torch version (2.13.0) that
# the Rust build links against. Idempotent (stamp file). Prints the python path.
set -euo pipefail
cache="${GRADCAM_CACHE:-$HOME/.cache/gradcam-serve}"
venv="$cache/pyref-torch-2.13.0"
stamp="$venv/.complete"
if [ ! -f "$stamp" ]; then
  echo "setup-pyref: installing grad-cam 1.5.7 and its needs into $venv (once)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  # Python's `import torch` loads libtorch_cuda and with it every CUDA library, so this
  # venv takes torch with all its dependencies (about 2.6 GB, once per machine).
  "$venv/bin/pip" install -q --disable-pip-version-check \
    torch==2.13.0 torchvision==0.28.0 grad-cam==1.5.7 safetensors >&2
  touch "$stamp"
fi
echo "$venv/bin/python"
