"""Reference answers from pytorch-grad-cam, for the parity test (tests/core/parity.rs).

Writes into OUT_DIR:
  resnet50-random.safetensors  seeded random torchvision ResNet-50, with non-default
                               batch-norm statistics (so code that ignored them would fail)
  case-N.png                   224x224 RGB inputs (no resizing on either side)
  case-N-overlay.png           show_cam_on_image(rgb, GradCAM(...)(x), use_rgb=True)
  reference.json               per case: top-5, probabilities, target, raw 7x7 map; and
                               OpenCV's COLORMAP_JET table as RGB

and, for other ResNet-family architectures and target layers (reference.json "models"):
  <arch>-random.safetensors    seeded random torchvision <arch> (state dict, batch-norm
                               statistics randomised as for ResNet-50); resnet50 reuses
                               resnet50-random.safetensors
  resnet18-labels.txt          10 class names, one a line, for the 10-class resnet18
  <arch>-<layer>-case-N-overlay.png
                               show_cam_on_image for GradCAM at <layer> of <arch>

  methods-<arch>.json, .f32    every CAM method (resnet50, resnet18): methods_reference.py
  dff.json, dff.f32            Deep Feature Factorization's concepts: dff_reference.py
  metrics.json, metrics.f32    faithfulness scores (ROAD, confidence, ARCC): metrics_reference.py

  reference.json "models": a list, one entry per architecture:
    {"architecture", "weights", "labels" (file name or null), "num_classes",
     "cases": [{"image", "layer", "target", "explained_class", "top5", "probabilities",
                "raw_map" ([h][w]: 7x7 at layer4, 14x14 at layer3/layer3.1, 28x28 at
                layer2), "overlay"}]}
  Layers: "layer4" = model.layer4[-1], "layer3" = model.layer3[-1],
          "layer2" = model.layer2[-1], "layer3.1" = model.layer3[1].
  Cases per (architecture, layer): case-0.png with target null (top-1), and case-1.png
  with target = that model's top5[3] for case-1.png.

The raw map is what pytorch-grad-cam computes before `scale_cam_image`: ReLU(sum_k w_k A_k).
At layer4 the script asserts it equals ReLU(fc.weight[c] . A) / (h*w) (guards the reference).
Usage: python make_reference.py OUT_DIR
"""
import json
import os
import sys
import time

import cv2
import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

import pytorch_grad_cam.base_cam as base_cam
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from dff_reference import dff_reference
from metrics_reference import metrics_reference
from methods_reference import methods_reference

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# Architectures for reference.json "models": constructor name -> (num_classes, torch seed,
# batch-norm generator seed, fc.weight scale). Random trunks give logits of very different
# sizes: ResNet-50's default fc gives logits in the hundreds and a softmax of one 1.0 and
# 999 underflowed zeros, whose order means nothing, while ResNeXt's are below one and its
# softmax nearly uniform. Each scale makes the top-5 distinct probabilities (check_top5).
ARCHITECTURES = {
    "resnet18": (10, 1818, 18, 1.0),
    "resnet34": (1000, 3434, 34, 1.0 / 10.0),
    "wide_resnet50_2": (1000, 5022, 52, 1.0 / 80.0),
    "resnext50_32x4d": (1000, 5032, 32, 8.0),
    "resnet50": (1000, 1234, 99, 1.0 / 150.0),  # the model of make_model()
}
LAYERS = {
    "layer4": lambda m: m.layer4[-1],
    "layer3": lambda m: m.layer3[-1],
    "layer2": lambda m: m.layer2[-1],
    "layer3.1": lambda m: m.layer3[1],
}
RESNET18_LABELS = [
    "normal", "pneumonia", "effusion", "cardiomegaly", "atelectasis",
    "pneumothorax", "consolidation", "edema", "nodule", "fibrosis",
]


def build_model(arch, num_classes, seed, bn_seed, fc_scale):
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    g = torch.Generator().manual_seed(bn_seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
        model.fc.weight.mul_(fc_scale)
    return model.eval()


def make_model():
    return build_model("resnet50", *ARCHITECTURES["resnet50"])


def save_model(model, path):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, path)


