"""Reference answers from pytorch-grad-cam for exported models (tests/api/any_model.rs).

Usage: python make_exported.py PARITY_DIR --old-python PYTHON [--only NAME ...]

Reads PARITY_DIR/resnet50-random.safetensors (make_reference.py) and writes PARITY_DIR/exported/:
  case-0.png, case-1.png       the inputs (make_reference.py's first two images, 224x224)
  <name>.pt                    the model exported by gradcam_export: torchvision's through the
                               package's CLI from a checkpoint saved here (<name>.ckpt.*, in
                               the formats users have: safetensors, a .pth state dict, wrapper
                               prefixes, {"state_dict": ...}), the custom two-branch module
                               through the Python API (and once more with route="trace", and
                               once by an older torch: --old-python, export_with.py)
  <name>-<n>-overlay.png       show_cam_on_image of the case's returned map
  reference.json               per model: file, classes, labels, default and extra layers, and
                               per case (image, method, layers, target): the top-5, the
                               probabilities, the raw map pytorch-grad-cam hands to
                               scale_cam_image (one layer), else the map `cam()` returns
                               (several layers, 224x224), and the overlay
  resnet50.pt                  make_reference.py's ResNet-50 exported, for native vs exported

Every model is made by its constructor with seeded random weights, batch-norm statistics
measured on the images and then moved away from them, and the classifier rescaled so that its logits are spread enough for a
well-defined top-5 (as make_reference.py does for the ResNets). Grad-CAM top-1 and a forced
target on every model; GradCAM++, EigenCAM, AblationCAM, FinerCAM and two layers at once on
mobilenet_v3_large, regnet_y_400mf and the custom module; ShapleyCAM where a smooth
activation follows the tap (efficientnet_b0, convnext_tiny).
"""
import argparse
import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

from pytorch_grad_cam import AblationCAM, EigenCAM, FinerCAM, GradCAM, GradCAMPlusPlus, ShapleyCAM
from pytorch_grad_cam.ablation_layer import AblationLayerVit
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import gradcam_export
from gradcam_export import torchvision_models
from make_reference import RawMapRecorder, check_top5, make_images, to_input
from two_branch import TwoBranch

METHODS = {
    "gradcam": GradCAM,
    "gradcam-plusplus": GradCAMPlusPlus,
    "eigencam": EigenCAM,
    "ablationcam": AblationCAM,
    "shapleycam": ShapleyCAM,
    "finercam": FinerCAM,
}


def vit_reshape(tensor):
    """pytorch-grad-cam's vit_reshape_transform for torchvision's 14x14 grid."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), 14, 14, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def swin_reshape(tensor):
    """torchvision's Swin keeps (N, H, W, C): channels first."""
    return tensor.permute(0, 3, 1, 2)


# name: (constructor, classes, checkpoint, reshape, layers [default first], methods, cli args)
#   smooth: a smooth activation (SiLU, GELU) follows the tap, so ShapleyCAM's Hessian-vector
#   product is not zero as it is behind ReLUs: a ShapleyCAM case (not on vit_b_16: torch's
#   CPU attention has no second derivative, and pytorch-grad-cam's ShapleyCAM fails there)
#   checkpoint: how the weights are saved for the CLI: safetensors | pth | pth-wrapped |
#   safetensors-prefixed (a wrapper's `model.`/`backbone.` prefix on every name)
SPECS = {
    "efficientnet_b0": dict(classes=1000, checkpoint="safetensors", smooth=True),
    "mobilenet_v3_large": dict(classes=10, checkpoint="pth-wrapped", labels=True,
                               extra_layer="features[-4]", methods=True),
    "convnext_tiny": dict(classes=1000, checkpoint="pth", smooth=True),
    "densenet121": dict(classes=10, checkpoint="safetensors-prefixed", num_classes_flag=False),
    "regnet_y_400mf": dict(classes=10, checkpoint="pth", labels=True,
                           extra_layer="trunk_output[-2]", methods=True),
    "vgg16_bn": dict(classes=10, checkpoint="safetensors"),
    "vit_b_16": dict(classes=1000, checkpoint="pth", reshape="vit"),
    "swin_t": dict(classes=1000, checkpoint="safetensors-prefixed", reshape="swin"),
    "custom": dict(classes=7, methods=True),
    "custom-traced": dict(classes=7),
    # Exported by an older torch (--old-python), served by libtorch 2.13.
    "custom-old-torch": dict(classes=7),
}
LABELS = ["normal", "pneumonia", "effusion", "cardiomegaly", "atelectasis", "pneumothorax",
          "consolidation", "edema", "nodule", "fibrosis"]


