"""ONNX Runtime's plain forward, on request, for bench/run.py's "trunk speed" section (issue
14, goals 1 and 4): the peer our layer4 explanation is held against.

Exports the same weights with `torch.onnx.export` (once, into target/bench/), then answers
each stdin line "1 RUNS" with one JSON line {"ms": [...]}, after a first line {"threads": N},
like `gradcam-bench engine-loop`. CPU provider, all graph optimisations,
intra_op_num_threads = --threads, inter_op_num_threads = 1.

Usage: python ort_loop.py --weights W.safetensors --threads N --onnx OUT.onnx
"""
import argparse
import json
import os
import sys
import time

import numpy as np


def export(weights, path):
    import torch
    import torchvision
    from safetensors.torch import load_file

    model = torchvision.models.resnet50()
    state = {k: v for k, v in load_file(weights).items()}
    model.load_state_dict(state, strict=False)
    model.eval()
    x = torch.zeros(1, 3, 224, 224)
    torch.onnx.export(model, x, path, dynamo=False, opset_version=17)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--onnx", required=True)
    a = p.parse_args()
    import onnxruntime as ort

    if not os.path.exists(a.onnx):
        export(a.weights, a.onnx)
    options = ort.SessionOptions()
    options.intra_op_num_threads = a.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(a.onnx, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    print(json.dumps({"threads": a.threads, "onnxruntime": ort.__version__}), flush=True)
    for line in sys.stdin:
        batch, runs = map(int, line.split())
        if batch != 1:
            raise SystemExit(f"only batch 1 is measured here, got {line!r}")
        ms = []
        for _ in range(runs):
            t = time.perf_counter()
            session.run(None, {name: x})
            ms.append((time.perf_counter() - t) * 1e3)
        print(json.dumps({"ms": ms}), flush=True)


if __name__ == "__main__":
    main()