def make_images():
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:224, 0:224].astype(np.float32) / 223.0
    images = []
    # Smooth colour gradients with a bright disc: structure the network responds to.
    for i in range(4):
        cx, cy = rng.uniform(0.2, 0.8, size=2)
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < 0.03 + 0.02 * i).astype(np.float32)
        img = np.stack([xx, yy, 1 - xx], axis=-1) * 0.6 + disc[..., None] * rng.uniform(0.2, 0.4, 3)
        images.append(img)
    # Noise and stripes.
    images.append(rng.uniform(0, 1, size=(224, 224, 3)).astype(np.float32))
    stripes = (np.sin(xx * 40) > 0).astype(np.float32)
    images.append(np.stack([stripes, 1 - stripes, yy], axis=-1))
    return [np.uint8(np.clip(img, 0, 1) * 255) for img in images]


def to_input(rgb):
    rgb_float = rgb.astype(np.float32) / 255.0
    # Contiguous NCHW, as pytorch-grad-cam's preprocess_image (ToTensor) makes it. (A bare
    # numpy transpose would be channels-last in memory, and libtorch would then run
    # other convolution kernels, equal only to about 1e-6.)
    x = torch.from_numpy(((rgb_float - MEAN) / STD).transpose(2, 0, 1)).unsqueeze(0).contiguous()
    return rgb_float, x


class RawMapRecorder:
    """Records the maps pytorch-grad-cam passes to scale_cam_image (the raw ReLU'd maps)."""

    def __init__(self):
        self.maps = []
        original_scale = base_cam.scale_cam_image

        def recording_scale(cam, target_size=None):
            self.maps.append(np.array(cam))
            return original_scale(cam, target_size)

        base_cam.scale_cam_image = recording_scale


def softmax(model, x):
    with torch.no_grad():
        return torch.softmax(model(x), dim=1)[0]


def forward_with_layer4(model, x):
    """Softmax probabilities and the activations A of model.layer4[-1] (forward hook)."""
    acts = []
    handle = model.layer4[-1].register_forward_hook(lambda m, i, o: acts.append(o.detach()))
    try:
        probs = softmax(model, x)
    finally:
        handle.remove()
    return probs, acts[0][0]


def explain(cam, recorder, rgb_float, x, target):
    """GradCAM for one image: (raw map before scale_cam_image, overlay)."""
    recorder.maps.clear()
    grayscale = cam(input_tensor=x, targets=None if target is None else [ClassifierOutputTarget(target)])[0]
    raw = recorder.maps[0][0]
    return raw, show_cam_on_image(rgb_float, grayscale, use_rgb=True)


def check_top5(arch, name, probs):
    """The top-5 must be distinct probabilities, not one 1.0 and underflowed zeros, and
    apart by 0.5 % (a logit margin of 0.005, far above float32 differences)."""
    p = torch.topk(probs, 5).values.tolist()
    print(f"  {arch} {name} top-5 probabilities: " + " ".join(f"{v:.4g}" for v in p))
    assert p[0] < 0.99 and p[4] > 1e-6, (arch, name, p)
    assert all(a > b * 1.005 for a, b in zip(p, p[1:])), (arch, name, p)


def check_layer4_map(model, a, cls, raw):
    """At layer4, Grad-CAM's map is ReLU(fc.weight[c] . A) / (h*w): avgpool then fc."""
    with torch.no_grad():
        h, w = a.shape[1:]
        expected = torch.relu(torch.einsum("k,khw->hw", model.fc.weight[cls], a)).numpy() / (h * w)
    assert raw.shape == expected.shape, (raw.shape, expected.shape)
    scale = max(float(np.abs(expected).max()), 1e-12)
    err = float(np.abs(raw - expected).max()) / scale
    assert err <= 1e-4, f"layer4 map differs from ReLU(fc.weight[c] . A)/(h*w): {err:.2e}"


def reference_cases(out_dir, model, recorder, images):
    """The original reference: ResNet-50 at layer4, all images, alternating targets."""
    cam = GradCAM(model=model, target_layers=[model.layer4[-1]])
    cases = []
    for i, rgb in enumerate(images):
        name = f"case-{i}.png"
        Image.fromarray(rgb).save(os.path.join(out_dir, name))
        rgb_float, x = to_input(rgb)
        probs = softmax(model, x)
        top5 = torch.topk(probs, 5).indices.tolist()
        # Alternate: the top-1 (no target) and an explicit other class.
        target = None if i % 2 == 0 else top5[3]
        raw, overlay = explain(cam, recorder, rgb_float, x, target)
        Image.fromarray(overlay).save(os.path.join(out_dir, f"case-{i}-overlay.png"))
        cases.append({
            "image": name,
            "overlay": f"case-{i}-overlay.png",
            "target": target,
            "explained_class": target if target is not None else top5[0],
            "top5": top5,
            "probabilities": probs.tolist(),
            "raw_map": raw.tolist(),
        })
    cam.activations_and_grads.release()
    return cases