def randomise(model, seed, images):
    """Batch-norm statistics measured on the test images (so that a random network's
    activations neither vanish nor explode, and its output depends on its input), then
    moved and scaled away from them, with random affine parameters (code that ignored any
    of them would be caught); the classifier made random (ViT's starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if norms:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batches
        model.train()
        with torch.no_grad():
            for im in images:
                model(torch.cat([to_input(im)[1], to_input(im[:, ::-1].copy())[1]]))
        model.eval()
    with torch.no_grad():
        for m in norms:
            n = m.num_features
            m.running_mean.add_(torch.randn(n, generator=g) * 0.05 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(n, generator=g) * 0.45 + 0.8)
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.02)
        head.bias.copy_(torch.randn(head.bias.shape, generator=g) * 0.01)
    return head


def spread_logits(model, head, images):
    """Rescales the classifier so that the logits on the test images have a standard
    deviation of about 2: a softmax of distinct values, neither one 1.0 nor all equal."""
    with torch.no_grad():
        logits = torch.cat([model(to_input(im)[1]) for im in images])
        scale = 2.0 / max(float(logits.std()), 1e-12)
        head.weight.mul_(scale)
        head.bias.mul_(scale)


def build(name, spec, images, seed):
    torch.manual_seed(seed)
    if name.startswith("custom"):
        model = TwoBranch(spec["classes"])
    else:
        model = torchvision.models.get_model(name, weights=None, num_classes=spec["classes"])
    model.eval()
    head = randomise(model, seed + 1, images)
    spread_logits(model, head, images)
    return model


def save_checkpoint(model, kind, path_base):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if kind == "safetensors":
        path = path_base + ".safetensors"
        save_file(state, path)
    elif kind == "safetensors-prefixed":
        path = path_base + ".safetensors"
        save_file({"backbone." + k: v for k, v in state.items()}, path)
    elif kind == "pth":
        path = path_base + ".pth"
        torch.save(state, path)
    elif kind == "pth-wrapped":
        path = path_base + ".pth"
        torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}},
                   path)
    else:
        raise ValueError(kind)
    return path


def layer_module(model, text):
    return model.get_submodule(gradcam_export.resolve_layer_name(model, text))


def export(name, spec, model, out, old_python):
    """The model exported as a user would: the CLI for torchvision's, the Python API for the
    custom module (under the older torch too). Returns the tap names, default first."""
    path = os.path.join(out, f"{name}.pt")
    if name == "custom-old-torch":
        checkpoint = os.path.join(out, f"{name}.ckpt.pth")
        torch.save(model.state_dict(), checkpoint)
        here = os.path.dirname(os.path.abspath(__file__))
        subprocess.run([old_python, os.path.join(here, "export_with.py"), checkpoint, path],
                       check=True)
        return ["fuse", "left"]
    labels = None
    if spec.get("labels"):
        labels = os.path.join(out, f"{name}-labels.txt")
        with open(labels, "w") as f:
            f.write("\n".join(LABELS[: spec["classes"]]) + "\n")
    if name.startswith("custom"):
        layers = [model.fuse, model.left]
        gradcam_export.export(model, layers, path, labels=labels, name=name,
                              route="trace" if name.endswith("traced") else "auto")
        return ["fuse", "left"]
    checkpoint = save_checkpoint(model, spec["checkpoint"], os.path.join(out, f"{name}.ckpt"))
    command = [sys.executable, "-m", "gradcam_export", "torchvision", name, "--weights",
               checkpoint, "-o", path]
    if spec.get("num_classes_flag", True):
        command += ["--num-classes", str(spec["classes"])]
    if labels:
        command += ["--labels", labels]
    default = torchvision_models.default_layer(name)[0]
    layers = [default] + ([spec["extra_layer"]] if "extra_layer" in spec else [])
    if "extra_layer" in spec:
        for layer in layers:
            command += ["--layer", layer]
    subprocess.run(command, check=True)
    return [gradcam_export.resolve_layer_name(model, l) for l in layers]


def reshape_of(spec):
    return {"vit": vit_reshape, "swin": swin_reshape}.get(spec.get("reshape"))


def case(model, spec, recorder, out, name, images, index, image, method, layers, target):
    rgb_float, x = to_input(images[image])
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)[0]
    top5 = torch.topk(probs, 5).indices.tolist()
    kwargs = {}
    if spec.get("reshape"):
        kwargs["reshape_transform"] = reshape_of(spec)
        if method == "ablationcam":
            kwargs["ablation_layer"] = AblationLayerVit()
    cam = METHODS[method](model=model, target_layers=[model.get_submodule(l) for l in layers],
                          **kwargs)
    recorder.maps.clear()
    if method == "finercam":
        returned = cam(input_tensor=x, targets=None, target_idx=target)[0]
        cam = cam.base_cam
    else:
        t = None if target is None else [ClassifierOutputTarget(target)]
        returned = cam(input_tensor=x, targets=t)[0]
    cam.activations_and_grads.release()
    raw = recorder.maps[0][0] if len(layers) == 1 else None
    overlay = f"{name}-{index}-overlay.png"
    Image.fromarray(show_cam_on_image(rgb_float, returned, use_rgb=True)).save(
        os.path.join(out, overlay))
    return {
        "image": f"case-{image}.png",
        "method": method,
        "layers": layers,
        "target": target,
        "explained_class": top5[0] if target is None else target,
        "top5": top5,
        "probabilities": probs.tolist(),
        "raw_map": None if raw is None else np.float32(raw).tolist(),
        "returned_map": None if raw is not None else np.float32(returned).tolist(),
        "overlay": overlay,
    }


def model_entry(name, spec, images, recorder, out, seed, old_python):
    start = time.perf_counter()
    model = build(name, spec, images, seed)
    for i in range(2):
        check_top5(name, f"case-{i}", torch.softmax(model(to_input(images[i])[1]), 1)[0])
    layers = export(name, spec, model, out, old_python)
    with torch.no_grad():
        forced = torch.topk(model(to_input(images[1])[1])[0], 5).indices.tolist()[3]
    plan = [("gradcam", layers[:1], 0, None), ("gradcam", layers[:1], 1, forced)]
    if spec.get("methods"):
        plan += [("gradcam-plusplus", layers[:1], 0, None),
                 ("eigencam", layers[:1], 1, forced),
                 ("ablationcam", layers[:1], 0, None),
                 ("gradcam", layers, 0, None),
                 ("finercam", layers[:1], 1, forced)]
    if spec.get("smooth"):
        plan += [("shapleycam", layers[:1], 0, None), ("shapleycam", layers[:1], 1, forced)]
    cases = [case(model, spec, recorder, out, name, images, n, image, method, ls, target)
             for n, (method, ls, image, target) in enumerate(plan)]
    print(f"exported reference: {name}: {len(cases)} cases ({time.perf_counter() - start:.1f} s)",
          flush=True)
    return {
        "name": name,
        "file": f"{name}.pt",
        "num_classes": spec["classes"],
        "labels": LABELS[: spec["classes"]] if spec.get("labels") else None,
        "layers": layers,
        "cases": cases,
    }


def rewrite(source, target, change):
    """A copy of the archive `source` with `change(name, bytes) -> bytes` applied to each
    entry (stored, as PyTorch writes them)."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, change(info.filename, src.read(info.filename)))


