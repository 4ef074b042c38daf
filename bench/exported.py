"""`make bench`'s exported-model step, the Python side: a torchvision classifier with
seeded weights exported by gradcam_export (what the server then loads), and
pytorch-grad-cam's GradCAM on the same model in process, same image and threads.

Usage: python exported.py --arch efficientnet_b0 --out DIR --image IMG [--threads N]
       [--runs N] [--weights RESNET.safetensors]
Prints one JSON object: the file written, pytorch-grad-cam's latency, PyTorch's forward.
"""
import argparse
import json
import os
import statistics
import time
import warnings

import numpy as np
import torch
import torchvision
from PIL import Image
from pytorch_grad_cam import GradCAM

import gradcam_export
from gradcam_export import torchvision_models

RESHAPES = {
    "vit": lambda t: t[:, 1:, :].reshape(t.size(0), 14, 14, t.size(2)).permute(0, 3, 1, 2),
    "swin": lambda t: t.permute(0, 3, 1, 2),
}


def summary(values):
    values = sorted(values)
    return {"n": len(values), "p50": statistics.median(values), "min": values[0],
            "mean": statistics.fmean(values)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--weights", help="a state dict to load (the native path's weights)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.arch, weights=None).eval()
    if args.weights:
        from safetensors.torch import load_file
        model.load_state_dict(load_file(args.weights), strict=False)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    if head.weight.abs().sum() == 0:  # ViT's head starts at zero: every gradient would be 0
        torch.nn.init.normal_(head.weight, std=0.01)
    layer_name, reshape = torchvision_models.default_layer(args.arch)
    layer = model.get_submodule(gradcam_export.resolve_layer_name(model, layer_name))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{args.arch}.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gradcam_export.export(model, [layer], path, reshape_transform=reshape,
                              name=args.arch, architecture=args.arch)
    rgb = np.asarray(Image.open(args.image).convert("RGB").resize((224, 224)), np.float32) / 255
    mean, std = np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225])
    x = torch.from_numpy(((rgb - mean) / std).transpose(2, 0, 1)).unsqueeze(0).contiguous()
    cam = GradCAM(model=model, target_layers=[layer], reshape_transform=RESHAPES.get(reshape))

    def timed(f):
        for _ in range(2):
            f()
        out = []
        for _ in range(args.runs):
            t = time.perf_counter()
            f()
            out.append((time.perf_counter() - t) * 1e3)
        return summary(out)

    def forward():
        with torch.no_grad():
            model(x)

    grad_cam = timed(lambda: cam(input_tensor=x, targets=None))
    print(json.dumps({
        "arch": args.arch, "file": path, "layer": layer_name, "threads": args.threads,
        "torch": torch.__version__, "pytorch_grad_cam_ms": grad_cam,
        "torch_forward_ms": timed(forward),
    }))


if __name__ == "__main__":
    main()
