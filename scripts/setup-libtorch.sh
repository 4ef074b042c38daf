#!/usr/bin/env bash
# Installs the libtorch that `tch` 0.26 links against, once, outside the repo.
# PyPI's torch==2.13.0 wheel carries a complete libtorch; the two small CUDA runtime
# wheels provide the only CUDA libraries libtorch_cpu.so needs at load time.
# Idempotent: a finished install is marked by a stamp file and never downloaded again.
# Prints the LIBTORCH directory on its last line.
set -euo pipefail
cache="${GRADCAM_CACHE:-$HOME/.cache/gradcam-serve}"
venv="$cache/libtorch-2.13.0"
stamp="$venv/.complete"
if [ ! -f "$stamp" ]; then
  echo "setup-libtorch: installing torch 2.13.0 into $venv (about 540 MB, once)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps \
    torch==2.13.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 >&2
  touch "$stamp"
fi
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$site/torch"
