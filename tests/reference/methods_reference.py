"""Reference maps of every CAM method, for tests/core/methods_parity.rs.

Imported by make_reference.py (its `methods` step); writes into OUT_DIR, per
architecture (resnet50, resnet18):
  methods-<arch>.json  {"cases": [...]}: per case the architecture, weights, image, method,
                layers, targets (null: top-1), eigen_smooth, aug_smooth, the top-5, and
                per target the explained class, the raw map (one layer without aug_smooth:
                what pytorch-grad-cam hands to scale_cam_image) and where its returned map
                is in methods.f32
  methods-<arch>.f32   the maps `cam(input_tensor, targets)` returns (224x224 float32, little
                endian, one after another)

Models: the seeded random resnet50 and resnet18 of make_reference.py. Every method but
AblationCAM and ScoreCAM on both, at layer4 and layer3, top-1 (case-0.png) and a forced
target (top5[3] of case-1.png), and eigen_smooth (top-1) for the methods it changes; aug_smooth
for GradCAM++ and EigenCAM; layer3+layer4 together; three targets of one image; every
one-pass method at layer3 on a seeded noise image (noise.png), FEM with a forced target too.
AblationCAM and ScoreCAM rerun the network once per channel (pytorch-grad-cam reruns the
whole model even for AblationCAM): on resnet18 only (512 channels at layer4, 256 at layer3
instead of 2048 and 1024), top-1 at layer4 and the forced target at layer3, to keep
`make test` short.
"""
import json
import os
import time

import numpy as np
import torch
from PIL import Image

from pytorch_grad_cam import (AblationCAM, EigenCAM, EigenGradCAM, FEM, GradCAM,
                              GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM,
                              ScoreCAM, XGradCAM)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

METHODS = {
    "gradcam": GradCAM,
    "hirescam": HiResCAM,
    "gradcam-elementwise": GradCAMElementWise,
    "gradcam-plusplus": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "fem": FEM,
    "ablationcam": AblationCAM,
    "scorecam": ScoreCAM,
}
# Methods whose map eigen_smooth changes (EigenCAM, EigenGradCAM and FEM ignore it).
SMOOTHABLE = ["gradcam", "hirescam", "gradcam-elementwise", "gradcam-plusplus", "xgradcam",
              "layercam"]
ONE_PASS = [m for m in METHODS if m not in ("ablationcam", "scorecam")]
LAYERS = {"layer4": lambda m: m.layer4[-1], "layer3": lambda m: m.layer3[-1]}


def methods_reference(out_dir, arch, weights, model, images, to_input, recorder):
    """The cases of one architecture: methods-<arch>.json and methods-<arch>.f32."""
    start = time.perf_counter()
    cases = []
    blob = open(os.path.join(out_dir, f"methods-{arch}.f32"), "wb")
    offset = 0
    # The images by name: case-N.png, and a seeded noise image (written here), on which the
    # fast path's rounding once flipped FEM's mean + 2 std threshold at layer3.
    named = [(f"case-{i}.png", rgb) for i, rgb in enumerate(images)]
    noise = np.random.default_rng(7).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    Image.fromarray(noise).save(os.path.join(out_dir, "noise.png"))
    named.append(("noise.png", noise))

    def run(arch, weights, model, image_index, method, layers, targets, eigen=False, aug=False):
        nonlocal offset
        image_name, rgb = named[image_index]
        rgb_float, x = to_input(rgb)
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)[0]
        top5 = torch.topk(probs, 5).indices.tolist()
        cam = METHODS[method](model=model, target_layers=[LAYERS[l](model) for l in layers])
        entries = []
        for target in targets:
            recorder.maps.clear()
            t = None if target is None else [ClassifierOutputTarget(target)]
            returned = cam(input_tensor=x, targets=t, eigen_smooth=eigen, aug_smooth=aug)[0]
            returned = np.ascontiguousarray(returned, dtype="<f4")
            blob.write(returned.tobytes())
            raw = recorder.maps[0][0] if len(layers) == 1 and not aug else None
            entries.append({
                "explained_class": target if target is not None else top5[0],
                "raw_map": None if raw is None else np.float32(raw).tolist(),
                "offset": offset,
                "size": list(returned.shape),
            })
            offset += returned.size
        cam.activations_and_grads.release()
        cases.append({
            "architecture": arch, "weights": weights, "image": image_name,
            "method": method, "layers": layers, "targets": targets, "eigen_smooth": eigen,
            "aug_smooth": aug, "top5": top5, "maps": entries,
        })

    forced = forced_target(model, to_input(images[1])[1])
    for layer in LAYERS:
        for method in ONE_PASS:
            for image, target in ((0, None), (1, forced)):
                run(arch, weights, model, image, method, [layer], [target])
            if method in SMOOTHABLE:
                run(arch, weights, model, 0, method, [layer], [None], eigen=True)
    noise_forced = forced_target(model, to_input(noise)[1])
    for method in ONE_PASS:
        run(arch, weights, model, -1, method, ["layer3"], [None])
    run(arch, weights, model, -1, "fem", ["layer3"], [noise_forced])
    run(arch, weights, model, -1, "fem", ["layer4"], [None])
    run(arch, weights, model, 0, "gradcam-plusplus", ["layer4"], [None], aug=True)
    run(arch, weights, model, 1, "eigencam", ["layer3"], [forced], aug=True)
    run(arch, weights, model, 0, "layercam", ["layer3", "layer4"], [None])
    _, x = to_input(images[2])
    with torch.no_grad():
        top = torch.topk(model(x)[0], 5).indices.tolist()
    run(arch, weights, model, 2, "xgradcam", ["layer3"], [top[0], top[2], top[4]])
    if arch == "resnet18":
        for method in ("ablationcam", "scorecam"):
            run(arch, weights, model, 0, method, ["layer4"], [None])
            run(arch, weights, model, 1, method, ["layer3"], [forced])
    blob.close()
    with open(os.path.join(out_dir, f"methods-{arch}.json"), "w") as f:
        json.dump({"cases": cases}, f)
    print(f"reference: {len(cases)} method cases on {arch} ({time.perf_counter() - start:.1f} s)")


def forced_target(model, x):
    with torch.no_grad():
        return torch.topk(model(x)[0], 5).indices.tolist()[3]
