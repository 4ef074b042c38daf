#!/usr/bin/env bash
# One overlay per CAM method of the same photo (docs/chelsea.jpg), for the README's table:
# docs/methods/<method>.png, made by the CLI (`gradcam-serve explain --method`).
# Weights: $WEIGHTS (default weights/resnet50.safetensors) when present, else the seeded
# random demo weights, whose maps show the method, not a trained network's reasoning.
# ScoreCAM is allowed here: 1024 forward passes at layer3 (about a minute on two cores).
set -euo pipefail
BIN=${BIN:-target/release/gradcam-serve}
WEIGHTS=${WEIGHTS:-weights/resnet50.safetensors}
LAYER=${LAYER:-layer3}
out=docs/methods
mkdir -p "$out"
extra=()
[ -f "$WEIGHTS" ] || extra=(--demo-weights)
for method in gradcam hirescam gradcam-elementwise gradcam-plusplus xgradcam layercam \
  eigencam eigengradcam ablationcam scorecam fem; do
  "$BIN" explain docs/chelsea.jpg --weights "$WEIGHTS" "${extra[@]}" --method "$method" \
    --allow-scorecam \
    --layer "$LAYER" --out "$out/$method.png" >/dev/null
  echo "$out/$method.png"
done