def with_metadata(source, target, edit):
    def change(name, data):
        if name.endswith("/extra/gradcam.json"):
            metadata = json.loads(data)
            edit(metadata)
            return json.dumps(metadata).encode()
        return data

    rewrite(source, target, change)


def refusals(out):
    """Files the server must refuse at start, and what its message must say."""
    custom = os.path.join(out, "custom.pt")
    model = TwoBranch(7).eval()
    torch.save(model.state_dict(), os.path.join(out, "refuse-pickle.pth"))
    torch.jit.script(model).save(os.path.join(out, "refuse-plain-script.pt"))
    with open(custom, "rb") as f:
        whole = f.read()
    with open(os.path.join(out, "refuse-truncated.pt"), "wb") as f:
        f.write(whole[: len(whole) // 2])
    with open(os.path.join(out, "refuse-unknown.bin"), "wb") as f:
        f.write(b"GIF89a not a model at all")

    def tap_shape(m):
        m["taps"][0]["shape"] = [99, 28, 28]

    def labels(m):
        m["labels"] = ["a", "b", "c"]

    def classes(m):
        m["num_classes"] = 9

    with_metadata(custom, os.path.join(out, "refuse-tap-shape.pt"), tap_shape)
    with_metadata(custom, os.path.join(out, "refuse-labels.pt"), labels)
    with_metadata(custom, os.path.join(out, "refuse-classes.pt"), classes)

    def newer(name, data):
        if name.endswith("/extra/gradcam.json"):
            metadata = json.loads(data)
            metadata["torch_version"] = "2.99.0"
            return json.dumps(metadata).encode()
        if name.count("/") == 1 and name.endswith("/version"):
            return b"99\n"
        return data

    rewrite(custom, os.path.join(out, "refuse-newer.pt"), newer)
    return [
        {"file": "refuse-pickle.pth", "what": "a torch.save state dict",
         "says": ["PyTorch pickle checkpoint", "python -m gradcam_export"]},
        {"file": "refuse-plain-script.pt", "what": "a plain torch.jit.script file",
         "says": ["without gradcam-serve's metadata", "gradcam_export"]},
        {"file": "refuse-truncated.pt", "what": "a file cut short",
         "says": ["cannot be read", "cut short"]},
        {"file": "refuse-unknown.bin", "what": "not a model",
         "says": ["neither a safetensors state dict", "TorchScript"]},
        {"file": "refuse-tap-shape.pt", "what": "a tap shape the model does not give",
         "says": ["contradicts", "tap fuse says [99, 28, 28]"]},
        {"file": "refuse-labels.pt", "what": "labels that do not fit the classes",
         "says": ["3 labels for 7 classes"]},
        {"file": "refuse-classes.pt", "what": "a class count the model does not have",
         "says": ["contradicts", "says 9 classes"]},
        {"file": "refuse-newer.pt", "what": "a file from a newer torch",
         "says": ["torch 2.99.0", "libtorch 2.13.0", "export it with torch 2.13.0 or older"]},
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("parity_dir")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--old-python", required=True,
                        help="a python with an older torch and gradcam_export")
    args = parser.parse_args()
    start = time.perf_counter()
    torch.set_num_threads(2)
    out = os.path.join(args.parity_dir, "exported")
    os.makedirs(out, exist_ok=True)
    recorder = RawMapRecorder()
    images = make_images()[:2]
    for i, rgb in enumerate(images):
        Image.fromarray(rgb).save(os.path.join(out, f"case-{i}.png"))
    models = []
    for seed, (name, spec) in enumerate(SPECS.items()):
        if args.only and name not in args.only:
            continue
        # The custom module's other exports are the same model, exported otherwise.
        same = 1000 + list(SPECS).index("custom")
        models.append(model_entry(name, spec, images, recorder, out,
                                  same if name.startswith("custom") else 1000 + seed,
                                  args.old_python))
    # make_reference.py's ResNet-50, exported: the native path must give the same maps.
    subprocess.run([sys.executable, "-m", "gradcam_export", "torchvision", "resnet50",
                    "--weights", os.path.join(args.parity_dir, "resnet50-random.safetensors"),
                    "-o", os.path.join(out, "resnet50.pt")], check=True)
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({"models": models, "torch": torch.__version__, "refusals": refusals(out),
                   "native_resnet50": {"weights": "../resnet50-random.safetensors",
                                       "exported": "resnet50.pt"}}, f)
    print(f"exported reference: {len(models)} models in {out} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
