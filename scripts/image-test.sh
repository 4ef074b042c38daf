#!/usr/bin/env bash
# The image test (`make image-test`, run by CI): builds docker/Dockerfile as shipped with
# podman and runs it for real, then brings up docker/compose.yaml with podman-compose; see
# scripts/image_test.py for what it shows. No container registry is reachable here, so:
#   - the base images the Dockerfile and the compose file name (debian:bookworm-slim,
#     rust:<RUST_VERSION>-bookworm, nginx:stable) are local stand-ins, made once from a
#     Debian bookworm rootfs (mmdebstrap) and cached: the rust one carries this machine's
#     installed Rust toolchain, the nginx one Debian's nginx. The shipped files keep naming
#     the official images; only this harness makes the stand-ins.
#   - podman keeps everything (stand-ins, build cache, networks) in its own storage under
#     ~/.cache/gradcam-serve/podman, apart from any other podman use on the machine; a
#     second run reuses the stand-ins and the build cache. `make clean-cache` drops it.
#   - the image is built with the one build-arg change the Dockerfile documents: torch from
#     PyPI (the CUDA wheel, as scripts/setup-libtorch.sh installs) instead of the CPU index.
# Set-up, idempotent: podman, runc, mmdebstrap, podman-compose, iptables from Debian,
# installed once when missing (needs root, as in CI). podman runs with runc (crun fails on
# these machines' cgroups) and with the shell's hard limits for open files and processes
# (root cannot raise them here), through a containers.conf of its own.
# Needs target/release/gradcam-serve (`make image-test` builds it): the JSON the container
# answers is compared with what that binary answers outside it.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

cache="${GRADCAM_CACHE:-$HOME/.cache/gradcam-serve}/podman"
log() { printf 'image-test: %s\n' "$*" >&2; }
since() { echo $(( $(date +%s) - $1 )); }

