#!/usr/bin/env bash
# The system's reference LAPACK, which EigenCAM, EigenGradCAM and eigen_smooth load at run
# time for NumPy's sign of a singular vector (src/cam/lapack.rs): Debian's single-threaded
# OpenBLAS (its LAPACK is the reference one). Installed once, with apt, as root; elsewhere
# it says what to install and fails, and the server refuses those three with 422.
set -euo pipefail
if /sbin/ldconfig -p 2>/dev/null | grep -q -E 'liblapack\.so\.3|libopenblas\.so\.0'; then
  exit 0
fi
echo "setup-lapack: installing Debian's libopenblas0-serial (the reference LAPACK, once)" >&2
if [ "$(id -u)" != 0 ]; then
  echo "setup-lapack: run as root, or install libopenblas0-serial (or liblapack3) yourself" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q libopenblas0-serial >&2 \
  || { apt-get update -q >&2 && apt-get install -y -q libopenblas0-serial >&2; }
