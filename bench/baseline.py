"""Python baseline for `make bench`: pytorch-grad-cam and plain PyTorch on the same weights,
the same input image and the same torch thread count as the Rust engine benchmark.

Measures, batch 1, 224x224, after warm-up:
  gradcam   GradCAM(model, target_layers=[model.layer4[-1]])(input_tensor=x), targets=None
            (its top-1 class), i.e. forward + full autograd backward + its map post-processing
  forward   model(x) under torch.no_grad(), eval mode: PyTorch's eager forward-only prediction

Usage: python baseline.py --weights W.safetensors --image IMG.jpg --threads N [--runs R]
       python baseline.py ... --forward-loop   (forward-only on request, for bench/run.py's
       paired rounds: each stdin line "1 RUNS" is answered by one JSON line of latencies)
Prints one JSON document on stdout.
"""
import argparse
import json
import sys
import time

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file

from pytorch_grad_cam import GradCAM

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def summarise(values):
    v = np.asarray(values, dtype=np.float64)
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "min": float(v.min()),
        "p50": float(np.percentile(v, 50)),
        "p90": float(np.percentile(v, 90)),
        "p99": float(np.percentile(v, 99)),
        "max": float(v.max()),
    }


def load_model(path):
    model = torchvision.models.resnet50(weights=None)
    missing, unexpected = model.load_state_dict(load_file(path), strict=False)
    # The Rust side does not write the batch-norm step counters; inference does not use them.
    bad = [k for k in missing if not k.endswith("num_batches_tracked")]
    if bad or unexpected:
        raise SystemExit(f"weights mismatch: missing {bad[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def load_input(path):
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    if rgb.shape[:2] != (224, 224):
        raise SystemExit(f"{path}: expected a 224x224 image, got {rgb.shape[1]}x{rgb.shape[0]}")
    x = (rgb - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def timed(fn, runs, warmup):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--forward-loop", action="store_true")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    # Two copies: GradCAM hooks the model it wraps, and the forward-only figure is of a model
    # without hooks, as a plain prediction service would run it.
    plain = load_model(a.weights)
    x = load_input(a.image)

    def forward():
        with torch.no_grad():
            return plain(x)

    if a.forward_loop:
        print(json.dumps({"threads": torch.get_num_threads()}), flush=True)
        for line in sys.stdin:
            batch, runs = map(int, line.split())
            if batch != 1:
                raise SystemExit(f"only batch 1 is measured here, got {line!r}")
            print(json.dumps({"ms": timed(forward, runs, 0)}), flush=True)
        return

    model = load_model(a.weights)
    cam = GradCAM(model=model, target_layers=[model.layer4[-1]])

    def gradcam():
        return cam(input_tensor=x, targets=None)

    # Interleaved like the Rust side: neither measurement always runs second.
    for _ in range(a.warmup):
        forward()
        gradcam()
    fwd, gc = [], []
    for i in range(a.runs):
        for step in range(2):
            if (i + step) % 2 == 0:
                fwd += timed(forward, 1, 0)
            else:
                gc += timed(gradcam, 1, 0)
    g = summarise(gc)
    f = summarise(fwd)
    print(json.dumps({
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "grad_cam": __import__("importlib.metadata").metadata.version("grad-cam"),
        "threads": torch.get_num_threads(),
        "runs": a.runs,
        "warmup": a.warmup,
        "gradcam_ms": g,
        # Per second from the median latency, as the Rust side computes it.
        "gradcam_per_s": 1e3 / g["p50"],
        "forward_ms": f,
        "forward_per_s": 1e3 / f["p50"],
    }, indent=2))


if __name__ == "__main__":
    main()
