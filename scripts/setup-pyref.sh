#!/usr/bin/env bash
# Python environment for the reference checks and the baseline benchmark:
# pytorch-grad-cam (PyPI grad-cam) and torchvision on the SAME torch version (2.13.0) that
# the Rust build links against, and ONNX Runtime for the benchmark's peer. Idempotent (stamp file). Prints the python path.
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
# grad-cam 1.5.7 leaves its dependencies unpinned, and OpenCV's resize (cv2.resize, which
# upsamples every reference map) and numpy decide the reference's numbers: pinned to the
# versions the parity data was made and checked with. Its own stamp, so that an existing
# venv gets it (a no-op where these versions are already installed).
refpins="opencv-python-headless==5.1.0.95 numpy==2.4.6 safetensors==0.8.0"
refpins_stamp="$venv/.refpins"
if [ "$(cat "$refpins_stamp" 2>/dev/null)" != "$refpins" ]; then
  echo "setup-pyref: pinning $refpins in $venv" >&2
  # shellcheck disable=SC2086 # $refpins is a list of requirements
  "$venv/bin/pip" install -q --disable-pip-version-check $refpins >&2
  echo "$refpins" >"$refpins_stamp"
fi
# The benchmark's ONNX Runtime baseline (bench/baseline.py exports the same weights with
# torch.onnx.export, which needs `onnx`). Its own stamp, so that an existing venv gets it.
ort_stamp="$venv/.onnxruntime-1.32.0"
if [ ! -f "$ort_stamp" ]; then
  echo "setup-pyref: installing onnxruntime 1.32.0 and onnx 1.23.2 into $venv (once)" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check onnxruntime==1.32.0 onnx==1.23.2 >&2
  touch "$ort_stamp"
fi
# The exporter's tests run in this venv too (pytest); its own stamp, as above.
test_stamp="$venv/.pytest-9.2.0"
if [ ! -f "$test_stamp" ]; then
  echo "setup-pyref: installing pytest 9.2.0 into $venv (once)" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check pytest==9.2.0 >&2
  touch "$test_stamp"
fi
echo "$venv/bin/python"
