#!/bin/sh
# Copies the shared libraries that BINARY loads from under PREFIX into DEST, keeping their
# paths (DEST/PREFIX/...). The release binary carries a RUNPATH to $LIBTORCH/lib (build.rs
# bakes in DEP_TCH_LIBTORCH_LIB), and libtorch finds its own dependencies relative to
# itself, so a runtime image that copies DEST/ onto / finds every library where the builder
# had it: no LD_LIBRARY_PATH, nothing else from the (~1 GB) torch install.
# Libraries outside PREFIX (libc, libstdc++, libgcc_s, ...) come from the runtime image's
# own Debian packages. Fails when ldd cannot resolve a library. Prints the paths copied.
# Usage: collect-libs.sh BINARY PREFIX DEST
# COLLECT_LIBS_LINK=1 hard-links instead of copying (the lint's check, on one filesystem).
set -eu
bin=$1 prefix=${2%/} dest=${3%/}
listing=$(ldd "$bin")
if printf '%s\n' "$listing" | grep -q 'not found'; then
  printf '%s\n' "$listing" >&2
  echo "collect-libs: $bin needs libraries that cannot be found" >&2
  exit 1
fi
printf '%s\n' "$listing" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | while read -r lib; do
  path=$(realpath -s "$lib")
  case $path in "$prefix"/*) ;; *) continue ;; esac
  mkdir -p "$dest$(dirname "$path")"
  if [ "${COLLECT_LIBS_LINK:-0}" = 1 ]; then
    ln -f "$(realpath "$lib")" "$dest$path"
  else
    cp -L "$lib" "$dest$path"
  fi
  echo "$path"
done
