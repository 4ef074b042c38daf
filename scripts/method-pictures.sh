#!/usr/bin/env bash
# One overlay per CAM method of the same photo (docs/chelsea.jpg), for the README's table:
# docs/methods/<method>.png, made by the CLI (`gradcam-serve explain --method`).
# Weights: $WEIGHTS (default weights/resnet50.safetensors) when present, else the seeded
# random demo weights, whose maps show the method, not a trained network's reasoning.
# ScoreCAM is allowed here: 1024 forward passes at layer3 (about a minute on two cores).
# RefineCAM multiplies its base method's maps at layer2, layer3 and layer4 (made for early
# layers). DFF factorizes layer4, the layer whose concepts the classifier can name.
set -euo pipefail
BIN=${BIN:-target/release/gradcam-serve}
WEIGHTS=${WEIGHTS:-weights/resnet50.safetensors}
LAYER=${LAYER:-layer3}
out=docs/methods
mkdir -p "$out"
extra=()
[ -f "$WEIGHTS" ] || extra=(--demo-weights)
# Every method the binary runs, as GET /model lists them (no list here to fall behind);
# METHODS="a b" makes only those.
all=$("$BIN" model --weights "$WEIGHTS" "${extra[@]}" --allow-scorecam |
  python3 -c 'import json, sys; print(" ".join(m["name"] for m in json.load(sys.stdin)["methods"]))')
for method in ${METHODS:-$all}; do
  "$BIN" explain docs/chelsea.jpg --weights "$WEIGHTS" "${extra[@]}" --method "$method" \
    --allow-scorecam \
    --layer "$(case "$method" in
      refinecam) echo layer2,layer3,layer4 ;;
      dff) echo layer4 ;;
      *) echo "$LAYER" ;;
    esac)" \
    --out "$out/$method.png" >/dev/null
  echo "$out/$method.png"
done
