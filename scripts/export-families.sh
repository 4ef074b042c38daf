#!/usr/bin/env bash
# Exports torchvision's other classifier families with the exporter's CLI (seeded random
# weights, 10 classes, each family's default layer) and asks the release build for a
# GradCAM++ explanation of each: the exporter's own check (logits, activations and
# gradients against the eager model) and the server's load checks must pass. Not part of
# `make test` (about 5 minutes); README, "Explain any model", lists what it covered.
# Usage: scripts/export-families.sh [ARCH ...]
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(scripts/setup-pyref.sh)
"$py" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall ./python
rm -rf python/build python/src/*.egg-info
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(resnet50 resnext50_32x4d wide_resnet50_2 mobilenet_v2
  efficientnet_v2_s swin_v2_t regnet_x_400mf vgg16 maxvit_t inception_v3 googlenet
  squeezenet1_1 shufflenet_v2_x1_0 mnasnet1_0 alexnet)
failed=0
for arch in "${archs[@]}"; do
  if "$py" -m gradcam_export torchvision "$arch" --num-classes 10 -o "$out/$arch.pt" \
       2>"$out/err" >"$out/said" \
     && target/release/gradcam-serve explain --weights "$out/$arch.pt" docs/chelsea.jpg \
       --method gradcam-plusplus >/dev/null 2>>"$out/err"; then
    echo "ok     $arch: $(cat "$out/said")"
  else
    echo "FAILED $arch: $(tail -3 "$out/err")"
    failed=$((failed + 1))
  fi
  rm -f "$out/$arch.pt"
done
echo "${#archs[@]} families, $failed failed"
[ "$failed" = 0 ]