def model_entry(out_dir, arch, model, recorder, images):
    """reference.json "models" entry for one architecture: every layer, case-0 and case-1."""
    num_classes = ARCHITECTURES[arch][0]
    weights = f"{arch}-random.safetensors"
    if arch != "resnet50":  # resnet50-random.safetensors is written by the original reference
        save_model(model, os.path.join(out_dir, weights))
    labels = None
    if arch == "resnet18":
        labels = "resnet18-labels.txt"
        with open(os.path.join(out_dir, labels), "w") as f:
            f.write("".join(f"{name}\n" for name in RESNET18_LABELS))
        assert len(RESNET18_LABELS) == num_classes
    # case-0: the top-1 (no target); case-1: that model's top5[3] for case-1.png.
    inputs = []
    for i in (0, 1):
        rgb_float, x = to_input(images[i])
        probs, a = forward_with_layer4(model, x)
        check_top5(arch, f"case-{i}", probs)
        top5 = torch.topk(probs, 5).indices.tolist()
        inputs.append((i, rgb_float, x, probs, a, top5, None if i == 0 else top5[3]))
    cases = []
    for layer, pick in LAYERS.items():
        cam = GradCAM(model=model, target_layers=[pick(model)])
        for i, rgb_float, x, probs, a, top5, target in inputs:
            raw, overlay = explain(cam, recorder, rgb_float, x, target)
            explained = target if target is not None else top5[0]
            if layer == "layer4":
                check_layer4_map(model, a, explained, raw)
            overlay_name = f"{arch}-{layer}-case-{i}-overlay.png"
            Image.fromarray(overlay).save(os.path.join(out_dir, overlay_name))
            cases.append({
                "image": f"case-{i}.png",
                "layer": layer,
                "target": target,
                "explained_class": explained,
                "top5": top5,
                "probabilities": probs.tolist(),
                "raw_map": raw.tolist(),
                "overlay": overlay_name,
            })
        cam.activations_and_grads.release()
    return {
        "architecture": arch,
        "weights": weights,
        "labels": labels,
        "num_classes": num_classes,
        "cases": cases,
    }


def main(out_dir):
    start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(2)
    recorder = RawMapRecorder()
    images = make_images()

    resnet50 = make_model()
    save_model(resnet50, os.path.join(out_dir, "resnet50-random.safetensors"))
    cases = reference_cases(out_dir, resnet50, recorder, images)
    print(f"reference: {len(cases)} resnet50 layer4 cases ({time.perf_counter() - start:.1f} s)")

    models = []
    resnet18 = None
    for arch, spec in ARCHITECTURES.items():
        t = time.perf_counter()
        model = resnet50 if arch == "resnet50" else build_model(arch, *spec)
        if arch == "resnet18":
            resnet18 = model
        models.append(model_entry(out_dir, arch, model, recorder, images))
        print(f"reference: {arch}: {len(models[-1]['cases'])} cases ({time.perf_counter() - t:.1f} s)")

    jet = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), cv2.COLORMAP_JET)
    reference = {
        "weights": "resnet50-random.safetensors",
        "cases": cases,
        "jet_rgb": jet[:, 0, ::-1].tolist(),
        "versions": {"torch": torch.__version__, "opencv": cv2.__version__},
        "models": models,
    }
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump(reference, f)

    # Every CAM method (tests/core/methods_parity.rs): methods-<arch>.json and .f32.
    by_arch = {m["architecture"]: m for m in models}
    for arch, model in (("resnet50", resnet50), ("resnet18", resnet18)):
        methods_reference(out_dir, arch, by_arch[arch]["weights"], model, images, to_input,
                          recorder)
    # Deep Feature Factorization (its own cases: concepts, not maps): dff.json and .f32.
    dff_reference(out_dir, {"resnet50": (by_arch["resnet50"]["weights"], resnet50),
                            "resnet18": (by_arch["resnet18"]["weights"], resnet18)},
                  images, to_input)
    # Faithfulness scores of resnet50's maps (ROAD, confidence change, ARCC): metrics.json, .f32.
    metrics_reference(out_dir, by_arch["resnet50"]["weights"], resnet50, images, to_input)
    print(f"reference: {len(cases)} cases and {len(models)} models in {out_dir} "
          f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main(sys.argv[1])
