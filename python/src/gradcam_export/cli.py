"""The command line.

python -m gradcam_export torchvision ARCH [--weights CKPT] [--num-classes N]
    [--layer NAME ...] [--labels FILE] [--input-size N] [--mean A,B,C --std A,B,C]
    [--reshape vit|swin|none] [--name NAME] -o OUT.pt
python -m gradcam_export info FILE.pt
"""

import argparse
import json
import sys
import warnings
from typing import List, Optional, Sequence

import torch

from . import torchvision_models
from .errors import ExportError
from .exporter import IMAGENET_MEAN, IMAGENET_STD, export, read_metadata


def _triple(text: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: three comma-separated numbers") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: three comma-separated numbers (R,G,B)")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gradcam_export",
        description="Export an image classifier as one TorchScript file that gradcam-serve "
        "explains (any CAM method, exact to pytorch-grad-cam).",
    )
    commands = p.add_subparsers(dest="command", required=True)
    tv = commands.add_parser(
        "torchvision",
        help="a torchvision architecture, with your fine-tuned weights",
        description="Build a torchvision classifier, load a checkpoint into it and export it. "
        "Without --layer, the target layer pytorch-grad-cam recommends for the family.",
    )
    tv.add_argument(
        "arch", help="torchvision's name: efficientnet_b0, convnext_tiny, vit_b_16, ..."
    )
    tv.add_argument(
        "--weights",
        metavar="CKPT",
        help="a .pth/.pt state dict or .safetensors file (wrapper prefixes such as module. "
        "and a {'state_dict': ...} container are fine); without it the weights are random",
    )
    tv.add_argument("--num-classes", type=int, help="default: the checkpoint's, else 1000")
    tv.add_argument(
        "--layer",
        action="append",
        metavar="NAME",
        help="a target layer: features.8 or features[-1]; repeat for several taps (the first "
        "is the default)",
    )
    tv.add_argument("--labels", metavar="FILE", help="class names: one per line, or a JSON array")
    tv.add_argument("--input-size", type=int, help="default 224 (299 for inception_v3)")
    tv.add_argument("--mean", type=_triple, default=list(IMAGENET_MEAN), metavar="R,G,B")
    tv.add_argument("--std", type=_triple, default=list(IMAGENET_STD), metavar="R,G,B")
    tv.add_argument(
        "--reshape",
        choices=["vit", "swin", "none"],
        help="how a tap's output becomes a (N, C, H, W) map; default: the family's",
    )
    tv.add_argument("--name", help="the model's name in answers; default: ARCH")
    tv.add_argument("--seed", type=int, default=0, help="seed for random weights (no --weights)")
    tv.add_argument("-o", "--output", required=True, metavar="OUT.pt")
    info = commands.add_parser("info", help="print an exported file's metadata")
    info.add_argument("file")
    return p


def _torchvision(args) -> dict:
    torch.manual_seed(args.seed)
    model, note = torchvision_models.load(args.arch, args.weights, args.num_classes)
    if args.weights is None:
        print(
            f"note: no --weights: {args.arch} has random weights (seed {args.seed}); its "
            "predictions mean nothing",
            file=sys.stderr,
        )
    if note:
        print(f"note: {note}", file=sys.stderr)
    family_layer, family_reshape = torchvision_models.default_layer(args.arch)
    layers = args.layer or [family_layer]
    if not args.layer:
        print(
            f"target layer: {family_layer} (pytorch-grad-cam's recommendation for {args.arch}; "
            "--layer picks another)",
            file=sys.stderr,
        )
    reshape = args.reshape or family_reshape
    input_size = args.input_size or (299 if args.arch == "inception_v3" else 224)
    return export(
        model,
        layers,
        args.output,
        reshape_transform=reshape,
        labels=args.labels,
        input_size=input_size,
        mean=args.mean,
        std=args.std,
        name=args.name or args.arch,
        architecture=args.arch,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "info":
            print(json.dumps(read_metadata(args.file), indent=2))
            return 0
        with warnings.catch_warnings():
            # TorchScript is deprecated in Python, and still the only exported format a C++
            # server can differentiate (docs/model-format.md).
            warnings.filterwarnings("ignore", message=".*TorchScript.*")
            warnings.filterwarnings("ignore", message=".*torch.jit.*")
            metadata = _torchvision(args)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    taps = ", ".join(f"{t['name']} {tuple(t['shape'])}" for t in metadata["taps"])
    print(
        f"wrote {args.output}: {metadata['name']}, {metadata['num_classes']} classes, taps "
        f"{taps}, {metadata['input_size']}x{metadata['input_size']} input (torch "
        f"{metadata['torch_version']}, {metadata['route']})"
    )
    return 0