# ------------------------------------------------------------------------------ packages
need=()
for tool in podman:podman runc:runc mmdebstrap:mmdebstrap podman-compose:podman-compose \
            iptables:iptables aardvark-dns:/usr/lib/podman/aardvark-dns \
            netavark:/usr/lib/podman/netavark; do
  pkg=${tool%%:*} cmd=${tool#*:}
  if [ "${cmd#/}" != "$cmd" ]; then [ -x "$cmd" ] || need+=("$pkg")
  else command -v "$cmd" >/dev/null || need+=("$pkg"); fi
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    log "missing ${need[*]}; run as root or: apt-get install ${need[*]}"
    exit 1
  fi
  log "installing ${need[*]} (Debian packages), once"
  export DEBIAN_FRONTEND=noninteractive
  # No recommends: they would bring crun, which fails here; runc is the runtime used.
  apt_log=$(mktemp)
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
    > "$apt_log" 2>&1 || { cat "$apt_log" >&2; rm -f "$apt_log"; exit 1; }
  rm -f "$apt_log"
fi
if [ "$(id -u)" != 0 ]; then
  log "needs root (rootful podman; mmdebstrap's root mode)"
  exit 1
fi

# ------------------------------------------------------------------------------ podman
mkdir -p "$cache/storage" "$cache/networks"
# The containers' limits: the shell's hard limits (podman's defaults are higher, and root
# cannot raise them here); processes also at most pid_max, podman's own cap for itself.
limit() { local v; v=$(ulimit -H "$1"); [ "$v" = unlimited ] && v=$2; echo "$v"; }
nofile=$(limit -n 1048576) nproc=$(limit -u 1048576)
pid_max=$(cat /proc/sys/kernel/pid_max)
[ "$nproc" -gt "$pid_max" ] && nproc=$pid_max
cat > "$cache/containers.conf" <<EOF
# Written by scripts/image-test.sh on every run.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
[network]
network_config_dir = "$cache/networks"
EOF
cat > "$cache/storage.conf" <<EOF
# Written by scripts/image-test.sh on every run.
[storage]
driver = "overlay"
graphroot = "$cache/storage"
runroot = "/run/gradcam-serve-podman"
EOF
export CONTAINERS_CONF="$cache/containers.conf" CONTAINERS_STORAGE_CONF="$cache/storage.conf"
podman info --format '{{.Host.OCIRuntime.Name}} {{.Store.GraphRoot}}' >/dev/null

# ------------------------------------------------------------------------------ stand-ins
# Each stand-in is tagged with the official name the shipped files use, in this storage
# only, and labelled with a hash of its recipe: a changed recipe (or toolchain) remakes it.
dockerfile_arg() { sed -n "s/^ARG $1=//p" docker/Dockerfile | head -1; }
rust_version=$(dockerfile_arg RUST_VERSION)
debian=$(dockerfile_arg DEBIAN_RELEASE)
[ -n "$rust_version" ] && [ "$debian" = bookworm ] \
  || { log "unexpected ARG RUST_VERSION/DEBIAN_RELEASE in docker/Dockerfile"; exit 1; }

# This machine's toolchain matching RUST_VERSION (1.95 -> rustc 1.95.x), as rustup keeps it.
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
toolchain=
for dir in "$rustup_home"/toolchains/*; do
  v=$("$dir/bin/rustc" --version 2>/dev/null | awk '{print $2}') || continue
  case $v in "$rust_version" | "$rust_version".*) toolchain=$(realpath "$dir"); rustc=$v; break ;; esac
done
[ -n "$toolchain" ] || { log "no Rust $rust_version toolchain under $rustup_home/toolchains"; exit 1; }
rustup_bin=$(command -v rustup || echo "${CARGO_HOME:-$HOME/.cargo}/bin/rustup")
[ -x "$rustup_bin" ] || { log "rustup not found"; exit 1; }

# Like the official slim images: no man pages, docs (but copyrights), info or locales.
slim_opts=(--variant=minbase --aptopt='APT::Install-Recommends "false"'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  # Merged /usr by symlinks, as debootstrap and the official images do, rather than by the
  # usrmerge package (which brings perl, about 50 MB).
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  # The official images' apt settings (debuerreotype's): no package cache left behind
  # after apt-get (about 80 MB in a layer otherwise), no translations.
  --customize-hook='printf "%s\n" \
      "DPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true\"; };" \
      "APT::Update::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true\"; };" \
      "Dir::Cache::pkgcache \"\";" "Dir::Cache::srcpkgcache \"\";" > "$1/etc/apt/apt.conf.d/docker-clean"
    echo "Acquire::Languages \"none\";" > "$1/etc/apt/apt.conf.d/docker-no-languages"
    echo "Apt::AutoRemove::SuggestsImportant \"false\";" > "$1/etc/apt/apt.conf.d/docker-autoremove-suggests"
    rm -f "$1"/var/cache/apt/*.bin')
# This machine's extra CA certificates (a TLS-inspecting proxy's), so that pip and cargo in
# the builder stage reach PyPI and crates.io as the machine itself does.
ca_hook='if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/"
  chroot "$1" update-ca-certificates >/dev/null; fi'

recipe_debian() {
  mmdebstrap "${slim_opts[@]}" "$debian" "$1"
  changes=('CMD ["bash"]')
}
recipe_rust() {
  # The official rust image: buildpack-deps (compilers, curl, git, ...) plus rustup's
  # toolchain under /usr/local/{rustup,cargo}. Here the toolchain is this machine's, without
  # its documentation.
  local name
  name="$rustc-x86_64-unknown-linux-gnu"
  mmdebstrap "${slim_opts[@]}" \
    --include=build-essential,ca-certificates,curl,git,pkg-config,libssl-dev,xz-utils \
    --customize-hook="$ca_hook" \
    --customize-hook="mkdir -p \"\$1/usr/local/rustup/toolchains/$name\" \"\$1/usr/local/cargo/bin\"
      tar -C '$toolchain' --exclude=./share/doc -cf - . | tar -C \"\$1/usr/local/rustup/toolchains/$name\" -xf -
      cp '$rustup_bin' \"\$1/usr/local/cargo/bin/rustup\"
      for p in cargo rustc rustdoc rustfmt cargo-fmt cargo-clippy clippy-driver; do
        ln -s rustup \"\$1/usr/local/cargo/bin/\$p\"; done
      printf 'version = \"12\"\ndefault_toolchain = \"$name\"\nprofile = \"minimal\"\n' \
        > \"\$1/usr/local/rustup/settings.toml\"" \
    "$debian" "$1"
  changes=('ENV RUSTUP_HOME=/usr/local/rustup' 'ENV CARGO_HOME=/usr/local/cargo'
    'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    "ENV RUST_VERSION=$rustc" 'CMD ["bash"]')
}
recipe_nginx() {
  # The official nginx image's layout: logs to the container's output, /var/cache/nginx,
  # curl (compose's health check uses it). Debian's nginx (1.22), not nginx.org's stable.
  mmdebstrap "${slim_opts[@]}" --include=nginx-light,curl,ca-certificates \
    --customize-hook='mkdir -p "$1/var/cache/nginx"
      ln -sf /dev/stdout "$1/var/log/nginx/access.log"
      ln -sf /dev/stderr "$1/var/log/nginx/error.log"' \
    "$debian" "$1"
  changes=('CMD ["nginx", "-g", "daemon off;"]' 'STOPSIGNAL SIGQUIT' 'EXPOSE 80')
}

standins=("debian docker.io/library/debian:$debian-slim"
          "rust docker.io/library/rust:$rust_version-$debian"
          "nginx docker.io/library/nginx:stable")
t0=$(date +%s)
made=() pids=() works=()
for entry in "${standins[@]}"; do
  recipe=${entry%% *} image=${entry#* }
  hash=$( { declare -f "recipe_$recipe"; declare -p slim_opts; echo "$ca_hook";
            if [ "$recipe" = rust ]; then echo "$rustc"
              head -c 4096 "$toolchain"/lib/rustlib/multirust-channel-manifest.toml 2>/dev/null || true; fi
            cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true; } | sha256sum | cut -c1-16)
  have=$(podman image inspect --format '{{index .Labels "gradcam.standin"}}' "$image" 2>/dev/null || true)
  [ "$have" = "$hash" ] && continue
  log "making the stand-in for $image (mmdebstrap $debian; once per recipe)"
  work=$(mktemp -d /tmp/gradcam-standin.XXXXXX)
  # The three at once: mostly downloads and dpkg, not CPU.
  (
    set -e
    changes=()
    "recipe_$recipe" "$work/rootfs.tar"
    args=()
    for c in "${changes[@]}" "LABEL gradcam.standin=$hash" \
             "LABEL gradcam.standin.for=$image (made by scripts/image-test.sh, not the official image)"; do
      args+=(--change "$c")
    done
    podman import -q "${args[@]}" "$work/rootfs.tar" "$image" >/dev/null
  ) > "$work/log" 2>&1 &
  pids+=($!) works+=("$work") made+=("$image")
done
failed=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    log "stand-in ${made[$i]} failed:"; tail -40 "${works[$i]}/log" >&2; failed=1
  fi
  rm -rf "${works[$i]}"
done
[ "$failed" = 0 ] || exit 1
standin_s=$(since "$t0")
[ ${#made[@]} -gt 0 ] && log "stand-ins made in ${standin_s} s: ${made[*]}"

# ------------------------------------------------------------------------------ the test
[ -x target/release/gradcam-serve ] || { log "no target/release/gradcam-serve (make build)"; exit 1; }
tools=$(scripts/setup-deploy-tools.sh)  # PyYAML, to read compose.yaml and deploy/k8s
# SIGTERM at 60 min: the script stops what it started (containers, the compose stack).
timeout --kill-after=30 3600 "$tools/python" scripts/image_test.py --standins-made "${#made[@]}" \
  --standin-seconds "$standin_s" "$@"
log "done in $(since "$started") s"
